from __future__ import annotations

from collections import Counter
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from pacslb import config as c
from pacslb.core.plan import build_plan
from pacslb.core.slots import (
    FALLBACK,
    SLOTS,
    apportion,
    interleave,
    least_connection,
    service_slots,
    weighted,
)
from pacslb.core.state import AdminState


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 1000), min_size=1))
def test_apportion_is_proportional_and_sums_to_the_table(weights: dict[str, int]) -> None:
    counts = apportion({k: float(v) for k, v in weights.items()})
    total = sum(weights.values())
    if total == 0:
        assert counts == {}
        return
    assert sum(counts.values()) == SLOTS
    for k, n in counts.items():
        assert abs(n - weights[k] * SLOTS / total) < 1


def test_interleave_spreads_a_burst_across_servers() -> None:
    order = interleave({"a": 75, "b": 25})
    assert len(order) == 100 and Counter(order) == {"a": 75, "b": 25}
    # Any 8 consecutive slots hold both servers in about their ratio.
    for i in range(92):
        assert Counter(order[i : i + 8])["b"] in (2,)


def test_weighted_with_one_server_takes_every_slot() -> None:
    assert weighted({"a": 5}) == ("a",) * SLOTS
    assert weighted({"a": 0}) == ()


def test_least_connection_fills_the_idle_servers_first() -> None:
    # 30 open on a, none on b and c: the next ones go to b and c, half each (as IPVS WLC).
    slots = least_connection({"a": 1, "b": 1, "c": 1}, {"a": 30, "b": 0, "c": 0}, 7.5)
    assert Counter(slots) == {"b": 50, "c": 50}
    # Without a backlog it is plain weighted.
    assert Counter(least_connection({"a": 3, "b": 1}, {}, 100)) == {"a": 75, "b": 25}
    # With 30 new flows expected on 10 + 0 open, both end at 20: a takes 10, b takes 20.
    assert Counter(least_connection({"a": 1, "b": 1}, {"a": 10, "b": 0}, 30)) == {
        "a": 33,
        "b": 67,
    }


def _svc(**kw: object) -> c.VirtualService:
    data = {
        "label": "S",
        "vip": "198.18.0.100",
        "ports": [80],
        "mode": "l4-nat",
        "real_servers": [
            {"label": "a", "address": "198.18.2.11", "weight": 2},
            {"label": "b", "address": "198.18.2.12", "weight": 1, "max_connections": 5},
        ],
    }
    data.update(kw)
    return c.VirtualService.model_validate(data)


def test_service_slots_honour_drain_limits_and_the_fallback() -> None:
    vs = _svc(scheduler="wrr")
    plan = build_plan(c.Config(virtual_services=[vs]))
    assert Counter(service_slots(plan.services[0])) == {"a": 67, "b": 33}
    drained = build_plan(c.Config(virtual_services=[vs]), admin={("S", "a"): AdminState.DRAIN})
    assert set(service_slots(drained.services[0])) == {"b"}
    # A server at its max_connections gets no slot until it is below.
    full = service_slots(plan.services[0], {"a": 0, "b": 5})
    assert set(full) == {"a"}
    both = {("S", "a"): AdminState.HALT, ("S", "b"): AdminState.HALT}
    with_fallback = _svc(fallback={"address": "198.18.2.99"})
    halted = build_plan(c.Config(virtual_services=[with_fallback]), admin=both)
    assert service_slots(halted.services[0]) == (FALLBACK,) * SLOTS
    assert service_slots(build_plan(c.Config(virtual_services=[vs]), admin=both).services[0]) == ()


def test_rr_and_lc_treat_servers_alike() -> None:
    plan = build_plan(c.Config(virtual_services=[_svc(scheduler="rr")]))
    assert Counter(service_slots(plan.services[0])) == {"a": 50, "b": 50}


def _flows(table: tuple[str, ...], start: int, n: int) -> list[str]:
    """Where `numgen inc mod SLOTS` sends n new flows, its counter at `start`."""
    return [table[(start + i) % SLOTS] for i in range(n)]


def test_sequential_new_flows_take_turns_on_equal_idle_servers() -> None:
    # Ties in the kernel engine (issue 14 item 9): the counter of `numgen inc` moves on with
    # every new flow and is not reset when the slots are re-dealt, so on two idle equal
    # servers flow after flow alternates -- across the table's wrap and whatever the
    # counter's position -- instead of landing on the first.
    vs = _svc(
        scheduler="wlc",
        real_servers=[
            {"label": "a", "address": "198.18.2.11"},
            {"label": "b", "address": "198.18.2.12"},
        ],
    )
    svc = build_plan(c.Config(virtual_services=[vs])).services[0]
    for new_last_interval in (0, 1, 50):
        table = service_slots(svc, {"a": 0, "b": 0}, new_last_interval)
        for start in (0, 1, 57, 99):
            flows = _flows(table, start, 100)
            assert Counter(flows) == {"a": 50, "b": 50}
            assert all(x != y for x, y in pairwise(flows))
    # Weights are kept: 2:1 gives 2:1 of any 99 sequential flows.
    weighted_pair = _svc(scheduler="wlc")  # a: 2, b: 1 (b's max_connections is not reached)
    svc = build_plan(c.Config(virtual_services=[weighted_pair])).services[0]
    table = service_slots(svc, {"a": 0, "b": 0}, 0)
    assert Counter(_flows(table, 31, 99)) == {"a": 66, "b": 33}
