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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacslb.control.local import request
from pacslb.errors import PacslbError
from tests.netns.conftest import Pacslb
from tests.netns.topology import (
    HA_GATEWAY,
    ROOT,
    Host,
    Topology,
    add_ipv6,
    ha_one_arm,
    ha_two_arm,
    named_servers,
)

SECRET = "pacslb-netns-pair-secret"  # test data: the pair's shared secret
PROBE = [sys.executable, str(ROOT / "tests/netns/ha_probe.py")]
HTTP_VIP = "198.18.1.100"
NAT_VIP = "198.18.1.101"
HTTP_VIP6 = "2001:2:1::100"  # the l7-http service's IPv6 VIP (two-arm), in the same instance
DR_VIP = "198.18.0.100"


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


def two_arm_config(me: str, peer: str, priority: int, advert_int: float = 1.0) -> dict[str, Any]:
    return {
        "version": 1,
        "node": {
            "ha": ha_settings(
                "eth0",
                peer,
                priority,
                advert_int,
                [{"address": f"{HA_GATEWAY}/24", "interface": "eth1"}],
            ),
        },
        "virtual_services": [
            {
                "label": "Web",
                "vip": HTTP_VIP,
                "ports": [80],
                "mode": "l7-http",
                "health_check": check(8081),
                "real_servers": [
                    {"label": "rs1", "address": "198.18.2.11", "port": 8081},
                    {"label": "rs2", "address": "198.18.2.12", "port": 8081},
                ],
            },
            {
                "label": "Web6",
                "vip": HTTP_VIP6,
                "ports": [80],
                "mode": "l7-http",
                "health_check": check(8081),
                "real_servers": [
                    {"label": "rs1", "address": "198.18.2.11", "port": 8081},
                    {"label": "rs2", "address": "198.18.2.12", "port": 8081},
                ],
            },
            {
                "label": "Dicom",
                "vip": NAT_VIP,
                "ports": [104],
                "mode": "l4-nat",
                "health_check": check(8080),
                "real_servers": [
                    {"label": "rs1", "address": "198.18.2.11", "port": 8080},
                    {"label": "rs2", "address": "198.18.2.12", "port": 8080},
                ],
            },
        ],
    }


def one_arm_config(me: str, peer: str, priority: int, advert_int: float = 1.0) -> dict[str, Any]:
    return {
        "version": 1,
        "node": {"ha": ha_settings("eth0", peer, priority, advert_int, [])},
        "virtual_services": [
            {
                "label": "Archive",
                "vip": DR_VIP,
                "ports": [8080],
                "mode": "l4-dr",
                "health_check": check(8080),
                "real_servers": [
                    {"label": "rs1", "address": "198.18.0.11"},
                    {"label": "rs2", "address": "198.18.0.12"},
                ],
            },
        ],
    }


def http_servers(pair_topo: Any) -> None:
    """A plain HTTP server (python -m http.server) on every real server, port 8081."""
    for name, host in pair_topo.hosts.items():
        if name.startswith("rs"):
            host.popen(
                [sys.executable, "-m", "http.server", "8081", "--bind", "0.0.0.0"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
            )


@dataclass
class Node:
    name: str
    host: Host
    run: Pacslb
    links: tuple[str, ...]

    def keepalived_pids(self) -> list[int]:
        """The VRRP child's pid, then the parent's."""
        pids = []
        for name in ("vrrp.pid", "keepalived.pid"):
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
        """Asked on the control socket directly: a CLI process per poll costs 0.3 s."""
        return str(request(self.run.state_dir, {"cmd": "status"}, timeout=5.0)["ha"]["role"])

    def ha_events(self) -> list[str]:
        asked = {"cmd": "events", "kind": "ha", "limit": 200}
        return [f"{e['at']} {e['message']}" for e in request(self.run.state_dir, asked)]

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
                    recovered = max(0.0, at - started)
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
    except (PacslbError, OSError, ValueError, KeyError):
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
        state.mkdir(parents=True)
        run = Pacslb(topo.hosts[name], state, config)
        nodes.append(Node(name, topo.hosts[name], run, links[name]))
    for node in nodes:
        node.run.start()
    return Pair(topo, nodes, floating)


def restart(node: Node) -> None:
    node.run.start()


def kill_keepalived(node: Node) -> None:
    """SIGKILL keepalived's VRRP child, then its parent: no priority-0 advert is sent (the
    parent first would let the child hear of it and leave gracefully)."""
    for pid in node.keepalived_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def role_changes(lines: list[str]) -> list[str]:
    """The role-change events' texts ("role passive -> active ...")."""
    return [line for line in lines if re.search(r"role \w+ -> \w+", line)]


def stop_all(pair: Pair) -> None:
    """Stop both nodes, and a keepalived one left running (`stop --keep-data-plane`)."""
    from pacslb.control.ha import stop_left_keepalived

    for node in pair.nodes:
        node.run.stop()
        stop_left_keepalived(node.run.state_dir)


PROBES = {
    "two-arm": [
        ("l7-http", "http", HTTP_VIP, 80),
        ("l7-http IPv6", "http", HTTP_VIP6, 80),
        ("l4-nat", "line", NAT_VIP, 104),
    ],
    "one-arm": [("l4-dr", "line", DR_VIP, 8080)],
}


@contextlib.contextmanager
def running_pair(shape: str, tmp: Path, advert_int: float = 1.0) -> Iterator[Pair]:
    """The topology of `shape` (two-arm: l7-http and l4-nat with a floating gateway; one-arm:
    l4-dr), its real servers, and both nodes running; everything stopped and deleted after."""
    if shape == "two-arm":
        with ha_two_arm(servers=2) as topo:
            for lb in ("lb1", "lb2"):  # as a configured host: IPv6 addresses survive links
                topo.hosts[lb].sysctl("net.ipv6.conf.all.keep_addr_on_down", "1")  # down/up
            add_ipv6(topo)  # the client and both nodes on 2001:2:1::/64: an IPv6 VIP floats too
            named_servers(topo, [8080])
            http_servers(topo)
            configs = {
                "lb1": two_arm_config("198.18.1.2", "198.18.1.3", 150, advert_int),
                "lb2": two_arm_config("198.18.1.3", "198.18.1.2", 100, advert_int),
            }
            links = {"lb1": ("eth0", "eth1"), "lb2": ("eth0", "eth1")}
            floating = (HTTP_VIP, HTTP_VIP6, NAT_VIP, HA_GATEWAY)
            pair = start_pair(topo, tmp, configs, links, floating)
            try:
                yield pair
            finally:
                stop_all(pair)
    else:
        with ha_one_arm(servers=2, vip=DR_VIP) as topo:
            named_servers(topo, [8080])
            configs = {
                "lb1": one_arm_config("198.18.0.2", "198.18.0.3", 150, advert_int),
                "lb2": one_arm_config("198.18.0.3", "198.18.0.2", 100, advert_int),
            }
            links = {"lb1": ("eth0",), "lb2": ("eth0",)}
            pair = start_pair(topo, tmp, configs, links, (DR_VIP,))
            try:
                yield pair
            finally:
                stop_all(pair)


Report = Callable[[str], None]


def fault_sequence(
    pair: Pair, probes: list[tuple[str, str, str, int]], say: Report = print
) -> dict[str, dict[str, Outage]]:
    """keepalived SIGKILLed, links down, graceful stop: each to the node active then, each
    measured from the client; the faulted node comes back passive before the next one. The
    pair's invariants are checked on the way (one node holds everything, nopreempt)."""
    out: dict[str, dict[str, Outage]] = {}
    active = pair.wait_one_active()
    first = pair.takeover("baseline", lambda: None, probes)  # before any fault: all connect
    assert all(o.failed == 0 for o in first.values()), first

    survivor = pair.other(active)
    out["keepalived killed"] = pair.takeover(
        "keepalived killed",
        lambda: kill_keepalived(active),
        probes,
        settled=lambda: wait_sole_active(pair, survivor),
    )
    report(say, f"keepalived SIGKILLed on {active.name}", out["keepalived killed"], survivor)
    # pacslb took the addresses off the node whose keepalived died and started it again: it
    # comes back passive (nopreempt).
    assert pair.wait_one_active() is survivor
    assert events_say(active, "exited") and events_say(active, "starting it again")

    active, survivor = survivor, active
    out["node loss"] = pair.takeover(
        "node loss",
        active.links_down,
        probes,
        settled=lambda: wait_sole_active(pair, survivor),
    )
    report(say, f"links of {active.name} down (node loss)", out["node loss"], survivor)
    active.links_up()
    assert pair.wait_one_active() is survivor  # the returned node stays passive: nopreempt
    assert wait_role(active, "passive") == "passive"

    active, survivor = survivor, active
    out["graceful stop"] = pair.takeover(
        "graceful stop",
        lambda: active.run.cli("stop"),
        probes,
        settled=lambda: wait_sole_active(pair, survivor),
    )
    report(say, f"`pacslb stop` on {active.name}", out["graceful stop"], survivor)
    restart(active)
    assert pair.wait_one_active() is survivor  # the restarted node comes back passive
    return out


def release(pair: Pair, active: Node) -> tuple[float, str]:
    """`pacslb ha release` on `active`: (seconds until the peer holds every address, watched
    from here with the CLI's own start counted, what the CLI said)."""
    peer = pair.other(active)
    said: list[str] = []
    asking = threading.Thread(target=lambda: said.append(active.run.cli("ha", "release")))
    started = time.monotonic()
    asking.start()
    while not pair.holds_all(peer):
        assert time.monotonic() - started < 10, "the addresses did not move"
        time.sleep(0.01)
    moved = time.monotonic() - started
    asking.join(30)
    wait_sole_active(pair, peer)
    return moved, said[0] if said else ""


def report(say: Report, what: str, outage: dict[str, Outage], survivor: Node) -> None:
    say(f"\n{what}: new connections succeed again after")
    for name, o in outage.items():
        say(f"  {name}: {o}")
    say(f"  role changes on the survivor {survivor.name}:")
    for line in role_changes(survivor.ha_events())[-2:]:
        say(f"    {line}")


def wait_sole_active(pair: Pair, node: Node, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (pair.holders() == [node.name] and pair.holds_all(node) and node.role() == "active"):
        assert time.monotonic() < deadline, f"{node.name} not the sole active node"
        time.sleep(0.1)


def wait_role(node: Node, role: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    now = node.role()
    while now != role and time.monotonic() < deadline:
        time.sleep(0.1)
        now = node.role()
    return now


def events_say(node: Node, text: str) -> bool:
    return any(text in line for line in node.ha_events())
