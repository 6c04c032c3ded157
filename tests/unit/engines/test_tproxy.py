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
    rules = TproxyRules(lambda: nft, host)  # type: ignore[arg-type,return-value]
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
    rules = TproxyRules(lambda: nft, host)  # type: ignore[arg-type,return-value]
    with pytest.raises(EngineError, match=r"transparent mode .*Operation not permitted"):
        rules.apply(frozenset({4, 6}))
    assert not nft.table and not any(host.rules.values()) and not any(host.routes.values())
    host.fail_on = ""
    rules.apply(frozenset({4, 6}))  # the next publish tries again, from a clean state
    assert nft.table and host.rules["-6"]


def test_rules_an_earlier_run_left_are_removed_without_a_transparent_service() -> None:
    nft, host = Nft(), Host()
    TproxyRules(lambda: nft, host).apply(frozenset({4}))  # type: ignore[arg-type,return-value]
    restarted = TproxyRules(lambda: nft, host)  # type: ignore[arg-type,return-value]
    assert restarted.apply(frozenset()) == [
        "removed the transparent-mode rules an earlier run left"
    ]
    assert not nft.table and not host.rules["-4"] and not host.routes["-4"]


def test_a_restart_under_kept_connections_takes_the_rules_over_without_a_gap() -> None:
    """A control process restarted under a kept data plane finds its rules in place. Deleting
    them before making them again would leave a moment in which a reply to an open transparent
    connection is forwarded to the client (whose RST cuts the server's side)."""
    nft, host = Nft(), Host()
    TproxyRules(lambda: nft, host).apply(frozenset({4, 6}))  # type: ignore[arg-type,return-value]
    host.log.clear()
    restarted = TproxyRules(lambda: nft, host)  # type: ignore[arg-type,return-value]
    restarted.apply(frozenset({4}))  # IPv6 no longer wanted: that one goes
    assert not [call for call in host.log if call.startswith("-4") and " del" in call], host.log
    assert not [call for call in host.log if "flush" in call and call.startswith("-4")]
    assert host.rules["-4"] and host.routes["-4"] and nft.table
    assert not host.rules["-6"] and not host.routes["-6"]
    assert restarted.apply(frozenset({4})) == []


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
