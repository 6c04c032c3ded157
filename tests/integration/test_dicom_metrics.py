"""DICOM figures where an operator reads them: `pacslb status` (JSON and text), /metrics and the
WebUI, from a real `pacslb run` with an l7-dicom service (one plaintext port, one DICOM TLS
port) in front of dcmtk's storescp, driven by storescu, echoscu and a Python client that holds
an association open across a drain. Addresses: 127.10.5.0/24; processes stopped by PID."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.test_dicom_tls import DCMTK_ENV, HOST, STORESCU, ct_series, storescp
from tests.peers.procs import free_port, running

from pacslb.control.auth import AuthStore
from pacslb.core import certs, dicom
from pacslb.core.auth import Role

VIP = "127.10.5.40"
ECHOSCU = "/usr/bin/echoscu"

pytestmark = pytest.mark.skipif(
    not Path(ECHOSCU).exists(), reason="dcmtk (storescp, storescu, echoscu) is not installed"
)


class Node:
    """`pacslb run` with an l7-dicom service; the CLI, the API token and the ports."""

    def __init__(self, tmp: Path, archive_port: int) -> None:
        import datetime

        self.tmp, self.state = tmp, tmp / "state"
        self.state.mkdir()
        cert, key = certs.self_signed("pacslb-test", datetime.datetime.now(datetime.UTC))
        self.pem = (str(tmp / "vip.pem"), str(tmp / "vip.key"))
        Path(self.pem[0]).write_bytes(cert)
        Path(self.pem[1]).write_bytes(key)
        self.plain, self.tls, self.web = free_port(VIP), free_port(VIP), free_port(VIP)
        service = {
            "label": "Archive",
            "vip": VIP,
            "ports": [self.plain, self.tls],
            "mode": "l7-dicom",
            "persistence": {"type": "calling-ae", "timeout": 600},
            "health_check": {"type": "none"},  # a probe would be an association on storescp
            "tls": {
                "ports": [self.tls],
                "certificates": [{"certificate": self.pem[0], "key": self.pem[1]}],
            },
            "dicom": {"routes": [{"called_ae": "ARCHIVE", "real_servers": ["Pacs1"]}]},
            "real_servers": [{"label": "Pacs1", "address": HOST, "port": archive_port}],
        }
        config = {
            "version": 1,
            "node": {
                "state_dir": str(self.state),
                "proxy": {"workers": 1},
                "webui": {"listen": f"{VIP}:{self.web}"},
            },
            "virtual_services": [service],
        }
        (tmp / "pacslb.yaml").write_text(json.dumps(config))
        _, self.token = AuthStore(self.state).create_token("test", Role.ADMIN, "test")

    def start(self, stack: ExitStack) -> None:
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(self.tmp / "pacslb.yaml")]
        argv += ["--state-dir", str(self.state)]
        proc = stack.enter_context(running(argv, log=self.tmp / "run.log"))
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (self.tmp / "run.log").read_text()
            result = self.cli("status", "--json", check=False)
            if result.returncode == 0 and json.loads(result.stdout)["ready"]:
                return
            assert time.monotonic() < deadline, (self.tmp / "run.log").read_text()
            time.sleep(0.1)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(self.state)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)

    def status(self) -> dict[str, Any]:
        (svc,) = json.loads(self.cli("status", "--json").stdout)["services"]
        return svc  # type: ignore[no-any-return]

    def until(self, what: str, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        """The service's status once `predicate(status)` holds: the watchdog reads the
        workers' counters each second."""
        deadline = time.monotonic() + timeout
        while True:
            svc = self.status()
            if predicate(svc):
                return svc
            assert time.monotonic() < deadline, f"{what}: {json.dumps(svc.get('dicom'))}"
            time.sleep(0.2)

    def get(self, path: str) -> str:
        auth = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=f"https://{VIP}:{self.web}", verify=False, timeout=10) as c:
            response = c.get(path, headers=auth)
        assert response.status_code == 200, response.text
        return response.text


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    rx = tmp_path / "rx"
    rx.mkdir()
    with ExitStack() as stack:
        port = stack.enter_context(storescp(rx, "PACS1"))
        n = Node(tmp_path, port)
        n.start(stack)
        yield n


def dcmtk(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **DCMTK_ENV}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_association_figures_in_status_metrics_and_webui(node: Node, tmp_path: Path) -> None:
    ct_series(tmp_path / "a", 6)
    files = sorted(str(p) for p in (tmp_path / "a").iterdir())
    plain = dcmtk(STORESCU, "-aet", "MOD_A", "-aec", "ARCHIVE", VIP, str(node.plain), *files)
    assert plain.returncode == 0, plain.stderr
    tls = [STORESCU, "+tls", node.pem[1], node.pem[0], "-ic", "-aet", "MOD_B", "-aec", "ARCHIVE"]
    sent = dcmtk(*tls, VIP, str(node.tls), *files[:3])
    assert sent.returncode == 0, sent.stderr
    refused = dcmtk(ECHOSCU, "-aet", "MOD_A", "-aec", "NOSUCH", VIP, str(node.plain))
    assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stderr

    svc = node.until(
        "2 associations and 1 refusal counted",
        lambda s: (
            s["dicom"]["total"]["associations"] == 2
            and s["dicom"]["no_server"]["rejected"] == 1
            and s["dicom"]["total"]["assoc_active"] == 0
        ),
    )
    (rs,) = svc["real_servers"]
    d = rs["dicom"]
    assert d["associations"] == 2 and d["assoc_aborted"] == 0
    assert d["pdata_pdus"] >= 2 * 9 and d["bytes_in"] > 9 * 64 * 64 * 2
    assert d["mean_seconds"] is not None and d["mean_seconds"] >= 0
    by_ae = {ae["calling_ae"]: ae for ae in svc["dicom"]["calling_aes"]}
    assert by_ae["MOD_A"]["associations"] == 1 and by_ae["MOD_A"]["assoc_rejected"] == 1
    assert by_ae["MOD_B"]["associations"] == 1 and by_ae["MOD_B"]["bytes_in"] > 0
    assert svc["dicom"]["total"]["assoc_rejected"] == 1

    text = node.cli("status").stdout
    assert "associations: 2 opened, 0 active, 1 rejected (1 before any server), 0 aborted" in text
    assert "calling AE MOD_A" in text and "calling AE MOD_B" in text
    assert "no assoc (2 opened, 0 aborted)" in text

    metrics = node.get("/metrics")
    assert 'pacslb_dicom_associations_total{server="Pacs1",service="Archive"} 2.0' in metrics
    assert 'pacslb_dicom_associations_active{server="Pacs1",service="Archive"} 0.0' in metrics
    assert (
        'pacslb_dicom_calling_ae_associations_total{calling_ae="MOD_B",service="Archive"} 1.0'
        in metrics
    )
    assert 'pacslb_dicom_refused_total{answer="rejected",service="Archive"} 1.0' in metrics
    assert 'pacslb_dicom_pdata_pdus_total{server="Pacs1",service="Archive"}' in metrics

    overview = node.get("/")
    assert "2 opened · 1 rejected" in overview and "0 assoc" in overview
    page = node.get("/services/Archive")
    assert 'id="dicom-servers"' in page and '<tr data-row="MOD_B">' in page
    assert "1 A-ASSOCIATE-RJ, 0 A-ABORT" in page
    server = node.get("/services/Archive/servers/Pacs1")
    assert "DICOM associations: holds 0 now" in server


def open_association(node: Node, tls: bool) -> socket.socket:
    address = (VIP, node.tls if tls else node.plain)
    raw = socket.create_connection(address, timeout=5, source_address=("127.10.5.2", 0))
    sock: socket.socket = raw
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = ctx.wrap_socket(raw)
    sock.sendall(dicom.associate_rq("ARCHIVE", "HOLDER"))
    head = sock.recv(6)
    assert head[:1] == b"\x02", head  # A-ASSOCIATE-AC
    rest = int.from_bytes(head[2:6], "big")
    while rest:
        rest -= len(sock.recv(rest))
    return sock


def test_drain_shows_the_associations_a_server_still_holds(node: Node) -> None:
    # storescp serves one association at a time: one held open (through DICOM TLS) is enough.
    held = open_association(node, tls=True)
    try:
        node.until("1 association open", lambda s: s["dicom"]["total"]["assoc_active"] == 1)
        node.cli("drain", "Archive", "Pacs1")
        svc = node.until("drained", lambda s: s["real_servers"][0]["admin"] == "drain")
        assert svc["real_servers"][0]["dicom"]["assoc_active"] == 1
        assert "holds 1 assoc" in node.cli("status").stdout
        assert "1 assoc held" in node.get("/")
        assert "holds 1 now (drained" in node.get("/services/Archive/servers/Pacs1")
        # A drained server takes no new association: the client hears why, in DICOM.
        refused = dcmtk(ECHOSCU, "-aet", "LATE", "-aec", "ARCHIVE", VIP, str(node.plain))
        assert refused.returncode != 0 and "Association Rejected" in refused.stderr
        held.sendall(dicom.release_rq())  # the client releases; the drained server is free
        assert held.recv(10)[:1] == b"\x06"  # A-RELEASE-RP
    finally:
        held.close()
    node.until("released", lambda s: s["dicom"]["total"]["assoc_active"] == 0)
    assert "no assoc (1 opened, 0 aborted)" in node.cli("status").stdout


def test_halt_ends_a_tls_association_with_a_abort_and_says_why(node: Node) -> None:
    held = open_association(node, tls=True)
    try:
        node.until("1 association open", lambda s: s["dicom"]["total"]["assoc_active"] == 1)
        node.cli("halt", "Archive", "Pacs1")
        held.settimeout(5)
        assert held.recv(10) == bytes([7, 0, 0, 0, 0, 4, 0, 0, 2, 0])  # A-ABORT, provider
    finally:
        held.close()
    svc = node.until("aborted", lambda s: s["dicom"]["total"]["assoc_aborted"] == 1)
    assert svc["real_servers"][0]["dicom"]["assoc_active"] == 0
    deadline = time.monotonic() + 10
    while "association ended with A-ABORT" not in (events := node.cli("events").stdout):
        assert time.monotonic() < deadline, events
        time.sleep(0.2)
