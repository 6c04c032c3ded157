"""The HA guard in a real ControlProcess: on the passive node every change from the API, the
CLI (reload, drain) and the WebUI is refused naming the active node (409), while a replicated
change from the peer goes through; during a split brain changes are refused on every node.

The role is set here as the keepalived supervisor (control/ha.py) sets it, on a process whose
node.ha names its peer but is not enabled: an enabled one would start keepalived on this host
(outside any namespace). The pair with keepalived itself, where the supervisor sets the roles,
is tests/netns/test_ha_replication.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.webapp import headers, login, web_client

from pacslb.control.app import ControlProcess
from pacslb.control.replica import PassiveNode, SplitBrain
from pacslb.control.store import read_config
from pacslb.core.ha_role import Role
from pacslb.core.state import AdminState

CONFIG = """version: 1
node:
  webui: {enabled: false}
  ha: {enabled: false, interface: eth0, peers: [198.18.0.2], secret: "a shared secret, 16+"}
virtual_services:
  - label: Web
    vip: 198.18.0.100
    ports: [8080]
    mode: l7-tcp
    health_check: {type: none}
    real_servers:
      - {label: Srv1, address: 198.18.0.11, port: 8080}
"""
WEB_CONFIG = CONFIG.replace("{enabled: false}", '{listen: "127.0.0.1:9443"}')


PEER = "127.10.2.9"  # the paired peer's address here: loopback, nothing listens (no call
# reaches it in these tests: every refusal comes before the peer would be asked)


def paired(process: ControlProcess) -> None:
    """Pair the process with PEER as control/pairing.py would record it."""
    from pacslb.control.peer import PeerRecord, save_record

    record = PeerRecord(PEER, 9, "AB:" * 31 + "AB", "pacslb_x_y", "none", "now")
    save_record(process.replica.path, record)
    process.replica.record = record


def run(tmp_path: Path, body: object) -> None:
    path = tmp_path / "pacslb.yaml"
    path.write_text(CONFIG)
    text, config = read_config(path)

    async def main() -> None:
        process = ControlProcess(path, config, text, (), tmp_path / "state")
        await process.start()
        try:
            await body(process)  # type: ignore[operator]
        finally:
            process.request_stop()
            await process.stop()

    asyncio.run(main())


def test_the_passive_node_refuses_every_change_but_the_peers(tmp_path: Path) -> None:
    async def body(process: ControlProcess) -> None:
        assert process.ha.role is Role.STANDALONE
        process.ha.set(Role.PASSIVE)
        # Not paired: nothing carries changes between the nodes, so they are taken here.
        result = await process.set_admin("Web", "Srv1", AdminState.DRAIN, by="admin")
        assert result["state"] == "drain"
        await process.set_admin("Web", "Srv1", AdminState.ONLINE, by="admin")
        paired(process)
        changed = process.config.model_copy(update={"virtual_services": []})
        with pytest.raises(PassiveNode, match=r"make changes on the active node 127\.10\.2\.9"):
            await process.apply_config(changed, "delete everything", by="admin")
        with pytest.raises(PassiveNode):
            await process.set_admin("Web", "Srv1", AdminState.DRAIN, by="admin")
        process.config_path.write_text(CONFIG.replace("8080]", "8081]"))
        with pytest.raises(PassiveNode):
            await process.reload()
        assert process.revision == 1 and process.admin.all() == {}
        events = [e.message for e in process.events.query("config", None, None, 50)]
        assert not any("applying revision 2" in m for m in events)
        # node: is this node's own (never replicated): changed on the passive node too.
        process.config_path.write_text(CONFIG)  # the refused edit undone
        node = process.config.node.model_copy(
            update={"proxy": process.config.node.proxy.model_copy(update={"workers": 3})}
        )
        result = await process.apply_config(process.config.model_copy(update={"node": node}))
        assert result["changed"] and process.revision == 2
        process.config_path.write_text(process.store.text(2).replace("workers: 3", "workers: 2"))
        assert (await process.reload())["changed"] and process.revision == 3
        # What the paired peer replicates is applied (into the file as it was: a hand edit
        # left in it would be refused to the peer as well, and shown as the refusal's reason).
        process.config_path.write_text(process.store.text(3))
        result = await process.apply_config(changed, "replicated", "ha-peer", replicated=True)
        assert result["changed"] and process.config.virtual_services == []

    run(tmp_path, body)


def test_split_brain_refuses_changes_on_the_active_node_too(tmp_path: Path) -> None:
    async def body(process: ControlProcess) -> None:
        process.ha.set(Role.ACTIVE)
        paired(process)
        process.replica.watch.observe(Role.ACTIVE, Role.ACTIVE, f"peer {PEER}")
        with pytest.raises(SplitBrain, match="split brain"):
            await process.set_admin("Web", "Srv1", AdminState.HALT)
        process.replica.watch.observe(Role.ACTIVE, Role.PASSIVE, f"peer {PEER}")
        assert (await process.set_admin("Web", "Srv1", AdminState.HALT))["state"] == "halt"

    run(tmp_path, body)


def test_the_api_answers_409_naming_the_active_node(tmp_path: Path) -> None:
    with web_client(tmp_path, WEB_CONFIG) as (client, process):
        csrf = login(client)
        process.ha.set(Role.PASSIVE)
        paired(process)
        r = client.post(
            "/api/v1/virtual_services/Web/real_servers/Srv1/drain", headers=headers(csrf)
        )
        assert r.status_code == 409
        assert r.json()["detail"] == (
            f"this node is the passive node of an HA pair; make changes on the active node {PEER}"
        )
        r = client.delete("/api/v1/virtual_services/Web", headers=headers(csrf))
        assert r.status_code == 409 and f"active node {PEER}" in r.json()["detail"]
        status = client.get("/api/v1/ha/status").json()
        assert status["role"] == "passive" and status["paired"] is True
        assert status["peer"]["address"] == PEER and status["peer"]["reachable"] is None
        page = client.get("/ha").text
        assert 'id="ha-role">passive' in page
        assert f'id="ha-peer">{PEER}:9: role unknown, not polled yet' in page
        process.replica.watch.observe(Role.ACTIVE, Role.ACTIVE, f"peer {PEER}")
        assert (
            'id="split-brain"' in client.get("/").text
            and 'id="split-brain"' in client.get("/ha").text
        )
        # Pairing from the page: refused with the reason shown.
        r = client.post(
            "/ha/pair",
            data={"csrf_token": csrf, "address": "127.10.2.9:9", "token": "pacslb_x_y"},
        )
        assert r.status_code == 409 and "node.ha is not enabled on this node" in r.text


def test_an_unreadable_pairing_file_does_not_stop_the_node(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "ha-peer.json").write_text("{not json")

    async def body(process: ControlProcess) -> None:
        status = process.replica.status_json()
        assert status["paired"] is False and "ha-peer.json" in status["problem"]
        assert "not paired until it is fixed" in status["problem"]
        events = [e.message for e in process.events.query("ha", None, None, 50)]
        assert any("ha-peer.json" in m for m in events)
        assert process.ready  # the load balancer runs on

    run(tmp_path, body)


def test_only_the_paired_peer_may_replicate_into_a_node(tmp_path: Path) -> None:
    from pacslb.control.peer import PeerRecord, save_record
    from pacslb.core.auth import Role as UserRole

    with web_client(tmp_path, WEB_CONFIG) as (client, process):
        store = process.pairing.auth
        _, operator = store.create_token("operator", UserRole.ADMIN, "test")
        peer_info, peer_token = store.create_token("ha-peer", UserRole.ADMIN, "test")
        as_operator = {"Authorization": f"Bearer {operator}"}
        as_peer = {"Authorization": f"Bearer {peer_token}"}
        body = {"virtual_services": [], "admin": {}, "generation": 9, "revision": 4}
        r = client.put("/api/v1/ha/replica", json=body, headers=as_peer)
        assert r.status_code == 409 and r.json()["detail"] == "this node is not paired"
        record = PeerRecord("198.18.0.2", 9443, "AB:" * 31 + "AB", "x", peer_info.id, "now")
        save_record(process.replica.path, record)
        process.replica.record = record
        r = client.put("/api/v1/ha/replica", json=body, headers=as_operator)
        assert r.status_code == 403 and "only the paired peer" in r.json()["detail"]
        assert process.revision == 1
        # The paired peer: its state is applied here as a revision of this node's config.
        r = client.put("/api/v1/ha/replica", json=body, headers=as_peer)
        assert r.status_code == 200, r.text
        assert process.config.virtual_services == [] and process.revision == 2
        assert process.config.node.webui.listen == "127.0.0.1:9443"  # its node: kept
        revision = client.get("/api/v1/config/revisions", headers=as_operator).json()[-1]
        assert revision["comment"] == "replicated from 198.18.0.2 revision 4"
        assert revision["author"] == "ha-peer"
        assert process.replica.status_json()["generation"] == 9
        # A state this node cannot apply is refused whole (422), naming the problem.
        bad = {**body, "virtual_services": [{"label": "X", "vip": "not an address"}]}
        r = client.put("/api/v1/ha/replica", json=bad, headers=as_peer)
        assert r.status_code == 422 and process.revision == 2
        r = client.post("/api/v1/ha/prepare", json=bad, headers=as_peer)
        assert r.status_code == 422 and r.json()["problems"]
