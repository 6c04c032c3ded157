"""l7-dicom refuses a bad association request with a DICOM answer, an event, and nothing sent
on to an archive: truncated, a wrong first PDU, lengths that lie, 1 MB, and a silent client.

The archive is a real storescp; "reaches no archive" is checked on its side (no file, and the
proxy never placed a connection on it) as well as by the proxy's counters.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.dicom_proxy_support import (
    PEER,
    DicomVip,
    ProxyLoop,
    associate_rq,
    echo,
    read_pdu,
    storescp,
)

from pacslb.proxy import notices
from pacslb.proxy.runtime import NO_SERVER

pytestmark = pytest.mark.timeout(120)

VIP = "127.10.20.11"
A_ABORT, A_ASSOCIATE_RJ = 0x07, 0x03


@pytest.fixture(scope="module")
def proxy_loop() -> Iterator[ProxyLoop]:
    loop = ProxyLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def vip(proxy_loop: ProxyLoop, tmp_path: Path) -> Iterator[DicomVip]:
    with storescp(tmp_path / "rx") as port:
        servers = [{"label": "S", "address": PEER, "port": port}]
        settings = {"request_timeout": 0.5, "max_request": 65536}
        with DicomVip(proxy_loop, VIP, servers, dicom=settings).serving() as v:
            proxy_loop.call(notices.take)  # start from an empty queue, and no repeat
            proxy_loop.call(notices._last.clear)  # limit from an earlier test (same key)
            yield v
            v.wait_idle()
            # Nothing reached the archive: no connection was placed on it, no file written.
            assert v.stats("S") == {} or v.stats("S")["total"] == 0
            assert not list((tmp_path / "rx").iterdir())


def answer(vip: DicomVip, data: bytes, half_close: bool = False) -> tuple[int, bytes] | None:
    with socket.create_connection((VIP, vip.port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_pdu(sock)


def events(vip: DicomVip) -> list[str]:
    return [str(n["message"]) for n in vip.loop.call(notices.take)]


def test_truncated_request_gets_a_abort(vip: DicomVip) -> None:
    rq = associate_rq()
    # PS3.8 Table 9-26: source 2 (service-provider), reason 6 invalid-PDU-parameter-value
    assert answer(vip, rq[:50], half_close=True) == (A_ABORT, b"\0\0\x02\x06")
    assert any("closed after 50 bytes of its A-ASSOCIATE-RQ (of" in e for e in events(vip))


def test_silent_or_short_client_is_aborted_after_the_request_timeout(vip: DicomVip) -> None:
    assert answer(vip, b"") == (A_ABORT, b"\0\0\x02\x00")  # connected, never spoke
    rq = associate_rq()
    # The header promises more than comes: the rest never arrives, the timeout answers.
    longer = rq[:2] + (len(rq) - 6 + 100).to_bytes(4, "big") + rq[6:]
    assert answer(vip, longer) == (A_ABORT, b"\0\0\x02\x00")
    assert vip.stats(NO_SERVER)["assoc_aborted"] == 2
    assert any("within dicom.request_timeout (0.5 s" in e for e in events(vip))


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03", 2),  # P-DATA-TF: unexpected-PDU
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1),  # not DICOM: unrecognized-PDU
    ],
)
def test_wrong_first_pdu_gets_a_abort(vip: DicomVip, first: bytes, reason: int) -> None:
    assert answer(vip, first) == (A_ABORT, bytes([0, 0, 2, reason]))
    assert any("aborted" in e for e in events(vip))


def test_length_that_lies_short_gets_a_abort(vip: DicomVip) -> None:
    rq = associate_rq()
    # The PDU declares 20 bytes fewer than its items take: the last item overruns it.
    short = rq[:2] + (len(rq) - 6 - 20).to_bytes(4, "big") + rq[6:-20]
    assert answer(vip, short) == (A_ABORT, b"\0\0\x02\x06")
    assert any("in the variable items declares" in e for e in events(vip))


def test_one_megabyte_request_is_refused_from_its_header(vip: DicomVip) -> None:
    rq = associate_rq()
    body = rq[6:] + b"\0" * ((1 << 20) - len(rq))
    huge = b"\x01\x00" + len(body).to_bytes(4, "big") + body
    # permanent (1), presentation service-provider (3), local-limit-exceeded (2)
    assert answer(vip, huge) == (A_ASSOCIATE_RJ, b"\0\x01\x03\x02")
    assert vip.stats(NO_SERVER)["assoc_rejected"] == 1
    assert any("exceeds dicom.max_request (65536)" in e for e in events(vip))


def test_a_good_association_still_passes(vip: DicomVip, tmp_path: Path) -> None:
    """The same service forwards a well-formed request (the fixture then finds no file:
    C-ECHO stores nothing, but the connection was placed, so check it here and reset)."""
    done = echo(VIP, vip.port, "ARCHIVE", "CT_1")
    assert done.returncode == 0, done.stderr
    vip.wait_idle()
    assert vip.stats("S")["associations"] == 1
    vip.loop.call(lambda: vip.runtime.stats.pop("S"))
