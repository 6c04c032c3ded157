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
