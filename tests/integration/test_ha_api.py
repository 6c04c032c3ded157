"""The HA routes and gauges of a node without an HA pair: the role reads `standalone`, a
hand-over is refused with the reason (409), and only an admin may ask for one. (The hand-over
itself, with real keepalived on two nodes, is tests/netns/test_ha_vrrp.py.)"""

from __future__ import annotations

from pathlib import Path

from tests.webapp import READONLY_PASSWORD, headers, login, web_client


def test_a_standalone_node_says_so_and_refuses_a_release(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        csrf = login(client)
        assert client.get("/api/v1/ha/role").json()["role"] == "standalone"
        assert client.get("/api/v1/status").json()["ha"]["role"] == "standalone"
        r = client.post("/api/v1/ha/release", headers=headers(csrf))
        assert r.status_code == 409 and "not enabled" in r.text, r.text
        metrics = client.get("/metrics").text
        assert 'pacslb_ha_role{role="standalone"} 1.0' in metrics, metrics
        assert 'pacslb_ha_role{role="active"} 0.0' in metrics
        client.cookies.clear()
        csrf = login(client, "viewer", READONLY_PASSWORD)
        assert client.post("/api/v1/ha/release", headers=headers(csrf)).status_code == 403
        assert process.ha.role == "standalone"
