"""Balancer: persistence first (drain keeps, halt/down/gone loses), then the scheduler."""

from __future__ import annotations

from pacslb.core.balancer import Balancer
from pacslb.core.persistence import StickyTable
from pacslb.core.schedule import Candidate, make_scheduler
from pacslb.core.state import AdminState, Health

A = Candidate("A", 100)
B = Candidate("B", 100)


def sticky_rr(granularity_v4: int = 32) -> Balancer:
    return Balancer(make_scheduler("rr"), StickyTable(60, granularity_v4=granularity_v4))


def test_sticky_client_returns_to_its_server() -> None:
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    assert b.pick([A, B], "10.0.0.2", now=0) == "B"
    for _ in range(3):  # rr would alternate; persistence pins
        assert b.pick([A, B], "10.0.0.1", now=1) == "A"
    assert b.sticky is not None
    assert [(e.key, e.server, e.connections) for e in b.sticky.entries()] == [
        ("10.0.0.1", "A", 4),
        ("10.0.0.2", "B", 1),
    ]


def test_drained_server_keeps_sticky_clients_but_gets_no_new_ones() -> None:
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    drained = [Candidate("A", 0, admin=AdminState.DRAIN), B]
    assert b.pick(drained, "10.0.0.1", now=1) == "A"
    for ip in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        assert b.pick(drained, ip, now=1) == "B"


def test_halted_server_loses_sticky_clients_at_once() -> None:
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    halted = [Candidate("A", 100, admin=AdminState.HALT), B]
    assert b.pick(halted, "10.0.0.1", now=1) == "B"
    # the entry now points at B, even once A is back online
    assert b.pick([A, B], "10.0.0.1", now=2) == "B"


def test_down_server_loses_sticky_clients_at_once() -> None:
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    down = [Candidate("A", 100, health=Health.DOWN), B]
    assert b.pick(down, "10.0.0.1", now=1) == "B"


def test_removed_server_loses_sticky_clients() -> None:
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    assert b.pick([B], "10.0.0.1", now=1) == "B"


def test_sticky_hit_ignores_overload_and_zero_weight() -> None:
    # IPVS ip_vs_check_template() keeps templates of quiescent (weight 0) and overloaded servers.
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    full = Candidate("A", 100, active=10, max_connections=10)
    assert b.pick([full, B], "10.0.0.1", now=1) == "A"
    assert b.pick([Candidate("A", 0), B], "10.0.0.1", now=1) == "A"
    assert b.pick([full, B], "10.0.0.9", now=1) == "B"


def test_no_server_is_none_and_leaves_no_entry() -> None:
    b = sticky_rr()
    assert b.pick([Candidate("A", 0)], "10.0.0.1", now=0) is None
    assert b.pick([], "10.0.0.1", now=0) is None
    assert b.sticky is not None and len(b.sticky) == 0


def test_server_lost_forgets_entries() -> None:
    b = sticky_rr()
    b.pick([A, B], "10.0.0.1", now=0)
    b.pick([A, B], "10.0.0.2", now=0)
    b.pick([A, B], "10.0.0.3", now=0)
    assert b.server_lost("A") == 2
    assert b.pick([A, B], "10.0.0.1", now=1) == "B"  # rr's next after A
    assert b.sticky is not None
    assert {e.key for e in b.sticky.entries()} == {"10.0.0.1", "10.0.0.2"}


def test_closed_starts_the_timeout_then_client_is_rescheduled() -> None:
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    b.closed("10.0.0.1", now=100)
    assert b.pick([A, B], "10.0.0.1", now=159) == "A"  # within the timeout; rr's next is B
    b.closed("10.0.0.1", now=200)
    assert b.pick([A, B], "10.0.0.1", now=260) == "B"  # expired: rr chose afresh


def test_closed_with_stale_server_is_ignored() -> None:
    b = sticky_rr()
    assert b.pick([A, B], "10.0.0.1", now=0) == "A"
    halted = [Candidate("A", 100, admin=AdminState.HALT), B]
    assert b.pick(halted, "10.0.0.1", now=1) == "B"
    b.closed("10.0.0.1", now=2, server_key="A")  # the old connection to A ends
    assert b.sticky is not None
    assert [(e.server, e.connections) for e in b.sticky.entries()] == [("B", 1)]


def test_sh_hashes_the_masked_address() -> None:
    b = Balancer(make_scheduler("sh"), StickyTable(60, granularity_v4=24))
    servers = [Candidate(f"S{i}", 100) for i in range(8)]
    first = b.pick(servers, "10.1.2.3", now=0)
    b.server_lost(str(first))  # no entry to help: only the hash can agree
    assert b.pick(servers, "10.1.2.250", now=0) == first


def test_persistence_off() -> None:
    b = Balancer(make_scheduler("rr"), None)
    assert [b.pick([A, B], "10.0.0.1", now=0) for _ in range(4)] == ["A", "B", "A", "B"]
    b.closed("10.0.0.1", now=1)
    assert b.server_lost("A") == 0
    assert b.pick([Candidate("A", 0, admin=AdminState.DRAIN), B], "10.0.0.1", now=2) == "B"
    assert b.pick([], "10.0.0.1", now=2) is None


def test_persistence_off_sh_is_per_address_and_unmaps_ipv4() -> None:
    b = Balancer(make_scheduler("sh"), None)
    servers = [Candidate(f"S{i}", 100) for i in range(8)]
    assert b.pick(servers, "::ffff:10.1.2.3", now=0) == b.pick(servers, "10.1.2.3", now=0)


def test_sequential_new_persistent_clients_spread_over_equal_servers_with_wlc() -> None:
    # Each new client comes after the previous one has gone: idle servers every time. With
    # ties to the first (IPVS) every one of them would stick to A for good; ties take turns.
    b = Balancer(make_scheduler("wlc"), StickyTable(600))
    first: dict[str, str] = {}
    for i in range(100):
        ip = f"10.0.1.{i}"
        server = b.pick([A, B], ip, now=i)
        assert server is not None
        first[ip] = server
        b.closed(ip, now=i + 0.5, server_key=server)
    assert sorted(first.values()).count("A") == 50
    # ...and each stays with its own server when it comes back
    for i, (ip, server) in enumerate(first.items()):
        assert b.pick([A, B], ip, now=200 + i) == server


def test_sequential_new_clients_follow_the_weights_with_wlc() -> None:
    b = Balancer(make_scheduler("wlc"), None)
    heavy, light = Candidate("H", 300), Candidate("L", 100)
    got = [b.pick([heavy, light], f"10.0.2.{i}", now=0) for i in range(100)]
    assert got.count("H") == 75 and got.count("L") == 25
