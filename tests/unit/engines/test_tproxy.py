"""Transparent mode's host rules (engines/tproxy.py) against a host that keeps its rules and
routes as `ip` would, and an nftables that keeps its one table: applied whole, idempotent,
undone on a failure, removed with the last transparent service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pacslb import config as c
from pacslb.core import tproxy
from pacslb.core.plan import build_plan
from pacslb.engines.kernel import KernelEngine
from pacslb.engines.tproxy import TproxyRules
from pacslb.errors import EngineError


class Nft:
    def __init__(self) -> None:
        self.table = False
        self.runs = 0

    def run(self, script: str) -> str:
        self.runs += 1
        self.table = "chain prerouting" in script
        return ""


class Host:
    """Rules and routes per version, as sets of the `ip` arguments that made them."""

    def __init__(self, fail_on: str = "") -> None:
        self.rules: dict[str, set[tuple[str, ...]]] = {"-4": set(), "-6": set()}
        self.routes: dict[str, set[tuple[str, ...]]] = {"-4": set(), "-6": set()}
        self.fail_on = fail_on
        self.calls = 0
        self.log: list[str] = []

    def addresses(self) -> set[str]:
        return {"198.18.2.1", "198.18.1.100", "127.0.0.1"}

    def ip(self, *args: str) -> Any:
        self.calls += 1
        self.log.append(" ".join(args))
        fam, kind, verb = args[0], args[1], args[2]
        if self.fail_on and self.fail_on in " ".join(args):
            raise EngineError(f"ip {' '.join(args)}: RTNETLINK answers: Operation not permitted")
        store = self.rules if kind == "rule" else self.routes
        if verb == "show":
            return [
                {"priority": tproxy.PRIORITY, "fwmark": "0x80000000", "table": "21584"}
                for _ in store[fam]
            ]
        if verb in ("add", "replace"):
            if verb == "add" and args[3:] in store[fam]:
                raise EngineError("File exists")
            store[fam].add(args[3:])
        elif not store[fam]:
            raise EngineError("No such file or directory")
        else:
            store[fam].clear()
        return []


NO_PROC = Path("/nonexistent")  # no /proc/net/tcp: no transparent connection open


def make(nft: Nft, host: Host, proc_net: Path = NO_PROC) -> TproxyRules:
    rules = TproxyRules(lambda: nft, host)  # type: ignore[arg-type,return-value]
    rules.proc_net = proc_net
    return rules


def plan(*services: tuple[str, str, str]) -> frozenset[int]:
    """The versions a Plan of (mode, source, server address) services wants."""
    vs = [
        c.VirtualService.model_validate(
            {
                "label": f"S{i}",
                "vip": "198.18.1.100" if "." in address else "2001:2:1::100",
                "ports": [80],
                "mode": mode,
                "source": source,
                "real_servers": [{"label": "a", "address": address}],
            }
        )
        for i, (mode, source, address) in enumerate(services)
    ]
    return tproxy.families(build_plan(c.Config(version=1, virtual_services=vs)))


def test_families_come_from_transparent_layer7_services_only() -> None:
    assert plan(("l7-tcp", "auto", "198.18.2.11"), ("l7-http", "vip", "198.18.2.12")) == set()
    assert plan(("l7-tcp", "client", "198.18.2.11")) == {4}
    assert plan(("l7-http", "client", "2001:2:2::11"), ("l7-tcp", "client", "198.18.2.1")) == {
        4,
        6,
    }


def test_applied_whole_then_idempotent_then_removed_with_the_last_service() -> None:
    nft, host = Nft(), Host()
    rules = make(nft, host)
    done = rules.apply(frozenset({4, 6}))
    assert nft.table and all(host.rules[f] and host.routes[f] for f in ("-4", "-6"))
    assert any("rule add fwmark 0x80000000/0x80000000 lookup 21584" in d for d in done)
    calls, runs = host.calls, nft.runs
    assert rules.apply(frozenset({4, 6})) == []  # nothing changed: nothing run
    assert (host.calls, nft.runs) == (calls, runs)
    rules.apply(frozenset({4}))
    assert host.rules["-4"] and not host.rules["-6"] and not host.routes["-6"] and nft.table
    rules.apply(frozenset())
    assert not nft.table and not host.rules["-4"] and not host.routes["-4"]


def test_a_failed_step_undoes_what_was_done_and_says_which() -> None:
    nft, host = Nft(), Host(fail_on="-6 rule add")
    rules = make(nft, host)
    with pytest.raises(EngineError, match=r"transparent mode .*Operation not permitted"):
        rules.apply(frozenset({4, 6}))
    assert not nft.table and not any(host.rules.values()) and not any(host.routes.values())
    host.fail_on = ""
    rules.apply(frozenset({4, 6}))  # the next publish tries again, from a clean state
    assert nft.table and host.rules["-6"]


def test_rules_an_earlier_run_left_are_removed_without_a_transparent_service() -> None:
    nft, host = Nft(), Host()
    make(nft, host).apply(frozenset({4}))
    restarted = make(nft, host)
    assert restarted.apply(frozenset()) == [
        "took over the IPv4 transparent-mode rules an earlier run left",
        "removed the IPv4 policy rule and route of transparent mode",
        f"deleted nftables table inet {tproxy.TABLE}",
    ]
    assert not nft.table and not host.rules["-4"] and not host.routes["-4"]


def test_a_restart_under_kept_connections_takes_the_rules_over_without_a_gap() -> None:
    """A control process restarted under a kept data plane finds its rules in place. Deleting
    them before making them again would leave a moment in which a reply to an open transparent
    connection is forwarded to the client (whose RST cuts the server's side)."""
    nft, host = Nft(), Host()
    make(nft, host).apply(frozenset({4, 6}))
    host.log.clear()
    restarted = make(nft, host)
    restarted.apply(frozenset({4}))  # IPv6 no longer wanted: that one goes
    assert not [call for call in host.log if call.startswith("-4") and " del" in call], host.log
    assert not [call for call in host.log if "flush" in call and call.startswith("-4")]
    assert host.rules["-4"] and host.routes["-4"] and nft.table
    assert not host.rules["-6"] and not host.routes["-6"]
    assert restarted.apply(frozenset({4})) == []


# /proc/net/tcp lines: a listener on the VIP, the proxy's transparent upstream connection
# (198.18.1.10:40000 -> 198.18.2.11:8080, established), and one of its own in TIME_WAIT.
PROC_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 6401 12C6:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 0A0112C6:9C40 0B0212C6:1F90 01 00000000:00000000 00:00000000 00000000     0
   2: 0A0112C6:9C41 0B0212C6:1F90 06 00000000:00000000 00:00000000 00000000     0
""".replace("6401 12C6", "640112C6")


def test_open_transparent_connections_are_counted_from_proc_net_tcp() -> None:
    local = {"198.18.1.100"}
    assert tproxy.foreign_sockets(PROC_TCP, local) == 1  # not the listener, not TIME_WAIT
    assert tproxy.foreign_sockets(PROC_TCP, local | {"198.18.1.10"}) == 0
    v6 = "header\n   0: 00000000000000000000000001000000:0050 0:0 01 rest\n"
    assert tproxy.foreign_sockets(v6, set()) == 1 and tproxy.foreign_sockets(v6, {"::1"}) == 0


def test_the_return_path_stays_until_the_last_transparent_connection_ends(tmp_path: Path) -> None:
    """A removed service's connections finish (proxy/server.py): taking their return path away
    under them would leave them hanging (or, with forwarding on, reset by the client)."""
    nft, host = Nft(), Host()
    rules = make(nft, host, tmp_path)
    rules.apply(frozenset({4}))
    (tmp_path / "tcp").write_text(PROC_TCP)
    done = rules.apply(frozenset())  # the last transparent service removed
    assert done == ["kept the IPv4 return path of transparent mode while 1 transparent "
                    "connection(s) finish"]  # fmt: skip
    assert rules.lingering == {4} and host.rules["-4"] and host.routes["-4"] and nft.table
    assert rules.apply(frozenset()) == []  # looked again: still open, said once
    (tmp_path / "tcp").write_text(PROC_TCP.splitlines()[0])  # the connection ended
    assert rules.apply(frozenset()) == [
        "removed the IPv4 policy rule and route of transparent mode",
        f"deleted nftables table inet {tproxy.TABLE}",
    ]
    assert not rules.lingering and not host.rules["-4"] and not nft.table


def test_a_lingering_version_wanted_again_is_simply_kept(tmp_path: Path) -> None:
    nft, host = Nft(), Host()
    rules = make(nft, host, tmp_path)
    rules.apply(frozenset({4}))
    (tmp_path / "tcp").write_text(PROC_TCP)
    rules.apply(frozenset())
    host.log.clear()
    assert rules.apply(frozenset({4})) == [] and not rules.lingering and host.log == []


def test_without_transparent_services_nftables_is_never_touched() -> None:
    def no_nft() -> Nft:
        raise AssertionError("nftables asked for without a transparent service")

    host = Host()
    assert TproxyRules(no_nft, host).apply(frozenset()) == []  # type: ignore[arg-type]


def test_a_failed_return_path_fails_the_apply_but_not_the_layer4_services(tmp_path: Path) -> None:
    from tests.unit.engines.test_kernel_engine import FakeHost, FakeNft, config

    class RefusingHost(FakeHost):
        def ip(self, *args: str) -> Any:
            if "add" in args or "replace" in args:
                raise EngineError("RTNETLINK answers: Operation not permitted")
            return []

    nft = FakeNft()
    kernel = KernelEngine(tmp_path, nft_runner=nft, host=RefusingHost())  # type: ignore[arg-type]
    cfg = config("l4-nat")
    transparent = c.VirtualService.model_validate(
        {
            "label": "Archive",
            "vip": "198.18.0.101",
            "ports": [104],
            "mode": "l7-tcp",
            "source": "client",
            "real_servers": [{"label": "a", "address": "198.18.0.11"}],
        }
    )
    cfg = cfg.model_copy(update={"virtual_services": [*cfg.virtual_services, transparent]})

    async def scenario() -> None:
        with pytest.raises(EngineError, match="transparent mode"):
            await kernel.apply(build_plan(cfg))
        await kernel.close()

    asyncio.run(scenario())
    # the table was made and taken back; the l4-nat service's table went in all the same
    assert any("add table ip pacslb" in s for s in nft.scripts), nft.scripts
    # (made, then undone: nothing was left to clean at the first look)
    assert [s for s in nft.scripts if tproxy.TABLE in s] == [
        tproxy.nft_script(True),
        tproxy.nft_script(False),
    ]


def test_leftovers_without_root_to_remove_them_do_not_fail_a_layer7_only_apply() -> None:
    """An l7-only config run without root after an earlier run left the rules: what cannot be
    removed stays (as before), the apply does not fail on it."""

    class NoRoot(Nft):
        def run(self, script: str) -> str:
            raise EngineError("Operation not permitted (you must be root)")

    nft, host = NoRoot(), Host()
    host.rules["-4"].add(("fwmark", "0x80000000/0x80000000"))
    done = make(nft, host).apply(frozenset())
    assert done[0] == "took over the IPv4 transparent-mode rules an earlier run left"
