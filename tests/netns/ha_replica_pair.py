"""Two pacslb nodes of an HA pair in network namespaces (`ha_one_arm`: lb1 198.18.0.2
priority 150, lb2 198.18.0.3 priority 100), real keepalived, for the replication tests
(tests/netns/test_ha_replication.py) and bench/ha_replication.py. lb2 can run with a folder
hidden from it (a tmpfs over it in a mount namespace of its own): a file lb1 has and lb2 lacks.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.netns.topology import Topology, ha_one_arm
from tests.peers.ha_node import SECRET, HaNode, wait_for

VIP = "198.18.0.100"
LB1, LB2 = "198.18.0.2", "198.18.0.3"
PORT = 9443


def node_settings(own: str, peer: str, priority: int) -> str:
    return (
        f"  ha: {{enabled: true, interface: eth0, address: {own}, peers: [{peer}], "
        f'priority: {priority}, advert_int: 1, secret: "{SECRET}"}}\n'
    )


SERVICES = f"""  - label: Dicom
    vip: {VIP}
    ports: [104]
    mode: l4-dr
    health_check: {{type: none}}
    real_servers:
      - {{label: rs1, address: 198.18.0.11}}
      - {{label: rs2, address: 198.18.0.12}}
"""


class Lb:
    """A node in its namespace: the CLI through the control socket, the REST API by curl from
    inside the namespace (the test process cannot reach 198.18.x from the root namespace)."""

    def __init__(self, topo: Topology, ns_name: str, node: HaNode, hide: Path | None) -> None:
        self.host = topo.hosts[ns_name]
        self.topo_client = topo.hosts["client"]  # where a browser or curl from outside runs
        self.node = node
        self.hide = hide
        self.api_token = ""

    def start(self) -> None:
        prefix = ["ip", "netns", "exec", self.host.ns]
        if self.hide is None:
            self.node.start(prefix=prefix)
        else:
            prefix += ["unshare", "--mount", "--propagation", "private"]
            self.node.start(prefix=prefix, shell=f"mount -t tmpfs pacslb-test {self.hide}")
        if not self.api_token:
            self.api_token = self.node.token("test-api")

    def role(self) -> str:
        return str(self.node.ha().get("role"))

    def curl(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        argv = ["curl", "-sk", "--max-time", "30", "-X", method]
        argv += ["-H", f"Authorization: Bearer {self.api_token}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        argv += ["-w", "\n%{http_code}", f"https://{self.node.address}{path}"]
        out = self.host.run(*argv, check=False)
        text, _, code = out.rpartition("\n")
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return int(code or 0), parsed


@contextlib.contextmanager
def replication_pair(folder: Path, hidden: Path | None = None) -> Iterator[tuple[Lb, Lb]]:
    """lb1 active, lb2 passive (`hidden` empty for lb2), not paired yet; both stopped and the
    namespaces deleted afterwards."""
    with ha_one_arm(servers=2, vip=VIP) as topo:
        n1 = HaNode("lb1", folder / "lb1", LB1, PORT)
        n2 = HaNode("lb2", folder / "lb2", LB2, PORT)
        n1.write(node_settings(LB1, LB2, 150), SERVICES)
        n2.write(node_settings(LB2, LB1, 100), SERVICES)
        lb1, lb2 = Lb(topo, "lb1", n1, None), Lb(topo, "lb2", n2, hidden)
        try:
            lb1.start()
            wait_for(lambda: lb1.role() == "active", 20, "lb1 active")
            lb2.start()
            wait_for(lambda: lb2.role() == "passive", 20, "lb2 passive")
            yield lb1, lb2
        finally:
            n2.stop()
            n1.stop()
            topo.hosts["lb2"].run("nft", "delete", "table", "inet", "splitbrain", check=False)


def event_at(node: HaNode, kind: str, text: str) -> datetime.datetime:
    """When the node recorded its last event of `kind` holding `text` (one clock: one host);
    waited for a little (a change is in force, its file written, just before its event)."""
    found: list[dict[str, Any]] = []

    def recorded() -> bool:
        events = node.control("events", kind=kind, limit=500)
        found[:] = [e for e in events if text in e["message"]]
        return bool(found)

    wait_for(recorded, 5, f"{node.name}: a {kind} event with {text!r}")
    return datetime.datetime.fromisoformat(found[-1]["at"])


def commit_to_peer(lb1: Lb, lb2: Lb, kind: str, active_text: str, peer_text: str) -> float:
    """Seconds from the change's event on the active node to its event on the passive one."""
    seconds = event_at(lb2.node, kind, peer_text) - event_at(lb1.node, kind, active_text)
    return seconds.total_seconds()
