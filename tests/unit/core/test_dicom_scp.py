"""The Verification SCP against pacslb's own sans-I/O C-ECHO client, bytes in memory."""

from __future__ import annotations

from typing import Any

from pacslb.core.dicom import (
    Accepted,
    ContextRejected,
    EchoClient,
    EchoResponse,
    Released,
    associate_rq,
)
from pacslb.core.dicom_scp import VerificationResponder, associate_ac


def events(client: EchoClient, data: bytes) -> list[Any]:
    client.receive_data(data)
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def test_a_full_echo_conversation() -> None:
    client, scp = EchoClient("ARCHIVE", "MODALITY"), VerificationResponder()
    assert any(isinstance(e, Accepted) for e in events(client, scp.receive_data(client.start())))
    (response,) = events(client, scp.receive_data(client.echo_request()))
    assert isinstance(response, EchoResponse) and response.status == 0x0000
    assert any(
        isinstance(e, Released) for e in events(client, scp.receive_data(client.release_request()))
    )
    assert scp.done


def test_bytes_one_at_a_time() -> None:
    client, scp = EchoClient("ARCHIVE", "MODALITY"), VerificationResponder()
    out = b"".join(scp.receive_data(bytes([b])) for b in client.start())
    assert any(isinstance(e, Accepted) for e in events(client, out))


def test_other_sop_classes_are_rejected_by_context() -> None:
    rq = bytearray(associate_rq("ARCHIVE", "MODALITY"))
    # turn the Verification UID into CT Image Storage, same length prefix rewritten below
    ct = b"1.2.840.10008.5.1.4.1.1.2"
    verification = b"1.2.840.10008.1.1"
    start = rq.index(verification)
    rq[start - 2 : start + len(verification)] = len(ct).to_bytes(2, "big") + ct
    # fix the context item, and the PDU lengths, for the longer UID
    grow = len(ct) - len(verification)
    ctx = rq.index(b"\x20\x00", 74)
    rq[ctx + 2 : ctx + 4] = (int.from_bytes(rq[ctx + 2 : ctx + 4], "big") + grow).to_bytes(2, "big")
    rq[2:6] = (int.from_bytes(rq[2:6], "big") + grow).to_bytes(4, "big")
    ac, accepted = associate_ac(bytes(rq[6:]))
    assert accepted == set()
    client = EchoClient("ARCHIVE", "MODALITY")
    client.start()
    assert any(isinstance(e, ContextRejected) for e in events(client, ac))


def test_garbage_is_aborted() -> None:
    scp = VerificationResponder()
    assert scp.receive_data(b"GET / HTTP/1.1\r\n\r\n") == bytes.fromhex("07000000000400000200")
    assert scp.done
