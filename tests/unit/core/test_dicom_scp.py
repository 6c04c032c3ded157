"""The Verification and Storage SCP, bytes in memory: against pacslb's own sans-I/O C-ECHO
client, and C-STORE conversations written from the tables (PS3.7 §9.3.1, PS3.8 §9.3)."""

from __future__ import annotations

import struct
from typing import Any

from pacslb.core.dicom import (
    Accepted,
    EchoClient,
    EchoResponse,
    Released,
    _command_elements,
    _element,
    _item,
    _items,
    _pdu,
    release_rq,
)
from pacslb.core.dicom_scp import ScpResponder, associate_ac

CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Query/Retrieve - FIND: not a storage class
IMPLICIT, EXPLICIT, JPEG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"
ABORT = bytes.fromhex("07000000000400000200")  # A-ABORT, service-provider, not specified


def events(client: EchoClient, data: bytes) -> list[Any]:
    client.receive_data(data)
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def associate(*contexts: tuple[int, str, tuple[str, ...]]) -> bytes:
    body = b"\0\1\0\0" + b"ARCHIVE".ljust(16) + b"CT_1".ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract, syntaxes in contexts:
        subs = _item(0x30, abstract.encode()) + b"".join(_item(0x40, s.encode()) for s in syntaxes)
        body += _item(0x20, bytes([context_id, 0, 0, 0]) + subs)
    body += _item(0x50, _item(0x51, (16384).to_bytes(4, "big")))
    return _pdu(0x01, body)


def results(ac: bytes) -> dict[int, tuple[int, str]]:
    """context id -> (result, transfer syntax) of an A-ASSOCIATE-AC."""
    out = {}
    for kind, value in _items(ac[6 + 68 :], "AC"):
        if kind == 0x21:
            ((_, syntax),) = _items(value[4:], "context")
            out[value[0]] = (value[2], syntax.decode())
    return out


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def store_rq(message_id: int, instance: str, sop_class: str = CT) -> bytes:
    def ui(uid: str) -> bytes:
        return uid.encode() + b"\0" * (len(uid) % 2)

    body = (
        _element(0, 0x0002, ui(sop_class))
        + _element(0, 0x0100, struct.pack("<H", 0x0001))
        + _element(0, 0x0110, struct.pack("<H", message_id))
        + _element(0, 0x0700, struct.pack("<H", 0))
        + _element(0, 0x0800, struct.pack("<H", 0x0000))  # a data set follows
        + _element(0, 0x1000, ui(instance))
    )
    return _element(0, 0x0000, struct.pack("<I", len(body))) + body


def started(*contexts: tuple[int, str, tuple[str, ...]]) -> tuple[ScpResponder, bytes]:
    scp = ScpResponder()
    return scp, scp.receive_data(associate(*contexts))


def test_a_full_echo_conversation() -> None:
    client, scp = EchoClient("ARCHIVE", "MODALITY"), ScpResponder()
    assert any(isinstance(e, Accepted) for e in events(client, scp.receive_data(client.start())))
    (response,) = events(client, scp.receive_data(client.echo_request()))
    assert isinstance(response, EchoResponse) and response.status == 0x0000
    assert any(
        isinstance(e, Released) for e in events(client, scp.receive_data(client.release_request()))
    )
    assert scp.done


def test_bytes_one_at_a_time() -> None:
    client, scp = EchoClient("ARCHIVE", "MODALITY"), ScpResponder()
    out = b"".join(scp.receive_data(bytes([b])) for b in client.start())
    assert any(isinstance(e, Accepted) for e in events(client, out))


def test_storage_classes_are_accepted_in_little_endian_and_others_rejected() -> None:
    _, ac = started(
        (1, CT, (JPEG, EXPLICIT, IMPLICIT)),  # the proposer's first syntax taken here
        (3, CT, (IMPLICIT,)),
        (5, CT, (JPEG,)),
        (7, FIND, (IMPLICIT,)),
        (9, "1.2.840.10008.1.1", (IMPLICIT,)),
    )
    assert results(ac) == {
        1: (0, EXPLICIT),
        3: (0, IMPLICIT),
        5: (4, IMPLICIT),  # transfer-syntaxes-not-supported
        7: (3, IMPLICIT),  # abstract-syntax-not-supported
        9: (0, IMPLICIT),
    }
    assert associate_ac(associate((1, CT, (EXPLICIT,)))[6:])[1] == {1: CT}


def test_a_c_store_in_fragments_across_pdus_is_answered_with_success() -> None:
    scp, _ = started((1, CT, (EXPLICIT,)))
    command = store_rq(7, "2.25.42")
    data = bytes(100_000)
    # The command in two fragments, the data set in 16 kB PDUs, the last one flagged last.
    sent = _pdu(0x04, pdv(1, 0x01, command[:20])) + _pdu(0x04, pdv(1, 0x03, command[20:]))
    chunks = [data[i : i + 16000] for i in range(0, len(data), 16000)]
    for i, chunk in enumerate(chunks):
        sent += _pdu(0x04, pdv(1, 0x02 if i == len(chunks) - 1 else 0x00, chunk))
    answer = b"".join(scp.receive_data(sent[i : i + 4096]) for i in range(0, len(sent), 4096))
    assert answer[0] == 0x04 and answer[10:12] == b"\x01\x03"  # P-DATA-TF, a whole command
    rsp = _command_elements(answer[12:])
    assert rsp[0x0100] == struct.pack("<H", 0x8001)  # C-STORE-RSP
    assert rsp[0x0120] == struct.pack("<H", 7) and rsp[0x0900] == bytes(2)  # Success
    assert rsp[0x0002].rstrip(b"\0").decode() == CT and rsp[0x1000] == b"2.25.42\0"
    assert (scp.stored, scp.bytes_stored) == (1, len(data))
    assert scp.receive_data(release_rq()) == bytes.fromhex("060000000004") + bytes(4)


def test_peers_that_lie_or_break_the_order_get_a_abort() -> None:
    command = store_rq(1, "2.25.1")
    cases = {
        "pdv longer than its pdu": _pdu(0x04, struct.pack(">IBB", 9999, 1, 3) + command),
        "pdv length under 2": _pdu(0x04, struct.pack(">IBB", 1, 1, 3)),
        "truncated pdv header": _pdu(0x04, b"\0\0"),
        "unaccepted context": _pdu(0x04, pdv(3, 0x03, command)),
        "data without a command": _pdu(0x04, pdv(1, 0x02, b"data")),
        "command inside a data set": _pdu(0x04, pdv(1, 0x03, command) + pdv(1, 0x03, command)),
        "another class on the context": _pdu(0x04, pdv(1, 0x03, store_rq(1, "2.25.1", FIND))),
        "endless command": b"".join(_pdu(0x04, pdv(1, 0x01, bytes(8000))) for _ in range(3)),
        "pdu over the limit": b"\x04\x00" + (1 << 20).to_bytes(4, "big"),
    }
    for what, sent in cases.items():
        scp, _ = started((1, CT, (EXPLICIT,)))
        assert scp.receive_data(sent).endswith(ABORT), what
        assert scp.done and scp.stored == 0, what


def test_garbage_is_aborted() -> None:
    scp = ScpResponder()
    assert scp.receive_data(b"GET / HTTP/1.1\r\n\r\n") == ABORT
    assert scp.done
