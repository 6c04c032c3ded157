"""The HA guard in a real ControlProcess: on the passive node every change from the API, the
CLI (reload, drain) and the WebUI is refused naming the active node (409), while a replicated
change from the peer goes through; during a split brain changes are refused on every node.

The role is set here as the keepalived supervisor (control/ha.py) sets it, on a process whose
node.ha names its peer but is not enabled: an enabled one would start keepalived on this host
(outside any namespace). The pair with keepalived itself, where the supervisor sets the roles,
is tests/netns/test_ha_replication.py."""

from __future__ import annotations

import asyncio
import json
import time
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


def test_once_paired_only_the_active_node_takes_changes(tmp_path: Path) -> None:
    """A node starting, stopped (keepalived down) or in fault must not raise its generation: the
    higher generation wins whatever the roles, so its state (a fresh install's empty one, say)
    would replace the active node's."""

    async def body(process: ControlProcess) -> None:
        paired(process)
        changed = process.config.model_copy(update={"virtual_services": []})
        for role in (Role.STARTING, Role.STOPPED, Role.FAULT):
            process.ha.set(role)
            with pytest.raises(PassiveNode, match=f"this node is {role}, not the active node"):
                await process.set_admin("Web", "Srv1", AdminState.DRAIN, by="admin")
            with pytest.raises(PassiveNode, match=r"the peer 127\.10\.2\.9 when it is active"):
                await process.apply_config(changed, "delete everything", by="admin")
        assert process.revision == 1 and process.admin.all() == {}
        assert process.replica.generation == 0
        process.ha.set(Role.ACTIVE)
        assert (await process.set_admin("Web", "Srv1", AdminState.DRAIN))["state"] == "drain"
        assert process.replica.generation == 1

    run(tmp_path, body)


def test_a_replica_not_applied_whole_is_refused_and_its_generation_not_taken(
    tmp_path: Path,
) -> None:
    """An admin state that cannot be set here (a server this node's services do not have):
    before, the generation was recorded anyway, the digests never matched and the active node
    pushed every second forever; now 422 with the reason, and nothing recorded."""
    from pacslb.control.peer import PeerRecord, save_record
    from pacslb.core.auth import Role as UserRole

    with web_client(tmp_path, WEB_CONFIG) as (client, process):
        peer_info, peer_token = process.pairing.auth.create_token("ha-peer", UserRole.ADMIN, "t")
        record = PeerRecord("198.18.0.2", 9443, "AB:" * 31 + "AB", "x", peer_info.id, "now")
        save_record(process.replica.path, record)
        process.replica.record = record
        as_peer = {"Authorization": f"Bearer {peer_token}"}
        services = [vs.model_dump(mode="json") for vs in process.config.virtual_services]
        body = {
            "virtual_services": services,
            "admin": {"Web": {"Gone": "drain"}},
            "generation": 9,
            "revision": 4,
        }
        r = client.put("/api/v1/ha/replica", json=body, headers=as_peer)
        assert r.status_code == 422, r.text
        assert "could not be applied whole" in r.text and "Web/Gone drain" in r.text
        assert process.replica.status_json()["generation"] == 0
        assert process.replica.record.common_digest is None
        # The whole state applies: its generation is taken, and it is the common state.
        body["admin"] = {"Web": {"Srv1": "drain"}}
        r = client.put("/api/v1/ha/replica", json=body, headers=as_peer)
        assert r.status_code == 200, r.text
        assert process.replica.status_json()["generation"] == 9
        assert process.replica.record.common_digest == r.json()["digest"]


def test_the_peer_token_calls_the_ha_api_only(tmp_path: Path) -> None:
    """Tokens minted by pairing (`ha-peer`) are no admin tokens of the whole node."""
    from pacslb.core.auth import Role as UserRole

    with web_client(tmp_path, WEB_CONFIG) as (client, process):
        _, peer_token = process.pairing.auth.create_token("ha-peer", UserRole.ADMIN, "t")
        as_peer = {"Authorization": f"Bearer {peer_token}"}
        r = client.get("/api/v1/virtual_services", headers=as_peer)
        assert r.status_code == 403 and "/api/v1/ha/* only" in r.json()["detail"]
        r = client.delete("/api/v1/virtual_services/Web", headers=as_peer)
        assert r.status_code == 403 and process.revision == 1
        assert client.get("/api/v1/ha/status", headers=as_peer).status_code == 200


STALL_HOST = "127.10.11.7"  # a peer here accepts TCP and never answers TLS (loopback)


def test_a_stalled_peer_costs_one_deadline_once(tmp_path: Path) -> None:
    """A peer that accepts TCP and never answers TLS: the change on the active node completes
    within the one prepare deadline (not one per phase), the peer is then known unreachable,
    and the next change does not wait at all."""
    from pacslb.control import replica as replica_module

    async def body(process: ControlProcess) -> None:
        held: list[asyncio.StreamWriter] = []

        async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # kept open, never a byte: TLS never completes

        server = await asyncio.start_server(stall, STALL_HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            from pacslb.control.peer import PeerRecord, save_record

            record = PeerRecord(STALL_HOST, port, "AB:" * 31 + "AB", "t", "none", "now")
            save_record(process.replica.path, record)
            process.replica.record = record
            process.ha.set(Role.ACTIVE)
            config = process.config
            first = config.model_copy(update={"virtual_services": []})
            started = time.monotonic()
            await process.apply_config(first, "one", by="admin")
            took = time.monotonic() - started
            print(f"first change with a stalled peer: {took:.2f} s")
            deadline = replica_module.PREPARE_TIMEOUT
            assert deadline <= took < deadline * 1.5 + 1, took  # once, not per phase (2x)
            assert process.revision == 2
            status = process.replica.status_json()
            assert status["replication"]["state"] == "unreachable"
            assert f"did not answer within {deadline:g} s" in status["peer"]["error"]
            started = time.monotonic()
            await process.apply_config(config, "two", by="admin")
            again = time.monotonic() - started
            print(f"next change: {again:.2f} s")
            assert again < 1.5 and process.revision == 3
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    run(tmp_path, body)


def test_a_push_answered_409_is_tried_again_at_the_next_poll(tmp_path: Path) -> None:
    """Only 422 (the peer cannot apply the state) is a refusal that holds a state back; a 409
    (a change racing it there), a 5xx, is tried again at the next poll."""
    import datetime
    import ssl

    from pacslb.control.peer import PeerRecord, save_record
    from pacslb.core import certs
    from pacslb.core.replication import fingerprint

    cert, key = certs.self_signed("peer", datetime.datetime.now(datetime.UTC), ["peer"])
    (tmp_path / "peer.pem").write_bytes(cert + key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "peer.pem")
    pinned = fingerprint(ssl.PEM_cert_to_DER_cert(cert.decode()))
    puts: list[str] = []

    def http(status: str, body: dict[str, object]) -> bytes:
        data = json.dumps(body).encode()
        return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(data), data)

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                await reader.readexactly(length)
            if head.startswith(b"GET /api/v1/ha/status"):
                status = {"role": "passive", "digest": "other", "generation": 0, "revision": 1}
                writer.write(http("200 OK", status))
            else:
                puts.append(head.split(b" ")[0].decode())
                writer.write(http("409 Conflict", {"detail": "a change is being applied"}))
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def body(process: ControlProcess) -> None:
        server = await asyncio.start_server(peer, STALL_HOST, 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            record = PeerRecord(STALL_HOST, port, pinned, "t", "none", "now", generation=3)
            save_record(process.replica.path, record)
            process.replica.record = record
            process.ha.set(Role.ACTIVE)
            replica = process.replica
            for turn in (1, 2):
                await replica.sync_once()
                assert replica._pushing is not None
                await replica._pushing
                assert puts == ["PUT"] * turn
                status = replica.status_json()
                assert status["replication"]["state"] == "behind"  # not "refused"
                assert "409" in status["peer"]["error"]
            events = [e.message for e in process.events.query("ha", None, None, 50)]
            assert sum("tried again at the next poll" in m for m in events) == 1  # said once
        finally:
            server.close()
            await server.wait_closed()

    run(tmp_path, body)


def test_a_conflict_shows_everywhere_and_the_ha_page_resolves_it(tmp_path: Path) -> None:
    """The conflict as the sync loop records it (the pair end to end: tests/netns): the HA page
    and the Overview show it, /metrics has the gauge, and "Keep this node's state" makes this
    node's state the newer one (a generation above both; the peer's counts as the common one),
    so that it is pushed."""
    from pacslb.core import replication as r

    with web_client(tmp_path, WEB_CONFIG) as (client, process):
        csrf = login(client)
        process.ha.set(Role.ACTIVE)
        paired(process)
        replica = process.replica
        replica._save(generation=2, common_digest="agreed")
        replica.view = r.PeerView(True, None, Role.PASSIVE, "theirs", 4, 0, 5)
        replica._observe_conflict(replica.own_digest(), replica.view)
        assert replica.conflicted
        events = [e.message for e in process.events.query("ha", None, None, 50)]
        assert any("replication conflict: this node (revision 1" in m for m in events)
        assert any("peer 127.10.2.9 (revision 5, state theirs)" in m for m in events)
        page = client.get("/ha").text
        assert 'id="conflict"' in page and 'id="resolve"' in page
        assert 'id="conflict"' in client.get("/").text
        assert "pacslb_ha_conflict 1.0" in client.get("/metrics").text
        status = client.get("/api/v1/ha/status").json()
        assert status["conflict"] is True and status["replication"]["state"] == "conflict"
        r2 = client.post("/ha/resolve", data={"csrf_token": csrf})
        assert r2.status_code == 200 and "Kept this node&#39;s state (revision 1)" in r2.text
        assert replica.generation == 5 and replica.record is not None
        assert replica.record.common_digest == "theirs" and not replica.conflicted
        own, theirs = replica.own_digest(), r.PeerView(True, None, Role.PASSIVE, "theirs", 4, 0, 5)
        still = r.in_conflict(own, "theirs", replica.record.common_digest)
        assert not still and r.should_push(Role.ACTIVE, 5, own, theirs, False, still)  # pushes
        assert "pacslb_ha_conflict 0.0" in client.get("/metrics").text


def test_a_hanging_push_does_not_stop_the_polls_nor_split_brain_detection(
    tmp_path: Path,
) -> None:
    """A peer that answers its status but never answers the push: the push runs as its own
    task (up to its deadline), the next poll goes on at once and still sees split brain."""
    import datetime
    import ssl

    from pacslb.control.peer import PeerRecord, save_record
    from pacslb.core import certs
    from pacslb.core.replication import fingerprint

    cert, key = certs.self_signed("peer", datetime.datetime.now(datetime.UTC), ["peer"])
    (tmp_path / "peer.pem").write_bytes(cert + key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "peer.pem")
    pinned = fingerprint(ssl.PEM_cert_to_DER_cert(cert.decode()))
    roles = ["passive", "active"]  # the peer's answers to the two polls
    held: list[asyncio.StreamWriter] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            writer.close()
            return
        if not head.startswith(b"GET /api/v1/ha/status"):
            held.append(writer)  # the push: never answered
            return
        body = json.dumps({"role": roles.pop(0), "digest": "other", "generation": 0}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def body(process: ControlProcess) -> None:
        server = await asyncio.start_server(peer, STALL_HOST, 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        replica = process.replica
        try:
            record = PeerRecord(STALL_HOST, port, pinned, "t", "none", "now", generation=3)
            save_record(replica.path, record)
            replica.record = record
            process.ha.set(Role.ACTIVE)
            await replica.sync_once()
            pushing = replica._pushing
            assert pushing is not None and not pushing.done()
            started = time.monotonic()
            await replica.sync_once()
            assert time.monotonic() - started < 2 and not pushing.done()
            assert replica.watch.split  # seen while the push hangs
        finally:
            if replica._pushing is not None:
                replica._pushing.cancel()
            for writer in held:
                writer.close()
            server.close()

    run(tmp_path, body)
