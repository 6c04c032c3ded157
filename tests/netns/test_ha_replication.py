"""Replication of an HA pair end to end: two `pacslb run` nodes in network namespaces
(`ha_one_arm`: lb1 198.18.0.2 priority 150, lb2 198.18.0.3 priority 100) with real keepalived,
paired through the CLI on the active node, as an operator does it.

- a config change on the active node (REST API, from inside its namespace) is in force on the
  passive one within 2 s; a drain (CLI) too (measured and printed: `pytest -s`);
- a revision the peer refuses (a TLS certificate that exists on lb1 only: lb2 runs with that
  folder empty in a mount namespace of its own) leaves both on their previous revision;
- an edit on the passive node is refused (CLI and REST 409), naming the active node;
- split brain (VRRP dropped by an nft rule on lb2's input while the API path still works) is
  reported on both nodes within 5 s of both being active, changes are refused meanwhile, and it
  ends by priority once the rule is gone (lb1, the higher, keeps the addresses);
- a passive node that was stopped catches up when it returns;
- `pacslb ha takeover` on the passive node moves the addresses; the new active node's changes
  flow the other way.
"""

from __future__ import annotations

import datetime
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacslb.core import certs
from tests.netns.topology import Topology, ha_one_arm
from tests.peers.ha_node import SECRET, HaNode, wait_for

VIP = "198.18.0.100"
LB1, LB2 = "198.18.0.2", "198.18.0.3"
PORT = 9443
# Generous bounds (a loaded machine); the goals (2 s replication, 5 s split brain) are the
# printed figures.
REPLICATION_BOUND = 2.0
SPLIT_BOUND = 5.0

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]


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


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Lb, Lb, Path]]:
    if shutil.which("keepalived") is None and not Path("/usr/sbin/keepalived").exists():
        pytest.skip("keepalived is not installed (scripts/sysdeps.txt)")
    only_on_lb1 = tmp_path / "only-on-lb1"
    only_on_lb1.mkdir()
    cert, key = certs.self_signed("web", datetime.datetime.now(datetime.UTC), ["web"])
    (only_on_lb1 / "web.pem").write_bytes(cert + key)
    with ha_one_arm(servers=2, vip=VIP) as topo:
        n1 = HaNode("lb1", tmp_path / "lb1", LB1, PORT)
        n2 = HaNode("lb2", tmp_path / "lb2", LB2, PORT)
        n1.write(node_settings(LB1, LB2, 150), SERVICES)
        n2.write(node_settings(LB2, LB1, 100), SERVICES)
        lb1, lb2 = Lb(topo, "lb1", n1, None), Lb(topo, "lb2", n2, only_on_lb1)
        try:
            lb1.start()
            wait_for(lambda: lb1.role() == "active", 20, "lb1 active")
            lb2.start()
            wait_for(lambda: lb2.role() == "passive", 20, "lb2 passive")
            yield lb1, lb2, only_on_lb1
        finally:
            n2.stop()
            n1.stop()
            topo.hosts["lb2"].run("nft", "delete", "table", "inet", "splitbrain", check=False)


def vrrp_drop(lb: Lb, on: bool) -> None:
    if on:
        lb.host.run("nft", "add", "table", "inet", "splitbrain")
        lb.host.run(
            "nft",
            "add chain inet splitbrain input { type filter hook input priority -300 ; }",
        )
        lb.host.run("nft", "add rule inet splitbrain input ip protocol vrrp drop")
    else:
        lb.host.run("nft", "delete", "table", "inet", "splitbrain")


def test_pair_replicate_refuse_split_brain_catch_up_takeover(pair: tuple[Lb, Lb, Path]) -> None:
    lb1, lb2, only_on_lb1 = pair
    figures: dict[str, float] = {}

    # Pairing through the CLI on the active node (the peer's fingerprint checked this time).
    token = lb2.node.token("pairing")
    done = lb1.node.cli(
        "ha", "pair", lb2.node.address, "--token", token, "--fingerprint", lb2.node.fingerprint()
    )
    assert done.returncode == 0, done.stderr
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 10, "lb1 in sync")
    ha2 = lb2.node.ha()
    assert ha2["peer"]["address"] == LB1 and ha2["peer"]["role"] in ("active", None)
    listing = lb2.node.cli("ha", "status").stdout
    assert "this node: passive" in listing and f"peer: {LB1}:{PORT}: active" in listing, listing

    # A config change on the active node, through its REST API: in force on the passive.
    started = time.monotonic()
    code, body = lb1.curl(
        "POST",
        "/api/v1/virtual_services/Dicom/real_servers",
        {"label": "rs3", "address": "198.18.0.13"},
    )
    assert code == 201, body
    wait_for(lambda: "rs3" in lb2.node.servers()["Dicom"], 10, "rs3 on lb2", step=0.01)
    figures["config change replicated (s)"] = time.monotonic() - started

    # A drain on the active node (CLI): in force on the passive.
    started = time.monotonic()
    assert lb1.node.cli("drain", "Dicom", "rs1").returncode == 0
    wait_for(lambda: lb2.node.admin_states()["Dicom/rs1"] == "drain", 10, "drain on lb2", 0.01)
    figures["drain replicated (s)"] = time.monotonic() - started

    # A revision the peer refuses: a certificate only lb1 has. Both stay where they were.
    revisions = (lb1.node.status()["revision"], lb2.node.status()["revision"])
    secure = {
        "label": "Secure",
        "vip": VIP,
        "ports": [443],
        "mode": "l7-http",
        "health_check": {"type": "none"},
        "tls": {"certificates": [{"certificate": str(only_on_lb1 / "web.pem")}]},
        "real_servers": [{"label": "rs1", "address": "198.18.0.11", "port": 80}],
    }
    code, body = lb1.curl("POST", "/api/v1/virtual_services", secure)
    assert code == 422, body
    assert any(f"peer {LB2}" in p["message"] for p in body["problems"]), body
    assert (lb1.node.status()["revision"], lb2.node.status()["revision"]) == revisions
    assert "Secure" not in lb1.node.servers() and "Secure" not in lb2.node.servers()

    # Edits on the passive node are refused, naming the active one.
    done = lb2.node.cli("halt", "Dicom", "rs2")
    assert done.returncode == 1 and f"make changes on the active node {LB1}" in done.stderr
    code, body = lb2.curl("DELETE", "/api/v1/virtual_services/Dicom")
    assert code == 409 and f"active node {LB1}" in body["detail"], body

    # Split brain: lb2 hears no VRRP from lb1, becomes active too; the API path still works.
    vrrp_drop(lb2, True)
    wait_for(lambda: lb2.role() == "active", 20, "lb2 active as well (split brain)")
    both = time.monotonic()
    assert lb1.role() == "active"
    wait_for(
        lambda: lb1.node.ha()["split_brain"] and lb2.node.ha()["split_brain"],
        30,
        "split brain reported on both",
    )
    figures["split brain reported on both after both active (s)"] = time.monotonic() - both
    for lb in (lb1, lb2):
        assert "split brain: both nodes are active" in lb.node.events()
    done = lb1.node.cli("online", "Dicom", "rs1")
    assert done.returncode == 1 and "split brain" in done.stderr, done.stderr
    vrrp_drop(lb2, False)
    wait_for(lambda: lb2.role() == "passive", 20, "lb2 passive again (priority)")
    wait_for(
        lambda: not lb1.node.ha()["split_brain"] and not lb2.node.ha()["split_brain"],
        10,
        "split brain over on both",
    )
    assert "split brain ended: this node kept the addresses" in lb1.node.events()
    assert f"split brain ended: peer {LB1} kept the addresses" in lb2.node.events()

    # The passive node stopped: the active one goes on and is behind; it catches up.
    lb2.node.stop()
    assert lb1.node.cli("online", "Dicom", "rs1").returncode == 0
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "unreachable", 15, "unreachable")
    print(f"lb1 while lb2 is stopped: {lb1.node.ha()['replication']['text']}")
    lb2.start()
    started = time.monotonic()
    wait_for(lambda: lb2.node.admin_states()["Dicom/rs1"] == "online", 20, "lb2 caught up")
    figures["caught up after the peer was ready (s)"] = time.monotonic() - started

    # Takeover on the passive node: lb2 becomes active; its changes now flow to lb1.
    wait_for(lambda: lb2.role() == "passive", 20, "lb2 passive after its restart")
    done = lb2.node.cli("ha", "takeover")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: lb2.role() == "active" and lb1.role() == "passive", 20, "takeover")
    assert lb2.node.cli("drain", "Dicom", "rs2").returncode == 0
    wait_for(lambda: lb1.node.admin_states()["Dicom/rs2"] == "drain", 10, "drain on lb1")
    done = lb1.node.cli("online", "Dicom", "rs2")
    assert done.returncode == 1 and f"active node {LB2}" in done.stderr, done.stderr

    for what, seconds in figures.items():
        print(f"{what}: {seconds:.3f}")
    assert figures["config change replicated (s)"] < REPLICATION_BOUND * 3
    assert figures["drain replicated (s)"] < REPLICATION_BOUND * 3
    assert figures["split brain reported on both after both active (s)"] < SPLIT_BOUND * 3
