"""l4-dr end to end: a client, the LB (`pacslb run` in its namespace) and real servers with the
VIP on their loopback, on one segment. Replies go from the real server straight to the client."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import PACSLB, Pacslb
from tests.netns.topology import Client, Topology, named_servers, one_arm

VIP = "198.18.0.100"
PORTS = [4000, 5000]

Start = Callable[..., Pacslb]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with one_arm(servers=2, vip=VIP) as t:
        named_servers(t, PORTS)
        yield t


@pytest.fixture
def fresh(topo: Topology) -> Iterator[Topology]:
    yield topo
    # Our table outlives `pacslb run` on purpose; the next test starts from a clean host.
    topo.hosts["lb"].run("nft", "delete", "table", "netdev", "pacslb", check=False)
    topo.hosts["lb"].run("ip", "addr", "del", f"{VIP}/32", "dev", "eth0", check=False)


def service(**kw: Any) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "label": "DICOM",
        "vip": VIP,
        "ports": PORTS,
        "mode": "l4-dr",
        "scheduler": "wrr",
        "health_check": {
            "type": "connect",
            "port": 4000,
            "interval": 0.5,
            "timeout": 0.5,
            "rise": 1,
            "fall": 1,
        },
        "real_servers": [
            {"label": "rs1", "address": "198.18.0.11"},
            {"label": "rs2", "address": "198.18.0.12"},
        ],
    }
    svc.update(kw)
    return {"version": 1, "virtual_services": [svc]}


def test_weights_split_new_flows_and_replies_bypass_the_lb(
    fresh: Topology, pacslb_in: Start
) -> None:
    lb, client = fresh.hosts["lb"], fresh.hosts["client"]
    cfg = service()
    cfg["virtual_services"][0]["real_servers"][0]["weight"] = 300
    run = pacslb_in(lb, cfg)
    c = Client(client, VIP, 4000)
    names = Counter(c.once(40))
    # numgen walks the interleaved 3:1 slot table: any 40 consecutive slots hold 30 +- 1.
    assert abs(names["rs1"] - 30) <= 1 and abs(names["rs2"] - 10) <= 1, names

    before = lb.link_stats()
    got = c.bulk(20_000_000)
    after = lb.link_stats()
    assert got == 20_000_000
    # Only the client's side (the request and its ACKs) crosses the LB; 20 MB of replies don't.
    assert after["rx_bytes"] - before["rx_bytes"] < 2_000_000, (before, after)

    run.wait_for(
        "flow counters",
        lambda: sum(run.connections("DICOM", rs, "total") for rs in ("rs1", "rs2")) == 41,
    )
    assert run.connections("DICOM", "rs1", "total") in (30, 31, 32)
    # The LB counts what it forwards: the client's side only; replies never pass it.
    counted = [run.server("DICOM", rs)["connections"] for rs in ("rs1", "rs2")]
    assert all(c["packets_in"] > 0 and c["bytes_out"] == 0 for c in counted), counted


def test_source_ip_persistence_holds_within_its_timeout(fresh: Topology, pacslb_in: Start) -> None:
    cfg = service(scheduler="rr", persistence={"type": "source-ip", "timeout": 2})
    pacslb_in(fresh.hosts["lb"], cfg)
    c = Client(fresh.hosts["client"], VIP, 4000)
    first = c.once(6)
    assert len(set(first)) == 1, first
    # Both ports of the VIP share the client's server (one persistence per service).
    assert Client(fresh.hosts["client"], VIP, 5000).once(2) == [first[0]] * 2
    time.sleep(3.5)  # past the timeout: the client is scheduled anew, then sticks again
    after = c.once(6)
    # rr's counter moved on only once (persistent clients skip it): the next slot, the other
    # server.
    assert len(set(after)) == 1 and after[0] != first[0], (first, after)


def test_held_connections_survive_weight_drain_and_restart_and_halt_cuts(
    fresh: Topology, pacslb_in: Start
) -> None:
    run = pacslb_in(fresh.hosts["lb"], service())
    c = Client(fresh.hosts["client"], VIP, 4000)
    held = c.open(6)
    assert Counter(held) == {"rs1": 3, "rs2": 3}

    # A weight change through the config file and `pacslb reload`.
    cfg = service()
    cfg["virtual_services"][0]["real_servers"][1]["weight"] = 10
    run.write(cfg)
    run.cli("reload")
    assert c.ping() == ["ok"] * 6

    run.cli("drain", "DICOM", "rs1")
    assert set(c.once(6)) == {"rs2"}
    assert c.ping() == ["ok"] * 6
    run.wait_for("active counts", lambda: run.connections("DICOM", "rs1") == 3)

    # A restart of pacslb: the table (and its flow map) stays, the new process adopts it.
    run.stop()
    assert c.ping() == ["ok"] * 6
    run.start()
    assert c.ping() == ["ok"] * 6
    assert run.server("DICOM", "rs1")["admin"] == "drain"
    run.wait_for("adopted counts", lambda: run.connections("DICOM", "rs2") >= 3)

    run.cli("halt", "DICOM", "rs2")
    pings = c.ping()
    by_server = Counter(zip(held, pings, strict=True))
    assert by_server[("rs1", "ok")] == 3, pings
    assert by_server[("rs2", "reset")] == 3, pings  # the LB answers their next packet with RST


def test_a_failing_health_check_removes_the_server(fresh: Topology, pacslb_in: Start) -> None:
    run = pacslb_in(fresh.hosts["lb"], service())
    c = Client(fresh.hosts["client"], VIP, 4000)
    assert set(c.once(4)) == {"rs1", "rs2"}
    assert set(c.open(2)) == {"rs1", "rs2"}
    rs2 = fresh.hosts["rs2"]
    # Block the health check port on rs2 with its own firewall (its server keeps running).
    rs2.run("nft", "add", "table", "inet", "t")
    rs2.run("nft", "add", "chain", "inet", "t", "in", "{ type filter hook input priority 0; }")
    rs2.run(
        "nft",
        "add",
        "rule",
        "inet",
        "t",
        "in",
        "tcp",
        "dport",
        "4000",
        "ip",
        "saddr",
        "198.18.0.2",
        "reject",
        "with",
        "tcp",
        "reset",
    )
    try:
        run.wait_for("rs2 down", lambda: run.server("DICOM", "rs2")["health"] == "down")
        assert set(c.once(6)) == {"rs1"}
        # Out of rotation, not cut: one slow check must not reset transfers in flight.
        assert c.ping() == ["ok", "ok"]
    finally:
        rs2.run("nft", "delete", "table", "inet", "t")
    run.wait_for("rs2 up", lambda: run.server("DICOM", "rs2")["health"] == "up")
    assert set(c.once(4)) == {"rs1", "rs2"}


def test_dicom_c_store_through_the_dr_vip_on_4000_and_5000(
    pacslb_in: Start, tmp_path: Path
) -> None:
    from bench.dicom_files import new_uid

    from tests.integration.test_tcp_proxy import DCMTK_ENV, STORESCU, dataset_part, dicom_ct

    with one_arm(servers=2, vip=VIP) as t:
        rx = {}
        for name in ("rs1", "rs2"):
            for port in PORTS:
                d = rx[(name, port)] = tmp_path / f"{name}-{port}"
                d.mkdir()
                t.hosts[name].popen(
                    ["/usr/bin/storescp", "-aet", "PACS", "+B", "-od", str(d), str(port)],
                    env={**os.environ, **DCMTK_ENV},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        pacslb_in(t.hosts["lb"], service())
        src = tmp_path / "src"
        src.mkdir()
        sent: dict[str, bytes] = {}
        study, series = new_uid(), new_uid()
        for i in range(10):
            uid = new_uid()
            data = dicom_ct(uid, "PACSLB-DR", study, series, i + 1, os.urandom(128 * 128 * 2), 128)
            (src / f"img{i:02}.dcm").write_bytes(data)
            sent[uid] = dataset_part(data)
        files = sorted(str(p) for p in src.iterdir())
        for port in PORTS:  # TCP_NODELAY=1 for dcmtk, as everywhere (research/dicom.md)
            t.hosts["client"].run(
                "env",
                "TCP_NODELAY=1",
                STORESCU,
                "-aet",
                "MODALITY",
                "-aec",
                "PACS",
                VIP,
                str(port),
                *files,
            )
        # storescp names each file <modality>.<SOP instance UID> and wrote what it received.
        received = {
            p.name.split(".", 1)[1]: dataset_part(p.read_bytes())
            for d in rx.values()
            for p in d.iterdir()
        }
        per_port = {
            port: sum(len(list(rx[(n, port)].iterdir())) for n in ("rs1", "rs2")) for port in PORTS
        }
        assert per_port == {4000: 10, 5000: 10}
        assert received == sent


def test_wlc_sends_new_flows_to_the_least_loaded_server(fresh: Topology, pacslb_in: Start) -> None:
    run = pacslb_in(fresh.hosts["lb"], service(scheduler="wlc"))
    run.cli("drain", "DICOM", "rs2")
    c = Client(fresh.hosts["client"], VIP, 4000)
    assert set(c.open(6)) == {"rs1"}  # a backlog of 6 on rs1
    run.cli("online", "DICOM", "rs2")
    # The engine re-deals the slots from the live flow counts about once a second.
    run.wait_for("counts", lambda: run.connections("DICOM", "rs1") == 6)
    time.sleep(1.5)
    assert set(c.open(4)) == {"rs2"}, "WLC fills the idle server first"
    # Slots are dealt for as many new flows as the last interval saw. The interval that saw
    # these 4 expects 4 more and pours them to even at 7 (rs2 three, rs1 one); the one after,
    # which saw none, expects one, and 6 against 4 sends it to rs2.
    run.wait_for("counts", lambda: run.connections("DICOM", "rs2") == 4)
    time.sleep(2.5)
    # 6 against 4: the next ones still go to rs2 until the two are even.
    assert set(c.open(2)) == {"rs2"}


def test_a_connection_the_server_refused_is_not_counted_as_open(
    fresh: Topology, pacslb_in: Start
) -> None:
    run = pacslb_in(fresh.hosts["lb"], service(scheduler="wlc"))
    rs2 = fresh.hosts["rs2"]
    # rs2 refuses port 5000 itself: its RST goes straight to the client, past the LB.
    rs2.run("nft", "add", "table", "inet", "t")
    rs2.run("nft", "add", "chain", "inet", "t", "in", "{ type filter hook input priority 0; }")
    rs2.run("nft", "add", "rule", "inet", "t", "in", "tcp", "dport", "5000", "reject", "with",
            "tcp", "reset")  # fmt: skip
    try:
        results = Client(fresh.hosts["client"], VIP, 5000).once(4)
    finally:
        rs2.run("nft", "delete", "table", "inet", "t")
    assert results.count("error: ConnectionRefusedError") == 2, results
    held = Client(fresh.hosts["client"], VIP, 4000)
    held.open(2)
    # Once counted, the refused flows are not open connections (they wait out a 30 s
    # handshake timeout in the flow map, not the 30-minute idle timeout).
    time.sleep(1.5)
    assert run.connections("DICOM", "rs1") + run.connections("DICOM", "rs2") == 2


def test_teardown_ends_layer4_forwarding_for_good(fresh: Topology, pacslb_in: Start) -> None:
    run = pacslb_in(fresh.hosts["lb"], service())
    lb = fresh.hosts["lb"]
    teardown = [*PACSLB, "teardown", "--state-dir", str(run.state_dir)]
    refused = subprocess.run(
        ["ip", "netns", "exec", lb.ns, *teardown], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    run.stop()
    assert set(Client(fresh.hosts["client"], VIP, 4000).once(2)) == {"rs1", "rs2"}  # still on
    out = lb.run(*teardown)
    assert "deleted table netdev pacslb" in out and f"removed VIP {VIP} from eth0" in out
    assert "pacslb" not in lb.run("nft", "list", "tables")
    assert VIP not in lb.run("ip", "-4", "addr", "show", "dev", "eth0")


def test_a_real_server_removed_from_a_live_service(fresh: Topology, pacslb_in: Start) -> None:
    run = pacslb_in(fresh.hosts["lb"], service())
    c = Client(fresh.hosts["client"], VIP, 4000)
    held = c.open(2)
    cfg = service()
    cfg["virtual_services"][0]["real_servers"] = cfg["virtual_services"][0]["real_servers"][:1]
    run.write(cfg)
    run.cli("reload")
    assert "apply failed" not in run.cli("events", "--kind", "engine")
    # The removed server drains (docs/reliability.md): listed as removing while its flow lives,
    # no new flows, and its held connection carries on as rs1's does.
    admin = {rs["label"]: rs["admin"] for rs in run.status()["services"][0]["real_servers"]}
    assert admin == {"rs1": "online", "rs2": "removing"}
    assert set(c.once(4)) == {"rs1"}
    assert c.ping() == ["ok", "ok"], held
