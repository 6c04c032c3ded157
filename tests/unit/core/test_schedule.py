"""Schedulers pinned to IPVS (wlc, lc, rr, thresholds) and nginx (smooth wrr) semantics; wlc/lc
ties take turns as in HAProxy's leastconn."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacslb.core.schedule import (
    SCHEDULER_NAMES,
    Candidate,
    Scheduler,
    SmoothWeightedRoundRobin,
    SourceHash,
    WeightedLeastConnection,
    make_scheduler,
)
from pacslb.core.state import AdminState, Health


def C(key: str, weight: int = 1, **kw: int | AdminState | Health) -> Candidate:
    return Candidate(key, weight, **kw)  # type: ignore[arg-type]


def picks(s: Scheduler, cands: list[Candidate], n: int) -> list[str | None]:
    return [s.choose(cands) for _ in range(n)]


# --- factory -----------------------------------------------------------------------------


def test_scheduler_names_and_factory() -> None:
    assert set(SCHEDULER_NAMES) == {"wlc", "wrr", "lc", "rr", "sh"}
    for name in SCHEDULER_NAMES:
        assert make_scheduler(name) is not make_scheduler(name)  # fresh state per VIP


def test_unknown_scheduler_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown scheduler 'lblc'.*wlc, wrr, lc, rr, sh"):
        make_scheduler("lblc")


def test_candidate_validates_weight_and_counts() -> None:
    with pytest.raises(ValueError, match="weight"):
        Candidate("a", 65536)
    with pytest.raises(ValueError, match="weight"):
        Candidate("a", -1)
    with pytest.raises(ValueError, match="active"):
        Candidate("a", 1, active=-1)
    assert Candidate("a", 1, active=2, inactive=3).overhead == 2 * 256 + 3


# --- nothing eligible --------------------------------------------------------------------

INELIGIBLE = [
    C("zero", 0),
    C("down", 5, health=Health.DOWN),
    C("drain", 5, admin=AdminState.DRAIN),
    C("halt", 5, admin=AdminState.HALT),
    C("full", 5, active=3, max_connections=3),
]


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_none_when_empty(name: str) -> None:
    assert make_scheduler(name).choose([], b"\x0a\x00\x00\x01") is None


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("bad", INELIGIBLE, ids=lambda c: c.key)
def test_none_when_only_ineligible(name: str, bad: Candidate) -> None:
    s = make_scheduler(name)
    assert s.choose([bad], b"x") is None
    assert s.choose(INELIGIBLE, b"x") is None


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_only_eligible_server_is_chosen_among_ineligible(name: str) -> None:
    s = make_scheduler(name)
    cands = [*INELIGIBLE[:3], C("ok", 1, health=Health.UP, active=50), *INELIGIBLE[3:]]
    for flow in (b"a", b"b", b"c", b"d"):
        assert s.choose(cands, flow) == "ok"


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_unknown_health_is_usable(name: str) -> None:
    assert make_scheduler(name).choose([C("a", health=Health.UNKNOWN)]) == "a"


# --- wlc ---------------------------------------------------------------------------------


def test_wlc_hand_computed_ipvs_examples() -> None:
    s = make_scheduler("wlc")
    # 10*256/100 = 25.6 > 4*256/50 = 20.48 -> B
    assert s.choose([C("A", 100, active=10), C("B", 50, active=4)]) == "B"
    # 25.6 < 6*256/50 = 30.72 -> A
    assert s.choose([C("A", 100, active=10), C("B", 50, active=6)]) == "A"
    # idle servers: 0/100 vs 0/50 tie -> the one whose turn comes first (A: none taken yet)
    assert s.choose([C("A", 100), C("B", 50)]) == "A"
    # inactive connections count 1/256 of an active one
    assert s.choose([C("A", 1, active=1), C("B", 1, inactive=255)]) == "B"
    assert s.choose([C("A", 1, active=1), C("B", 1, inactive=256)]) == "A"  # 256 == 256: tie


def test_wlc_equal_ratios_are_ties_and_a_fresh_tie_goes_to_the_first_in_list_order() -> None:
    # 512/100 == 256/50 exactly: a tie, and a new scheduler breaks it by list order
    assert make_scheduler("wlc").choose([C("A", 100, active=2), C("B", 50, active=1)]) == "A"
    assert make_scheduler("wlc").choose([C("B", 50, active=1), C("A", 100, active=2)]) == "B"
    # 1/3 style ratios: 256/3 == 512/6 == 768/9
    trio = [C("x", 3, active=1), C("y", 6, active=2), C("z", 9, active=3)]
    assert make_scheduler("wlc").choose(trio) == "x"
    assert make_scheduler("wlc").choose(trio[::-1]) == "z"
    # ...while a lower ratio still wins whatever the rotation says
    s = make_scheduler("wlc")
    assert picks(s, [C("A", 1, active=1), C("B", 1, active=2)], 5) == ["A"] * 5


# --- ties take turns (HAProxy leastconn), scaled by weight -------------------------------


@pytest.mark.parametrize("name", ["wlc", "lc"])
def test_sequential_clients_on_idle_equal_servers_alternate(name: str) -> None:
    # Each client has gone before the next comes: every decision sees idle servers. IPVS
    # would send all of them to A; HAProxy's leastconn alternates.
    s = make_scheduler(name)
    assert picks(s, [C("A", 5), C("B", 5)], 6) == ["A", "B"] * 3
    trio = [C("A"), C("B"), C("C")]
    assert picks(make_scheduler(name), trio, 6) == ["A", "B", "C"] * 2


@pytest.mark.parametrize("name", ["wlc", "lc"])
def test_equal_loads_take_turns_too(name: str) -> None:
    s = make_scheduler(name)
    loaded = [C("A", 2, active=3, inactive=1), C("B", 2, active=3, inactive=1)]
    assert picks(s, loaded, 4) == ["A", "B", "A", "B"]


def test_wlc_ties_follow_the_weights() -> None:
    s = make_scheduler("wlc")
    got = picks(s, [C("A", 3), C("B", 1)], 400)
    assert Counter(got) == {"A": 300, "B": 100}
    assert got[:8] == ["A", "B", "A", "A", "A", "B", "A", "A"]  # interleaved, not in runs
    weights = {"A": 5, "B": 1, "C": 1}
    got = picks(make_scheduler("wlc"), [C(k, w) for k, w in weights.items()], 700)
    assert Counter(got) == {"A": 500, "B": 100, "C": 100}
    # large weights keep their ratio (no rounding of 1/w to a coarse grid)
    got = picks(make_scheduler("wlc"), [C("A", 40000), C("B", 30000)], 700)
    assert Counter(got) == {"A": 400, "B": 300}


def test_lc_ties_ignore_the_weights() -> None:
    got = picks(make_scheduler("lc"), [C("A", 3), C("B", 1)], 100)
    assert Counter(got) == {"A": 50, "B": 50}


@pytest.mark.parametrize("name", ["wlc", "lc"])
def test_the_server_that_took_the_last_connection_goes_behind(name: str) -> None:
    # A strict win moves the server on as well: after A took a client because B was busy,
    # the next tie goes to B.
    s = make_scheduler(name)
    assert s.choose([C("A"), C("B", active=1)]) == "A"
    assert s.choose([C("A"), C("B")]) == "B"
    assert s.choose([C("A"), C("B")]) == "A"


@pytest.mark.parametrize("name", ["wlc", "lc"])
def test_a_server_long_busy_gets_a_turn_not_a_burst(name: str) -> None:
    # B held a long connection while 1,000 clients went to A. When B is free again it takes
    # the next tie, then they alternate: no 1,000 clients in a row to catch up.
    s = make_scheduler(name)
    assert set(picks(s, [C("A"), C("B", active=1)], 1000)) == {"A"}
    assert picks(s, [C("A"), C("B")], 6) == ["B", "A", "B", "A", "B", "A"]


@pytest.mark.parametrize("name", ["wlc", "lc"])
def test_a_returning_or_new_server_joins_the_rotation(name: str) -> None:
    s = make_scheduler(name)
    picks(s, [C("A"), C("B")], 501)  # A is one ahead
    drained = [C("A"), C("B", admin=AdminState.DRAIN)]
    assert set(picks(s, drained, 300)) == {"A"}
    got = picks(s, [C("A"), C("B"), C("N")], 30)  # B back after 300 decisions, N new
    assert Counter(got) == {"A": 10, "B": 10, "N": 10}
    # one turn each from the start (no run of catching up), then in rotation
    assert got[:3] == ["N", "B", "A"]
    assert all(set(got[i : i + 3]) == {"A", "B", "N"} for i in range(0, 30, 3))


@pytest.mark.parametrize("name", ["wlc", "lc"])
def test_places_are_rebased_and_departed_servers_forgotten(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pacslb.core.schedule as schedule

    monkeypatch.setattr(schedule, "_REBASE", 8.0)
    s = make_scheduler(name)
    assert isinstance(s, schedule._LeastBase)
    picks(s, [C("A"), C("B"), C("gone")], 3)
    got = picks(s, [C("A"), C("B")], 40)
    assert got == ["A", "B"] * 20  # the rotation runs on across rebases
    assert set(s._turns) == {"A", "B"} and max(s._turns.values()) <= 8.0 + 1.0
    assert 0.0 <= s._clock <= 8.0 and min(s._turns.values()) >= 0.0


def test_wlc_compares_integers_not_floats() -> None:
    # As floats both ratios are 2**53 and A would keep the "tie"; exactly, B is less loaded.
    big = 2**53
    assert float(big + 1) == float(big)
    s = make_scheduler("wlc")
    assert s.choose([C("A", 1, inactive=big + 1), C("B", 1, inactive=big)]) == "B"
    assert s.choose([C("A", 3, inactive=3 * big + 3), C("B", 1, inactive=big + 1)]) == "A"


cand_strategy = st.builds(
    Candidate,
    key=st.just(""),
    weight=st.integers(0, 200),
    admin=st.sampled_from(AdminState),
    health=st.sampled_from(Health),
    active=st.integers(0, 300),
    inactive=st.integers(0, 3000),
    max_connections=st.sampled_from([0, 0, 50, 400]),
)


@settings(max_examples=200)
@given(st.lists(cand_strategy, max_size=8))
def test_wlc_matches_exact_reference_and_never_picks_ineligible(raw: list[Candidate]) -> None:
    cands = [
        Candidate(f"s{i}", c.weight, c.admin, c.health, c.active, c.inactive, c.max_connections)
        for i, c in enumerate(raw)
    ]
    eligible = [
        c
        for c in cands
        if c.admin is AdminState.ONLINE
        and c.health is not Health.DOWN
        and c.weight > 0
        and not (c.max_connections and c.active + c.inactive >= c.max_connections)
    ]
    got = WeightedLeastConnection().choose(cands)
    if not eligible:
        assert got is None
        return
    best = min(Fraction(c.overhead, c.weight) for c in eligible)
    assert got == next(c.key for c in eligible if Fraction(c.overhead, c.weight) == best)


# --- overload thresholds -----------------------------------------------------------------


def _load_sequence(s: Scheduler, loads: list[int], **kw: int) -> list[bool]:
    """For each total connection count in turn: is the server still offered?"""
    return [s.choose([C("a", 1, active=n, **kw)]) == "a" for n in loads]


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_overload_hysteresis_three_quarters_of_max(name: str) -> None:
    s = make_scheduler(name)
    # max 10: off at 10, stays off while total*4 >= 30 (9, 8), back at 7 (28 < 30).
    loads = [0, 9, 10, 11, 9, 8, 7, 9, 10, 7]
    assert _load_sequence(s, loads, max_connections=10) == [
        True, True, False, False, False, False, True, True, False, True,
    ]  # fmt: skip


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_overload_hysteresis_min_connections(name: str) -> None:
    s = make_scheduler(name)
    loads = [9, 10, 6, 5, 4, 9, 10, 5, 4]
    assert _load_sequence(s, loads, max_connections=10, min_connections=5) == [
        True, False, False, False, True, True, False, False, True,
    ]  # fmt: skip


def test_overload_counts_inactive_and_needs_strictly_below_three_quarters() -> None:
    s = WeightedLeastConnection()
    assert s.choose([C("a", active=2, inactive=2, max_connections=4)]) is None
    assert s.overloaded("a")
    assert s.choose([C("a", active=1, inactive=2, max_connections=4)]) is None  # 12 < 12: no
    assert s.choose([C("a", active=1, inactive=1, max_connections=4)]) == "a"  # 8 < 12
    assert not s.overloaded("a")


def test_overload_cleared_when_max_raised_or_removed() -> None:
    # __ip_vs_update_dest(): a raised or removed u_threshold clears the flag at once.
    s = WeightedLeastConnection()
    assert s.choose([C("a", active=10, max_connections=10)]) is None
    assert s.choose([C("a", active=9, max_connections=10)]) is None  # hysteresis holds
    assert s.choose([C("a", active=9, max_connections=20)]) == "a"
    assert s.choose([C("a", active=20, max_connections=20)]) is None
    assert s.choose([C("a", active=19, max_connections=0)]) == "a"
    assert not s.overloaded("a")


def test_overload_falls_over_to_other_server() -> None:
    s = make_scheduler("wlc")
    cands = [C("a", 100, active=5, max_connections=5), C("b", 1, active=50)]
    assert s.choose(cands) == "b"


# --- lc ----------------------------------------------------------------------------------


def test_lc_ignores_weight_except_for_eligibility() -> None:
    s = make_scheduler("lc")
    assert s.choose([C("A", 100, active=5), C("B", 1, active=4)]) == "B"
    assert s.choose([C("A", 100, active=5), C("B", 0, active=0)]) == "A"
    assert s.choose([C("A", 1, active=1), C("B", 1, inactive=300)]) == "A"  # 256 < 300
    assert make_scheduler("lc").choose([C("A", 1, active=3), C("B", 9, active=3)]) == "A"
    assert make_scheduler("lc").choose([C("B", 9, active=3), C("A", 1, active=3)]) == "B"


# --- rr ----------------------------------------------------------------------------------


def test_rr_cycles_in_list_order() -> None:
    s = make_scheduler("rr")
    cands = [C("a", 1), C("b", 7), C("c", 1)]
    assert picks(s, cands, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_rr_skips_ineligible_and_resumes_after_it() -> None:
    s = make_scheduler("rr")
    cands = [C("a"), C("b"), C("c")]
    assert picks(s, cands, 2) == ["a", "b"]
    drained = [C("a"), C("b"), C("c", admin=AdminState.DRAIN)]
    assert picks(s, drained, 2) == ["a", "b"]
    assert picks(s, cands, 2) == ["c", "a"]


def test_rr_position_is_remembered_by_key() -> None:
    s = make_scheduler("rr")
    assert picks(s, [C("a"), C("b"), C("c")], 2) == ["a", "b"]
    # reordered: continue after b wherever it now is
    assert picks(s, [C("b"), C("c"), C("a")], 3) == ["c", "a", "b"]
    # b removed: the server that followed it is next
    assert picks(s, [C("c"), C("a")], 1) == ["c"]
    # a server inserted after the last one is next
    assert picks(s, [C("c"), C("new"), C("a")], 3) == ["new", "a", "c"]


# --- wrr (smooth) ------------------------------------------------------------------------


def test_swrr_nginx_example_is_smooth() -> None:
    s = make_scheduler("wrr")
    cands = [C("a", 5), C("b", 1), C("c", 1)]
    assert "".join(str(k) for k in picks(s, cands, 14)) == "aabacaa" * 2


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_swrr_every_window_of_sum_weights_is_exact(weights: list[int]) -> None:
    cands = [C(f"s{i}", w) for i, w in enumerate(weights)]
    total = sum(weights)
    seq = picks(SmoothWeightedRoundRobin(), cands, 3 * total)
    for start in (0, total // 3, total, 2 * total - 1):
        counts = Counter(seq[start : start + total])
        assert [counts[c.key] for c in cands] == weights


def test_swrr_ineligible_server_keeps_state_and_others_share() -> None:
    s = make_scheduler("wrr")
    cands = [C("a", 2), C("b", 1), C("c", 1)]
    halted = [C("a", 2), C("b", 1, admin=AdminState.HALT), C("c", 1)]
    assert Counter(picks(s, halted, 30)) == {"a": 20, "c": 10}
    assert set(picks(s, cands, 4)) <= {"a", "b", "c"}
    # after the transient, a full cycle is exact again
    counts = Counter(picks(s, cands, 400))
    assert abs(counts["a"] - 200) <= 4 and abs(counts["b"] - 100) <= 4


# --- sh ----------------------------------------------------------------------------------


def flows(n: int) -> list[bytes]:
    return [bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]) for i in range(n)]


def test_sh_same_flow_same_server_across_instances_and_calls() -> None:
    cands = [C(f"srv{i}", 100) for i in range(5)]
    first = [SourceHash().choose(cands, f) for f in flows(200)]
    again = SourceHash()
    assert [again.choose(cands, f) for f in flows(200)] == first
    assert [again.choose(cands, f) for f in flows(200)] == first
    assert len(set(first)) == 5


S1, S2, S3 = "McK-Radiology_Srv1", "McK-Radiology_Srv2", "Srv3"
PINNED_SH = [S1, S2, S3, S1, S1, S1, S3, S1]


def test_sh_hash_is_pinned() -> None:
    # Both nodes of an HA pair (and every release) must map clients identically.
    cands = [C(S1, 100), C(S2, 100), C(S3, 100)]
    got = [SourceHash().choose(cands, f) for f in flows(8)]
    assert got == PINNED_SH


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.text("abcdefgh0123456789", min_size=1, max_size=6), min_size=2, max_size=8, unique=True
    ),
    st.data(),
)
def test_sh_removing_a_server_moves_exactly_its_keys(names: list[str], data: st.DataObject) -> None:
    n = len(names)
    gone = data.draw(st.sampled_from(names))
    full = [C(k, 100) for k in names]
    rest = [C(k, 100) for k in names if k != gone]
    down = [C(k, 100, health=Health.DOWN if k == gone else Health.UP) for k in names]
    s = SourceHash()
    keys = flows(2000)
    before = [s.choose(full, f) for f in keys]
    after = [s.choose(rest, f) for f in keys]
    assert [s.choose(down, f) for f in keys] == after  # ineligible == absent
    moved = 0
    for b, a in zip(before, after, strict=True):
        if b == gone:
            moved += 1
            assert a != gone
        else:
            assert a == b
    assert abs(moved / len(keys) - 1 / n) < 0.06


def test_sh_follows_weights() -> None:
    cands = [C("a", 100), C("b", 200), C("c", 300)]
    counts = Counter(SourceHash().choose(cands, f) for f in flows(6000))
    for key, share in (("a", 1 / 6), ("b", 2 / 6), ("c", 3 / 6)):
        assert abs(counts[key] / 6000 - share) < 0.03, counts
