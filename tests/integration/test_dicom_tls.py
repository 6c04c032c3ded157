"""DICOM TLS on an l7-dicom VIP (pacslb.proxy.dicom_tls) against real peers on loopback.

dcmtk's storescu `+tls` (with `-ic`: the test certificate is self-signed) sends CT images to
the VIP, which terminates TLS, routes by the called AE and relays to a plain storescp, or to a
storescp `+tls` for a real server with `reencrypt: true`; what arrives must be byte-identical.
A Python TLS client checks the DICOM answers (A-ASSOCIATE-RJ, A-ABORT) byte for byte, and that
a halt ends a live association with A-ABORT. The proxy runs in this process on its own uvloop
thread (as in test_tcp_proxy); peers are subprocesses stopped by PID. Addresses: 127.10.5.0/24.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.dicom_files import new_uid
from tests.integration.test_tcp_proxy import ProxyLoop, dataset_part, dicom_ct
from tests.peers.procs import free_port, running
from tests.peers.procs import wait_until as wait_for

from pacslb.core import certs, dicom
from pacslb.core.plan import build_plan
from pacslb.core.state import AdminState
from pacslb.core.validate import load_data
from pacslb.proxy.dicom_tls import DicomTlsListener
from pacslb.proxy.runtime import NO_SERVER, ServiceRuntime
from pacslb.proxy.tls import tls_context

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
DCMTK_ENV = {"TCP_NODELAY": "1"}
HOST = "127.10.5.1"  # the archives (storescp listens on every address; reached here)

pytestmark = pytest.mark.skipif(
    not Path(STORESCP).exists(), reason="dcmtk (storescp, storescu) is not installed"
)


@pytest.fixture(scope="module")
def proxy_loop() -> Iterator[ProxyLoop]:
    loop = ProxyLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate and key, for the VIP and for the TLS archive."""
    where = tmp_path_factory.mktemp("pem")
    cert, key = certs.self_signed("pacslb-test", datetime.datetime.now(datetime.UTC))
    (where / "cert.pem").write_bytes(cert)
    (where / "key.pem").write_bytes(key)
    return str(where / "cert.pem"), str(where / "key.pem")


@contextlib.contextmanager
def storescp(rx: Path, title: str, pem: tuple[str, str] | None = None) -> Iterator[int]:
    """dcmtk storescp (bit-preserving), plain or `+tls`; yields its port."""
    port = free_port(HOST)
    argv = [STORESCP, "-aet", title, "+B", "-od", str(rx)]
    if pem is not None:
        argv += ["+tls", pem[1], pem[0], "-ic"]  # -ic: the proxy shows no client certificate
    with running([*argv, str(port)], HOST, port, env=DCMTK_ENV):
        yield port


class TlsVip:
    """One l7-dicom service on one TLS port, served by a DicomTlsListener on the proxy loop."""

    def __init__(self, loop: ProxyLoop, vip: str, pem: tuple[str, str], **service: Any) -> None:
        self.loop, self.vip, self.label = loop, vip, "DicomTls"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((vip, 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        data = {
            "version": 1,
            "virtual_services": [
                {
                    "label": self.label,
                    "vip": vip,
                    "ports": [self.port],
                    "mode": "l7-dicom",
                    "health_check": {"type": "none"},
                    "tls": {"certificates": [{"certificate": pem[0], "key": pem[1]}]},
                    **service,
                }
            ],
        }
        self.config = load_data(data)
        self.runtime = ServiceRuntime(build_plan(self.config).services[0])
        context = tls_context([pem])

        def start() -> DicomTlsListener:
            listener = DicomTlsListener(sock, self.runtime, self.port, context)
            listener.start()
            return listener

        self.listener = loop.call(start)

    def stats(self, row: str) -> dict[str, Any]:
        return self.loop.call(lambda: self.runtime.stats[row].__dict__.copy())

    def set_admin(self, **states: str) -> None:
        admin = {(self.label, rs): AdminState(state) for rs, state in states.items()}
        self.loop.call(self.runtime.update, build_plan(self.config, admin=admin).services[0])

    def open_associations(self) -> int:
        return self.loop.call(lambda: len(self.listener.associations))

    def close(self) -> None:
        self.loop.call(self.listener.close)
        self.loop.call(self.listener.abort_all)


@contextlib.contextmanager
def tls_vip(loop: ProxyLoop, vip: str, pem: tuple[str, str], **service: Any) -> Iterator[TlsVip]:
    v = TlsVip(loop, vip, pem, **service)
    try:
        yield v
    finally:
        v.close()


def ct_series(directory: Path, count: int) -> dict[str, bytes]:
    """Small CT images; returns SOP Instance UID -> data set bytes."""
    directory.mkdir()
    study, series, sent = new_uid(), new_uid(), {}
    for i in range(count):
        uid = new_uid()
        data = dicom_ct(uid, "PACSLB-TLS", study, series, i + 1, os.urandom(64 * 64 * 2))
        (directory / f"img{i:02}.dcm").write_bytes(data)
        sent[uid] = dataset_part(data)
    return sent


def received(rx: Path) -> dict[str, bytes]:
    # storescp names each file <modality>.<SOP instance UID>
    return {p.name.split(".", 1)[1]: dataset_part(p.read_bytes()) for p in rx.iterdir()}


def storescu_tls(
    vip: TlsVip, called: str, src: Path, pem: tuple[str, str]
) -> subprocess.CompletedProcess[str]:
    argv = [STORESCU, "+tls", pem[1], pem[0], "-ic", "-aet", "MODALITY", "-aec", called]
    argv += [vip.vip, str(vip.port), *sorted(str(p) for p in src.iterdir())]
    env = {**os.environ, **DCMTK_ENV}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_storescu_tls_routes_by_called_ae_to_a_plain_and_a_tls_archive(
    proxy_loop: ProxyLoop, pem: tuple[str, str], tmp_path: Path
) -> None:
    plain_rx, tls_rx = tmp_path / "rx-plain", tmp_path / "rx-tls"
    plain_rx.mkdir()
    tls_rx.mkdir()
    first, second = ct_series(tmp_path / "a", 12), ct_series(tmp_path / "b", 8)
    with (
        storescp(plain_rx, "PACS1") as plain_port,
        storescp(tls_rx, "PACS2", pem) as tls_port,
    ):
        servers = [
            {"label": "Plain", "address": HOST, "port": plain_port, "ae_title": "PACS1"},
            {"label": "Tls", "address": HOST, "port": tls_port, "reencrypt": True},
        ]
        routes = [
            {"called_ae": "ARCHIVE1", "real_servers": ["Plain"]},
            {"called_ae": "ARCHIVE2", "real_servers": ["Tls"]},
        ]
        with tls_vip(
            proxy_loop, "127.10.5.30", pem, real_servers=servers, dicom={"routes": routes}
        ) as vip:
            one = storescu_tls(vip, "ARCHIVE1", tmp_path / "a", pem)
            assert one.returncode == 0, one.stderr
            two = storescu_tls(vip, "ARCHIVE2", tmp_path / "b", pem)
            assert two.returncode == 0, two.stderr
            wait_for(lambda: vip.open_associations() == 0, 5, "associations to end")
            plain, tls = vip.stats("Plain"), vip.stats("Tls")
            modality = vip.stats("ae:MODALITY")
    # Routed by the called AE, and byte-identical at both archives (plain and re-encrypted).
    assert received(plain_rx) == first
    assert received(tls_rx) == second
    assert (plain["associations"], tls["associations"]) == (1, 1)
    assert plain["assoc_active"] == tls["assoc_active"] == 0
    # one P-DATA-TF PDU at least per image (command + data set) and per response
    assert plain["pdata_pdus"] >= 2 * 12 and tls["pdata_pdus"] >= 2 * 8
    assert plain["bytes_in"] > 12 * 64 * 64 * 2 and tls["bytes_in"] > 8 * 64 * 64 * 2
    assert modality["associations"] == 2 and modality["assoc_seconds"] > 0
    assert plain["assoc_aborted"] == tls["assoc_aborted"] == 0


def tls_client(vip: TlsVip) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((vip.vip, vip.port), timeout=5)
    return ctx.wrap_socket(raw)


def read_pdu(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while len(data) < 6 or len(data) < 6 + int.from_bytes(data[2:6], "big"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_refusals_are_dicom_answers_over_tls(
    proxy_loop: ProxyLoop, pem: tuple[str, str], tmp_path: Path
) -> None:
    rx = tmp_path / "rx"
    rx.mkdir()
    dead = free_port(HOST)  # nothing listens there
    with storescp(rx, "PACS1") as port:
        servers = [
            {"label": "Up", "address": HOST, "port": port},
            {"label": "Gone", "address": HOST, "port": dead},
        ]
        routes = [
            {"called_ae": "ARCHIVE", "real_servers": ["Up"]},
            {"called_ae": "OLDPACS", "real_servers": ["Gone"]},
        ]
        with tls_vip(
            proxy_loop, "127.10.5.31", pem, real_servers=servers, dicom={"routes": routes}
        ) as vip:
            # An unknown called AE: A-ASSOCIATE-RJ permanent, service-user, called AE unknown.
            with tls_client(vip) as sock:
                sock.sendall(dicom.associate_rq("NOSUCH", "MODALITY"))
                assert read_pdu(sock) == bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 7])
            # No server that answers: A-ASSOCIATE-RJ transient, provider (presentation).
            with tls_client(vip) as sock:
                sock.sendall(dicom.associate_rq("OLDPACS", "MODALITY"))
                assert read_pdu(sock) == bytes([3, 0, 0, 0, 0, 4, 0, 2, 3, 1])
            # Not DICOM at all (an HTTP request through the TLS port): A-ABORT.
            with tls_client(vip) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_pdu(sock)[:1] == b"\x07"
            # A request past dicom.max_request is refused from its header alone.
            with tls_client(vip) as sock:
                sock.sendall(b"\x01\x00" + (1 << 20).to_bytes(4, "big"))
                assert read_pdu(sock)[:1] == b"\x03"
            refused = vip.stats(NO_SERVER)
            gone = vip.stats("Gone")
    assert list(rx.iterdir()) == []  # nothing reached the archive
    assert refused["assoc_rejected"] == 3 and refused["assoc_aborted"] == 1
    assert gone["connect_failures"] >= 1


def test_halt_ends_a_live_tls_association_with_a_abort(
    proxy_loop: ProxyLoop, pem: tuple[str, str], tmp_path: Path
) -> None:
    rx = tmp_path / "rx"
    rx.mkdir()
    with storescp(rx, "PACS1") as port:
        servers = [{"label": "Pacs", "address": HOST, "port": port}]
        with tls_vip(proxy_loop, "127.10.5.32", pem, real_servers=servers) as vip:
            with tls_client(vip) as sock:
                sock.sendall(dicom.associate_rq("PACS1", "MODALITY"))
                assert read_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC: the association is up
                vip.set_admin(Pacs="halt")
                # A-ABORT from the service-provider (source 2), not a bare reset.
                assert read_pdu(sock) == bytes([7, 0, 0, 0, 0, 4, 0, 0, 2, 0])
            wait_for(lambda: vip.open_associations() == 0, 5, "the association to end")
            stats = vip.stats("Pacs")
    assert stats["assoc_aborted"] == 1 and stats["assoc_active"] == 0


def test_drain_cap_ends_a_held_tls_association_with_a_abort(
    proxy_loop: ProxyLoop, pem: tuple[str, str], tmp_path: Path
) -> None:
    rx = tmp_path / "rx"
    rx.mkdir()
    with storescp(rx, "PACS1") as port:
        servers = [{"label": "Pacs", "address": HOST, "port": port}]
        dicom_settings = {"drain_limit": 1}
        with tls_vip(
            proxy_loop, "127.10.5.33", pem, real_servers=servers, dicom=dicom_settings
        ) as vip:
            with tls_client(vip) as sock:
                sock.sendall(dicom.associate_rq("PACS1", "MODALITY"))
                assert read_pdu(sock)[:1] == b"\x02"
                vip.set_admin(Pacs="drain")
                # Drained: the association runs on, until the cap (1 s here) ends it.
                assert vip.open_associations() == 1
                sock.settimeout(5)
                assert read_pdu(sock) == bytes([7, 0, 0, 0, 0, 4, 0, 0, 2, 0])
            wait_for(lambda: vip.open_associations() == 0, 5, "the association to end")
            stats = vip.stats("Pacs")
    assert stats["assoc_aborted"] == 1 and stats["associations"] == 1
