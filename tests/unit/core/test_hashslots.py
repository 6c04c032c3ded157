"""The deterministic DR table: the same on every node for one Plan, and a server that comes or
goes moves only its own slots."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacslb import config as c
from pacslb.core.hashslots import HASH_SLOTS, hash_slots, rendezvous
from pacslb.core.nft import server_id
from pacslb.core.plan import build_plan
from pacslb.core.slots import FALLBACK
from pacslb.core.state import AdminState, Health


def dr_config(weights: list[int], fallback: bool = False) -> c.Config:
    svc: dict[str, object] = {
        "label": "DICOM",
        "vip": "198.18.0.100",
        "ports": [104],
        "mode": "l4-dr",
        "scheduler": "wlc",
        "real_servers": [
            {"label": f"rs{i}", "address": f"198.18.0.{11 + i}", "weight": w}
            for i, w in enumerate(weights)
        ],
    }
    if fallback:
        svc["fallback"] = {"address": "198.18.0.99"}
    return c.Config.model_validate({"version": 1, "virtual_services": [svc]})


def table(config: c.Config, **kw: object) -> tuple[str, ...]:
    svc = build_plan(config, **kw).services[0]  # type: ignore[arg-type]
    return hash_slots(svc, {rs.label: server_id(svc.label, rs.label) for rs in svc.real_servers})


def test_the_table_is_a_function_of_the_plan_alone() -> None:
    config = dr_config([100, 100, 50])
    first = table(config)
    assert len(first) == HASH_SLOTS
    # Another node (another process): the same table, whatever its order of servers.
    reordered = config.model_copy(deep=True)
    reordered.virtual_services[0].real_servers.reverse()
    assert table(reordered) == first
    # Live counts are no input at all; health that says the same thing gives the same table.
    up = {("DICOM", f"rs{i}"): Health.UP for i in range(3)}
    assert table(config, health=up) == first


def test_shares_follow_the_weights() -> None:
    counts = Counter(table(dr_config([300, 100])))
    assert abs(counts["rs0"] / HASH_SLOTS - 0.75) < 0.05, counts
    counts = Counter(table(dr_config([100, 100, 100, 100])))
    assert all(abs(n / HASH_SLOTS - 0.25) < 0.05 for n in counts.values()), counts


def test_a_server_that_goes_down_moves_only_its_own_slots_and_takes_them_back() -> None:
    config = dr_config([100, 100, 100])
    before = table(config)
    down = table(config, health={("DICOM", "rs1"): Health.DOWN})
    moved = [i for i in range(HASH_SLOTS) if before[i] != down[i]]
    assert moved and all(before[i] == "rs1" for i in moved)
    assert "rs1" not in down
    assert table(config, health={("DICOM", "rs1"): Health.UP}) == before


def test_drained_servers_keep_their_slots_and_halted_ones_lose_them() -> None:
    """The table is for connections that exist: a drained server still has them."""
    config = dr_config([100, 100])
    before = table(config)
    assert table(config, admin={("DICOM", "rs0"): AdminState.DRAIN}) == before
    halted = table(config, admin={("DICOM", "rs0"): AdminState.HALT})
    assert set(halted) == {"rs1"}


def test_nothing_alive_goes_to_the_fallback_or_nowhere() -> None:
    health = {("DICOM", "rs0"): Health.DOWN}
    assert table(dr_config([100]), health=health) == ()
    assert set(table(dr_config([100], fallback=True), health=health)) == {FALLBACK}


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.integers(1, 2**31 - 1), st.integers(1, 500), min_size=2, max_size=8),
    st.data(),
)
def test_adding_or_removing_a_member_moves_only_that_members_slots(
    members: dict[int, int], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(members)))
    full = rendezvous({m: float(w) for m, w in members.items()}, 256)
    less = rendezvous({m: float(w) for m, w in members.items() if m != gone}, 256)
    for a, b in zip(full, less, strict=True):
        assert a == b or a == gone  # a slot moves only when it was the leaver's
    assert gone not in less


@pytest.mark.parametrize("size", [64, 1024])
def test_no_member_means_an_empty_table(size: int) -> None:
    assert rendezvous({}, size) == ()
    assert rendezvous({7: 0.0}, size) == ()
