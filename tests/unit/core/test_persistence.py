"""StickyTable: IPVS persistence-template lifetime, masking, and a reference-model property."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacslb.core.persistence import StickyEntry, StickyTable

EPS = 1e-6


def test_rejects_bad_parameters() -> None:
    for timeout in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            StickyTable(timeout)
    with pytest.raises(ValueError, match="IPv4"):
        StickyTable(60, granularity_v4=33)
    with pytest.raises(ValueError, match="IPv6"):
        StickyTable(60, granularity_v6=-1)


def test_mask_ipv4_granularity() -> None:
    t = StickyTable(60, granularity_v4=24)
    assert t.mask("10.0.0.1") == t.mask("10.0.0.200") == "10.0.0.0"
    assert t.mask("10.0.1.1") == "10.0.1.0"
    assert StickyTable(60).mask("10.0.0.200") == "10.0.0.200"
    assert StickyTable(60, granularity_v4=0).mask("172.16.5.4") == "0.0.0.0"


def test_mask_ipv6_granularity_mapped_and_zone() -> None:
    t = StickyTable(60, granularity_v4=24, granularity_v6=64)
    assert t.mask("2001:db8:1:2:aaaa::1") == t.mask("2001:db8:1:2:ffff::9") == "2001:db8:1:2::"
    assert t.mask("2001:db8:1:3::1") == "2001:db8:1:3::"
    assert t.mask("::ffff:10.0.0.7") == "10.0.0.0"  # dual-stack socket view of an IPv4 client
    assert t.mask("fe80::1%eth0") == "fe80::"
    with pytest.raises(ValueError):
        t.mask("not-an-address")


def test_same_prefix_shares_an_entry() -> None:
    t = StickyTable(60, granularity_v4=24)
    t.attach("10.0.0.1", "A", now=0)
    assert t.lookup("10.0.0.200", now=1) == "A"
    assert t.lookup("10.0.1.1", now=1) is None
    assert len(t) == 1


def test_entry_lives_while_connections_are_open_far_beyond_timeout() -> None:
    t = StickyTable(10)
    t.attach("10.0.0.1", "A", now=0)
    t.attach("10.0.0.1", "A", now=1)
    assert t.lookup("10.0.0.1", now=1e6) == "A"
    t.detach("10.0.0.1", now=1e6)  # one of two still open
    assert t.expire(now=1e9) == 0
    assert t.lookup("10.0.0.1", now=1e9) == "A"
    assert t.entries() == [StickyEntry("10.0.0.1", "A", 1, None)]


def test_expires_exactly_timeout_after_last_close() -> None:
    t = StickyTable(10)
    t.attach("10.0.0.1", "A", now=0)
    t.detach("10.0.0.1", now=100)
    assert t.entries() == [StickyEntry("10.0.0.1", "A", 0, 110.0)]
    assert t.lookup("10.0.0.1", now=110 - EPS) == "A"
    assert t.expire(now=110 - EPS) == 0
    assert t.entries(now=110) == []
    assert t.expire(now=110) == 1
    assert len(t) == 0
    assert t.lookup("10.0.0.1", now=110) is None


def test_lookup_of_dead_entry_returns_none_without_expire() -> None:
    t = StickyTable(10)
    t.attach("10.0.0.1", "A", now=0)
    t.detach("10.0.0.1", now=0)
    assert t.lookup("10.0.0.1", now=10) is None
    assert len(t) == 0
    assert t.expire(now=100) == 0  # the stale timer is ignored


def test_reattach_before_expiry_revives_and_cancels_the_timer() -> None:
    t = StickyTable(10)
    t.attach("10.0.0.1", "A", now=0)
    t.detach("10.0.0.1", now=5)
    t.attach("10.0.0.1", "A", now=14)
    assert t.expire(now=15) == 0  # the 15.0 timer no longer applies
    assert t.lookup("10.0.0.1", now=1000) == "A"
    t.detach("10.0.0.1", now=1000)
    assert t.lookup("10.0.0.1", now=1009) == "A"
    assert t.expire(now=1010) == 1


def test_attach_after_expiry_starts_fresh_on_the_new_server() -> None:
    t = StickyTable(10)
    t.attach("10.0.0.1", "A", now=0)
    t.detach("10.0.0.1", now=0)
    t.attach("10.0.0.1", "B", now=10)
    assert t.entries() == [StickyEntry("10.0.0.1", "B", 1, None)]


def test_detach_without_entry_or_connections_is_a_no_op() -> None:
    t = StickyTable(10)
    t.detach("10.0.0.1", now=0)
    t.attach("10.0.0.1", "A", now=0)
    t.detach("10.0.0.1", now=1)
    t.detach("10.0.0.1", now=5)  # extra close does not move the expiry
    assert t.entries() == [StickyEntry("10.0.0.1", "A", 0, 11.0)]


def test_repoint_resets_count_and_stale_closes_are_ignored() -> None:
    t = StickyTable(10)
    t.attach("10.0.0.1", "A", now=0)
    t.attach("10.0.0.1", "A", now=0)
    t.attach("10.0.0.1", "B", now=1)  # re-pointed (A's entry was dropped by the caller)
    t.detach("10.0.0.1", now=2, server_key="A")
    t.detach("10.0.0.1", now=2, server_key="A")
    assert t.entries() == [StickyEntry("10.0.0.1", "B", 1, None)]
    t.detach("10.0.0.1", now=3, server_key="B")
    assert t.entries() == [StickyEntry("10.0.0.1", "B", 0, 13.0)]


def test_forget_and_forget_server() -> None:
    t = StickyTable(10)
    t.attach("10.0.0.1", "A", now=0)
    t.attach("10.0.0.2", "A", now=0)
    t.attach("10.0.0.3", "B", now=0)
    assert t.forget_server("A") == 2
    assert t.forget_server("A") == 0
    assert t.lookup("10.0.0.1", now=1) is None
    assert t.lookup("10.0.0.3", now=1) == "B"
    assert t.forget("10.0.0.3") is True
    assert t.forget("10.0.0.3") is False
    assert len(t) == 0


def test_heap_stays_bounded_without_expire_calls() -> None:
    t = StickyTable(10)
    for i in range(5000):
        t.attach("10.0.0.1", "A", now=i)
        t.detach("10.0.0.1", now=i)
    assert len(t._heap) <= 2 * len(t) + 1025
    assert t.expire(now=5009) == 1


# --- property: against a straightforward model ---------------------------------------------

TIMEOUT = 10.0
IPS = ["10.0.0.1", "10.0.0.200", "10.0.1.5", "2001:db8::1", "2001:db8::2:1"]

op = st.one_of(
    st.tuples(st.just("attach"), st.sampled_from(IPS), st.sampled_from(["A", "B"])),
    st.tuples(st.just("detach"), st.sampled_from(IPS), st.none()),
    st.tuples(st.just("lookup"), st.sampled_from(IPS), st.none()),
    st.tuples(st.just("expire"), st.none(), st.none()),
    st.tuples(st.just("forget_server"), st.none(), st.sampled_from(["A", "B"])),
)
step = st.sampled_from([0.0, 0.0, 1.0, 5.0, TIMEOUT - EPS, TIMEOUT, TIMEOUT + EPS, 25.0])


@dataclass
class ModelEntry:
    server: str
    open: int
    closed_at: float | None  # when `open` last dropped to zero


class Model:
    """Persistence as the spec words it, with no cleverness: alive iff open connections, or
    less than TIMEOUT since the last one closed."""

    def __init__(self) -> None:
        self.entries: dict[str, ModelEntry] = {}

    def alive(self, key: str, now: float) -> bool:
        e = self.entries.get(key)
        if e is None:
            return False
        return e.open > 0 or (e.closed_at is not None and now < e.closed_at + TIMEOUT)

    def live(self, now: float) -> dict[str, tuple[str, int]]:
        return {k: (e.server, e.open) for k, e in self.entries.items() if self.alive(k, now)}


@settings(max_examples=300)
@given(st.lists(st.tuples(op, step), max_size=60))
def test_matches_reference_model(
    ops: list[tuple[tuple[str, str | None, str | None], float]],
) -> None:
    t = StickyTable(TIMEOUT, granularity_v4=24, granularity_v6=64)
    m = Model()
    now = 0.0
    for (name, ip, server), dt in ops:
        now += dt
        key = t.mask(ip) if ip is not None else ""
        if name == "attach":
            assert ip is not None and server is not None
            t.attach(ip, server, now)
            e = m.entries.get(key)
            if m.alive(key, now) and e is not None and e.server == server:
                e.open += 1
                e.closed_at = None
            else:
                m.entries[key] = ModelEntry(server, 1, None)
        elif name == "detach":
            assert ip is not None
            t.detach(ip, now)
            e = m.entries.get(key)
            if e is not None and e.open > 0:
                e.open -= 1
                if e.open == 0:
                    e.closed_at = now
        elif name == "lookup":
            assert ip is not None
            expected = m.entries[key].server if m.alive(key, now) else None
            assert t.lookup(ip, now) == expected
        elif name == "expire":
            before = len(t)
            assert t.expire(now) == before - len(t)
            assert len(t) == len(m.live(now))
        else:
            assert server is not None
            t.forget_server(server)
            m.entries = {k: e for k, e in m.entries.items() if e.server != server}
        got = {e.key: (e.server, e.connections) for e in t.entries(now)}
        assert got == m.live(now)


# --- sharing: the change cursor and learnt entries ----------------------------------------


def test_changes_lists_placed_entries_once_per_cursor() -> None:
    table = StickyTable(60)
    table.attach("10.0.0.1", "a", 0.0)
    table.attach("10.0.0.2", "b", 0.0)
    changes, cursor = table.changes(0, 1.0)
    assert [(c.key, c.server, c.ttl) for c in changes] == [
        ("10.0.0.1", "a", 60.0),  # open: the timeout
        ("10.0.0.2", "b", 60.0),
    ]
    assert all(c.open for c in changes)
    assert table.changes(cursor, 1.0) == ([], cursor)
    table.attach("10.0.0.1", "a", 2.0)  # a second connection of an open entry: no change
    assert table.changes(cursor, 2.0) == ([], cursor)


def test_changes_after_close_carry_the_time_left() -> None:
    table = StickyTable(60)
    table.attach("10.0.0.1", "a", 0.0)
    _, cursor = table.changes(0, 0.0)
    table.detach("10.0.0.1", 10.0)
    changes, cursor2 = table.changes(cursor, 25.0)
    assert [(c.key, c.server, c.ttl, c.open) for c in changes] == [("10.0.0.1", "a", 45.0, False)]
    assert cursor2 > cursor
    table.attach("10.0.0.1", "a", 30.0)  # idle -> open again: listed with the full timeout
    assert [c.ttl for c in table.changes(cursor2, 30.0)[0]] == [60.0]


def test_changes_skip_dead_and_forgotten_entries_and_keep_order() -> None:
    table = StickyTable(10)
    for i in range(1, 4):
        table.attach(f"10.0.0.{i}", "a", 0.0)
        table.detach(f"10.0.0.{i}", 0.0)
    table.forget("10.0.0.2")
    table.attach("10.0.0.1", "b", 5.0)  # re-pointed: moves to the end
    changes, _ = table.changes(0, 5.0)
    assert [(c.key, c.server) for c in changes] == [("10.0.0.3", "a"), ("10.0.0.1", "b")]
    assert [c.key for c in table.changes(0, 11.0)[0]] == ["10.0.0.1"]  # .3 expired at 10


def test_changes_use_the_masked_key() -> None:
    table = StickyTable(60, granularity_v4=24)
    table.attach("10.0.0.77", "a", 0.0)
    assert [c.key for c in table.changes(0, 0.0)[0]] == ["10.0.0.0"]


def test_learn_adds_an_unknown_client_with_its_ttl() -> None:
    table = StickyTable(600)
    assert table.learn("10.0.0.1", "b", 30.0, 100.0)
    assert table.lookup("10.0.0.1", 129.0) == "b"
    assert table.lookup("10.0.0.1", 130.0) is None
    # a learnt entry is not a change of this table (it would echo back to where it came from)
    assert table.changes(0, 100.0)[0] == []


def test_learn_keeps_a_live_entry_and_extends_an_idle_one_of_the_same_server() -> None:
    table = StickyTable(600)
    table.attach("10.0.0.1", "a", 0.0)
    assert not table.learn("10.0.0.1", "b", 30.0, 1.0)  # open on a: kept
    assert table.lookup("10.0.0.1", 1.0) == "a"
    table.detach("10.0.0.1", 1.0)  # idle until 601
    assert not table.learn("10.0.0.1", "a", 30.0, 2.0)  # earlier expiry: nothing to do
    assert table.learn("10.0.0.1", "a", 600.0, 100.0)  # later: extended to 700
    assert table.lookup("10.0.0.1", 650.0) == "a"
    assert not table.learn("10.0.0.1", "b", 600.0, 650.0)  # another server: kept
    assert table.lookup("10.0.0.1", 650.0) == "a"


def test_learn_replaces_a_dead_entry_caps_the_ttl_and_masks() -> None:
    table = StickyTable(60, granularity_v4=24)
    table.attach("10.0.0.1", "a", 0.0)
    table.detach("10.0.0.1", 0.0)
    assert table.learn("10.0.0.99", "b", 3600.0, 61.0)  # .1's entry died at 60
    assert table.lookup("10.0.0.5", 120.0) == "b"  # same /24, ttl capped to the timeout
    assert table.lookup("10.0.0.5", 121.0) is None
    assert table.expire(200.0) == 0  # the lookup purged it already


def test_learnt_entries_expire_and_a_connection_makes_them_this_tables() -> None:
    table = StickyTable(60)
    table.learn("10.0.0.1", "a", 5.0, 0.0)
    table.learn("10.0.0.2", "a", 50.0, 0.0)
    assert table.expire(6.0) == 1
    assert len(table) == 1
    table.attach("10.0.0.2", "a", 7.0)  # the client came: now listed as a change of this table
    assert [c.key for c in table.changes(0, 7.0)[0]] == ["10.0.0.2"]


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("nan"), float("inf")])
def test_learn_refuses_a_bad_ttl(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        StickyTable(60).learn("10.0.0.1", "a", ttl, 0.0)


def test_learn_refuses_a_bad_address() -> None:
    with pytest.raises(ValueError):
        StickyTable(60).learn("not an address", "a", 5.0, 0.0)


def test_a_learnt_entry_takes_later_news_until_a_connection_uses_it() -> None:
    table = StickyTable(600)
    assert table.learn("10.0.0.1", "a", 100.0, 0.0)
    assert table.learn("10.0.0.1", "b", 50.0, 10.0)  # the owner re-pointed its client
    assert table.lookup("10.0.0.1", 59.0) == "b"
    assert table.lookup("10.0.0.1", 60.0) is None  # the news's ttl, even if shorter
    table.learn("10.0.0.1", "b", 100.0, 70.0)
    table.attach("10.0.0.1", "b", 71.0)  # used here: ours from now
    table.detach("10.0.0.1", 72.0)
    assert not table.learn("10.0.0.1", "c", 100.0, 73.0)
    assert table.lookup("10.0.0.1", 73.0) == "b"
