"""Removing a real server drains it in the kernel engine too (issue 14, item 5; root only).

l4-nat in network namespaces (h3-*, 198.18.0.0/15): a client holds connections to one real
server through the VIP; a reload drops that server. Its connections go on (conntrack keeps
them, the forward chain cuts only halted marks), its persistent client is scheduled anew, the
status says "removing" while conntrack still counts them, and once they close it is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import Pacslb
from tests.netns.topology import Client, Topology, named_servers, two_arm

VIP = "198.18.1.100"


@pytest.fixture
def nat() -> Iterator[Topology]:
    with two_arm(servers=2, gateway=True) as topo:
        named_servers(topo, [8080])
        yield topo


def config(servers: list[str]) -> dict[str, Any]:
    address = {"rs1": "198.18.2.11", "rs2": "198.18.2.12"}
    return {
        "version": 1,
        "virtual_services": [
            {
                "label": "Web",
                "vip": VIP,
                "ports": [80],
                "mode": "l4-nat",
                "persistence": {"type": "source-ip", "timeout": 600},
                "health_check": {
                    "type": "connect",
                    "port": 8080,
                    "interval": 0.5,
                    "timeout": 0.5,
                    "rise": 1,
                },
                "real_servers": [
                    {"label": s, "address": address[s], "port": 8080} for s in servers
                ],
            }
        ],
    }


def labels(run: Pacslb) -> dict[str, str]:
    (svc,) = run.status()["services"]
    return {rs["label"]: rs["admin"] for rs in svc["real_servers"]}


def test_a_removed_nat_server_keeps_its_flows_until_they_close(
    nat: Topology, tmp_path: Path
) -> None:
    run = Pacslb(nat.hosts["lb"], tmp_path, config(["rs1", "rs2"]))
    run.start()
    try:
        client = Client(nat.hosts["client"], VIP, 80)
        held = client.open(3)
        assert len(set(held)) == 1, held  # one client, one server (persistence)
        mine = held[0]
        other = "rs2" if mine == "rs1" else "rs1"
        run.wait_for("the flows counted", lambda: run.connections("Web", mine) == 3)

        run.write(config([other]))
        run.cli("reload")
        assert client.ping() == ["ok"] * 3  # its flows go on
        assert labels(run)[mine] == "removing"
        assert set(client.once(3)) == {other}  # the persistent client moved; nothing new there
        events = run.cli("events", "--kind", "admin")
        assert "removed: draining 3 connections" in events, events
        assert run.connections("Web", mine) == 3

        client.close()  # the transfers end: conntrack's count falls to 0, the server goes
        run.wait_for("the server gone", lambda: mine not in labels(run), timeout=20)
        assert "removed: gone" in run.cli("events", "--kind", "admin")
    finally:
        run.stop()
