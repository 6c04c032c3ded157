"""l7-dicom PDU boundaries on the wire: headers split across segments, P-DATA-TF counted, and a
halt in the middle of a PDU that waits for the PDU's end before the A-ABORT.

The peers here are raw sockets (a test that needs bytes at exact places cannot use a DICOM
toolkit, which writes whole PDUs): a client that writes PDUs in awkward pieces, and an
"archive" thread that answers the request with an A-ASSOCIATE-AC and records every byte.
Both relays are run: splice (its hot loop in C and in Python), and recv/send.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from tests.integration.dicom_proxy_support import PEER, DicomVip, ProxyLoop, associate_rq, read_pdu
from tests.peers.procs import wait_until

from pacslb.proxy import dicom_pumps

pytestmark = pytest.mark.timeout(60)

VIP = "127.10.20.14"


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def p_data(size: int, fill: int) -> bytes:
    # one PDV item (PS3.8 §9.3.5.1): length, context id 1, control header 0 (data, not last)
    value = bytes([1, 0]) + bytes([fill]) * size
    return pdu(0x04, struct.pack(">I", len(value)) + value)


class Archive:
    """Accepts one association: reads the request, answers an A-ASSOCIATE-AC, then records
    what it receives until EOF."""

    def __init__(self) -> None:
        self.sock = socket.create_server((PEER, 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.request = b""
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(20)
            head = conn.recv(6, socket.MSG_WAITALL)
            body = conn.recv(int.from_bytes(head[2:], "big"), socket.MSG_WAITALL)
            self.request = head + body
            conn.sendall(pdu(0x02, body))  # an AC (its content does not matter here)
            try:
                while data := conn.recv(65536):
                    self.received += data
            except OSError:
                pass
        self.closed.set()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["C", "Python"], autouse=True)
def hot_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the splice relay's hot loop in C (_pdufast, where built) and in Python."""
    if request.param == "C" and not dicom_pumps.COMPILED:
        pytest.skip("pacslb.proxy._pdufast is not built here (`make` builds it)")
    if request.param == "Python":
        monkeypatch.setattr(dicom_pumps, "_relay", None)
    return str(request.param)


@pytest.fixture(scope="module")
def proxy_loop() -> Iterator[ProxyLoop]:
    loop = ProxyLoop()
    try:
        yield loop
    finally:
        loop.close()


def associated(vip: DicomVip) -> socket.socket:
    client = socket.create_connection((VIP, vip.port), timeout=10)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.sendall(associate_rq(b"ARCHIVE", b"RAW_SCU"))
    answer = read_pdu(client)
    assert answer is not None and answer[0] == 0x02
    return client


def send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*cuts, len(data)]:
        sock.sendall(data[start:cut])
        time.sleep(0.02)  # separate segments, read separately by the proxy
        start = cut


@pytest.mark.parametrize("splice", [True, False])
def test_split_headers_are_followed_and_counted(proxy_loop: ProxyLoop, splice: bool) -> None:
    archive = Archive()
    try:
        servers = [{"label": "A", "address": PEER, "port": archive.port}]
        with DicomVip(proxy_loop, VIP, servers, splice=splice).serving() as vip:
            client = associated(vip)
            stream = p_data(100, 1) + p_data(20000, 2) + p_data(7, 3) + pdu(0x05, bytes(4))
            # cuts inside the first header, between two headers' bytes, inside a body
            send_in_pieces(client, stream, [1, 3, 6, 50, 112, 113, 115, 20000])
            wait_until(lambda: len(archive.received) == len(stream), 10, "the stream")
            client.close()
            assert archive.closed.wait(10)
            assert bytes(archive.received) == stream
            vip.wait_idle()
            stats = vip.stats("A")
            assert stats["pdata_pdus"] == 3 and stats["associations"] == 1
            assert stats["assoc_aborted"] == 0
    finally:
        archive.close()


@pytest.mark.parametrize("splice", [True, False])
def test_a_halt_mid_pdu_waits_for_its_end_then_aborts_both_sides(
    proxy_loop: ProxyLoop, splice: bool
) -> None:
    archive = Archive()
    try:
        servers = [{"label": "A", "address": PEER, "port": archive.port}]
        with DicomVip(proxy_loop, VIP, servers, splice=splice).serving() as vip:
            client = associated(vip)
            whole = p_data(30000, 7)
            client.sendall(whole[:10000])
            wait_until(lambda: len(archive.received) == 10000, 10, "the first part")
            vip.set_admin(A="halt")
            # The client gets its A-ABORT at once (the archive was between PDUs) ...
            assert read_pdu(client) == (0x07, b"\0\0\x02\x00")
            # ... the archive only after the rest of the PDU it was receiving.
            time.sleep(0.2)
            assert len(archive.received) == 10000
            client.sendall(whole[10000:])
            client.sendall(p_data(50, 8))  # after the boundary: not forwarded
            assert archive.closed.wait(10)
            assert bytes(archive.received) == whole + pdu(0x07, b"\0\0\x02\x00")
            client.close()
            vip.wait_idle()
            assert vip.stats("A")["assoc_aborted"] == 1
    finally:
        archive.close()


def test_the_drain_cap_leaves_an_association_that_is_releasing(proxy_loop: ProxyLoop) -> None:
    """The client has sent A-RELEASE-RQ (the archive is slow to answer): the association is
    ending by itself, so the drain cap does not abort it."""
    archive = Archive()
    try:
        servers = [{"label": "A", "address": PEER, "port": archive.port}]
        settings = {"dicom": {"drain_limit": 0.1}}
        with DicomVip(proxy_loop, VIP, servers, **settings).serving() as vip:
            client = associated(vip)
            sent = p_data(100, 1) + pdu(0x05, bytes(4))
            client.sendall(sent)
            wait_until(lambda: len(archive.received) == len(sent), 10, "the release request")
            vip.set_admin(A="drain")
            time.sleep(1.5)  # past the cap and at least one check of it (each second)
            assert bytes(archive.received) == sent  # no A-ABORT came
            client.settimeout(0.2)
            with pytest.raises(TimeoutError):
                client.recv(1)  # nor to the client
            client.close()
            assert archive.closed.wait(10)
            vip.wait_idle()
            assert vip.stats("A")["assoc_aborted"] == 0
    finally:
        archive.close()
