"""Two pacslb nodes of an HA pair in network namespaces, with real keepalived, and the takeover
measurements the tests and bench/ha_takeover.py make: each node runs `pacslb run` in its own
namespace with its own config file and state directory; faults are done to the active node as
an operator or a failure would (SIGKILL of keepalived, links down, `pacslb stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netns.conftest import Pacslb
from tests.netns.topology import ROOT, Host, Topology

SECRET = "pacslb-netns-pair-secret"  # test data: the pair's shared secret
PROBE = [sys.executable, str(ROOT / "tests/netns/ha_probe.py")]


def ha_settings(
    interface: str, peer: str, priority: int, advert_int: float, gateways: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "enabled": True,
        "interface": interface,
        "peers": [peer],
        "priority": priority,
        "advert_int": advert_int,
        "secret": SECRET,
        "gateways": gateways,
    }


def check(port: int) -> dict[str, Any]:
    return {"type": "connect", "port": port, "interval": 0.5, "timeout": 0.5, "rise": 1, "fall": 2}


@dataclass
class Node:
    name: str
    host: Host
    run: Pacslb
    links: tuple[str, ...]

    def keepalived_pids(self) -> list[int]:
        pids = []
        for name in ("keepalived.pid", "vrrp.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((self.run.state_dir / "keepalived" / name).read_text()))
        return pids

    def addresses(self) -> set[str]:
        out = set()
        for link in json.loads(self.host.run("ip", "-j", "addr", "show")):
            for a in link.get("addr_info", []):
                out.add(a["local"])
        return out

    def role(self) -> str:
        return str(self.run.status()["ha"]["role"])

    def ha_events(self) -> list[str]:
        return self.run.cli("events", "--kind", "ha", "--limit", "200").splitlines()

    def links_down(self) -> None:
        for link in self.links:
            self.host.run("ip", "link", "set", link, "down")

    def links_up(self) -> None:
        for link in self.links:
            self.host.run("ip", "link", "set", link, "up")


@dataclass
class Pair:
    topo: Topology
    nodes: list[Node]
    floating: tuple[str, ...]  # every address that must be on exactly one node
    figures: dict[str, Outage] = field(default_factory=dict)

    def holders(self) -> list[str]:
        """Nodes holding any floating address (in a settled pair: one node, holding all)."""
        return [n.name for n in self.nodes if n.addresses() & set(self.floating)]

    def holds_all(self, node: Node) -> bool:
        return set(self.floating) <= node.addresses()

    def wait_one_active(self, timeout: float = 15.0) -> Node:
        """Until exactly one node holds the addresses and says active (bounded)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            holders = self.holders()
            roles = {n.name: _role_or_none(n) for n in self.nodes}
            last = (holders, roles)
            one = len(holders) == 1 and self.holds_all(self.node(holders[0]))
            if one and roles[holders[0]] == "active":
                others = [r for name, r in roles.items() if name != holders[0]]
                if all(r in ("passive", None) for r in others):
                    return self.node(holders[0])
            time.sleep(0.1)
        raise TimeoutError(f"no single active node after {timeout:g} s: {last}")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def other(self, node: Node) -> Node:
        return next(n for n in self.nodes if n is not node)

    def probe(self, kind: str, vip: str, port: int, limit: float) -> subprocess.Popen[str]:
        client = self.topo.hosts["client"]
        return client.popen(  # type: ignore[return-value]
            [*PROBE, kind, vip, str(port), str(limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def takeover(
        self,
        label: str,
        fault: Callable[[], Any],
        probes: list[tuple[str, str, str, int]],
        settled: Callable[[], Any] = lambda: None,
        limit: float = 20.0,
    ) -> dict[str, Outage]:
        """Do `fault()`, then probe each (name, kind, vip, port) with new connections from the
        client until `settled()` has returned (the survivor holds the addresses) and one more
        connection has succeeded. Keeps and returns the outage each probe saw."""
        procs = [(name, self.probe(kind, vip, port, limit)) for name, kind, vip, port in probes]
        time.sleep(0.3)  # the probes' interpreters are up and waiting for the go
        for _, proc in procs:  # probing from just before the fault: a fault that takes
            _say(proc, "go")  # a while to do (`pacslb stop` waits for the exit) is seen whole
        started = time.monotonic()
        fault()
        try:
            settled()
        finally:
            for _, proc in procs:
                _say(proc, "settled")
        out: dict[str, Outage] = {}
        for name, proc in procs:
            stdout, _ = proc.communicate(timeout=limit + 10)
            outage = Outage.of(json.loads(stdout)["attempts"], started)
            assert outage.recovered is not None, f"{label}: no new {name} connection succeeded"
            out[name] = self.figures[f"{label} {name}"] = outage
        return out


def _say(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


@dataclass(frozen=True)
class Outage:
    """What a client opening a new connection every 50 ms saw after a fault at t=0."""

    recovered: float | None  # when the first connection after the last failed one began
    longest: float  # the longest time without a successful new connection
    failed: int  # attempts that failed

    @classmethod
    def of(cls, attempts: list[tuple[float, bool]], started: float) -> Outage:
        recovered, failed, longest, last_ok = None, 0, 0.0, started
        for at, ok in attempts:
            if ok:
                longest = max(longest, at - last_ok)
                last_ok = at
                if recovered is None:
                    recovered = at - started
            else:
                failed += 1
                recovered = None
        return cls(None if recovered is None else round(recovered, 3), round(longest, 3), failed)

    def __str__(self) -> str:
        return f"{self.recovered} s (longest gap {self.longest} s, {self.failed} failed tries)"


def _role_or_none(node: Node) -> str | None:
    if node.run.proc is None or node.run.proc.poll() is not None:
        return None
    try:
        return node.role()
    except (RuntimeError, ValueError, KeyError):
        return None


def start_pair(
    topo: Topology,
    tmp: Path,
    configs: dict[str, dict[str, Any]],
    links: dict[str, tuple[str, ...]],
    floating: tuple[str, ...],
) -> Pair:
    """Start `pacslb run` on lb1 and lb2 at once, each with its config and state dir."""
    nodes = []
    for name, config in configs.items():
        state = tmp / name
        state.mkdir()
        run = Pacslb(topo.hosts[name], state, config)
        nodes.append(Node(name, topo.hosts[name], run, links[name]))
    for node in nodes:
        node.run.start()
    return Pair(topo, nodes, floating)


def restart(node: Node) -> None:
    node.run.start()


def kill_keepalived(node: Node) -> None:
    """SIGKILL keepalived's parent and its VRRP child: no priority-0 advert is sent."""
    for pid in node.keepalived_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def role_changes(lines: list[str]) -> list[str]:
    """The role-change events' texts ("role passive -> active ...")."""
    return [line for line in lines if re.search(r"role \w+ -> \w+", line)]


def stop_all(pair: Pair) -> None:
    for node in pair.nodes:
        node.run.stop()
