"""DICOM upper layer for the C-ECHO probe: PDU bytes (PS3.8 §9.3) and the client state machine."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacslb.core.dicom import (
    IMPLEMENTATION_CLASS_UID,
    Aborted,
    Accepted,
    ContextRejected,
    EchoClient,
    EchoResponse,
    Pdu,
    PduReader,
    PeerClosed,
    Rejected,
    Released,
    State,
    abort_pdu,
    associate_rq,
    c_echo_rq,
    release_rq,
)
from pacslb.errors import ProtocolError

VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"


# Independent encoders for what a peer sends, written from the PS3.8 tables.
def item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + len(value).to_bytes(2, "big") + value


def pdu(pdu_type: int, payload: bytes) -> bytes:
    return bytes([pdu_type, 0]) + len(payload).to_bytes(4, "big") + payload


def ac(result: int = 0, context_id: int = 1, ts: bytes = IMPLICIT_LE) -> bytes:
    fixed = b"\x00\x01\x00\x00" + b"PACS1".ljust(16) + b"PACSLB_CHECK".ljust(16) + bytes(32)
    context = item(0x21, bytes([context_id, 0, result, 0]) + item(0x40, ts))
    user = item(0x50, item(0x51, (16384).to_bytes(4, "big")) + item(0x52, b"1.2.3"))
    return pdu(0x02, fixed + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)


def element(tag_element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, tag_element, len(value)) + value


def rsp_command(message_id: int = 1, status: int = 0, field: int = 0x8030) -> bytes:
    body = (
        element(0x0002, VERIFICATION + b"\0")
        + element(0x0100, field.to_bytes(2, "little"))
        + element(0x0120, message_id.to_bytes(2, "little"))
        + element(0x0800, (0x0101).to_bytes(2, "little"))
        + element(0x0900, status.to_bytes(2, "little"))
    )
    return element(0x0000, len(body).to_bytes(4, "little")) + body


def pdv(data: bytes, header: int = 0x03, context_id: int = 1) -> bytes:
    return (len(data) + 2).to_bytes(4, "big") + bytes([context_id, header]) + data


def rsp(message_id: int = 1, status: int = 0) -> bytes:
    return pdu(0x04, pdv(rsp_command(message_id, status)))


RELEASE_RP = bytes.fromhex("060000000004 00000000")


def associated() -> EchoClient:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(ac())
    assert client.next_event() == Accepted()
    return client


def events(client: EchoClient) -> list[object]:
    out: list[object] = []
    for _ in range(10):  # bounded: a test stream never holds more events than this
        event = client.next_event()
        if event is None:
            break
        out.append(event)
    return out


# A-ASSOCIATE-RQ ------------------------------------------------------------------------------


def parse_items(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        out.append((data[offset], data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    assert offset == len(data), "item lengths must add up to the PDU length"
    return out


def test_associate_rq_fixed_part_per_ps3_8_9_3_2() -> None:
    rq = associate_rq("PACS1", "PACSLB_CHECK")
    assert rq[0] == 0x01 and rq[1] == 0
    assert int.from_bytes(rq[2:6], "big") == len(rq) - 6
    assert rq[6:8] == b"\x00\x01"  # protocol version
    assert rq[8:10] == b"\x00\x00"
    assert rq[10:26] == b"PACS1           "
    assert rq[26:42] == b"PACSLB_CHECK    "
    assert rq[42:74] == bytes(32)


def test_associate_rq_items() -> None:
    rq = associate_rq("PACS1", "PACSLB_CHECK")
    items = parse_items(rq[74:])
    assert [t for t, _ in items] == [0x10, 0x20, 0x50]
    assert items[0][1] == b"1.2.840.10008.3.1.1.1"
    context = items[1][1]
    assert context[:4] == b"\x01\x00\x00\x00"  # presentation context id 1
    assert parse_items(context[4:]) == [(0x30, VERIFICATION), (0x40, IMPLICIT_LE)]
    user = dict(parse_items(items[2][1]))
    assert user[0x51] == (16384).to_bytes(4, "big")
    assert user[0x52] == IMPLEMENTATION_CLASS_UID.encode()
    assert user[0x55] == b"PACSLB_01"


def test_implementation_class_uid_is_a_valid_2_25_uid() -> None:
    uid = IMPLEMENTATION_CLASS_UID
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert all(
        part.isdigit() and (part == "0" or not part.startswith("0")) for part in uid.split(".")
    )


def test_sixteen_character_ae_titles_fill_the_field() -> None:
    rq = associate_rq("A" * 16, "B" * 16)
    assert rq[10:42] == b"A" * 16 + b"B" * 16


@pytest.mark.parametrize("title", ["", "   ", "A" * 17, "BAD\\AE", "TAB\tAE", "ÄE"])
def test_bad_ae_titles_are_refused(title: str) -> None:
    with pytest.raises(ValueError, match="AE title"):
        EchoClient(title, "PACSLB_CHECK")


# Fixed PDUs ------------------------------------------------------------------------------


def test_release_and_abort_bytes() -> None:
    assert release_rq() == bytes.fromhex("05 00 00000004 00000000")
    assert abort_pdu() == bytes.fromhex("07 00 00000004 00 00 00 00")  # source 0: service-user
    assert abort_pdu(source=2) == bytes.fromhex("07 00 00000004 00 00 02 00")


def test_c_echo_rq_command_set() -> None:
    data = c_echo_rq(7)
    assert data[0] == 0x04 and int.from_bytes(data[2:6], "big") == len(data) - 6
    pdv_length = int.from_bytes(data[6:10], "big")
    assert pdv_length == len(data) - 10
    assert data[10:12] == b"\x01\x03"  # context 1; command, last fragment
    command = data[12:]
    expected_body = (
        element(0x0002, VERIFICATION + b"\0")  # 17 characters padded to 18
        + element(0x0100, b"\x30\x00")
        + element(0x0110, b"\x07\x00")
        + element(0x0800, b"\x01\x01")
    )
    assert command == element(0x0000, struct.pack("<I", 56)) + expected_body
    assert len(expected_body) == 56


def test_message_ids_count_up() -> None:
    client = associated()
    first = client.echo_request()
    client.receive_data(rsp(1))
    assert client.next_event() == EchoResponse(0, 1)
    second = client.echo_request()
    assert first[-14:] != second[-14:]
    client.receive_data(rsp(2, status=0x0110))
    assert client.next_event() == EchoResponse(0x0110, 2)


# Association answers ------------------------------------------------------------------------


def test_full_conversation() -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    assert client.next_event() is None
    assert client.start()[0] == 0x01
    assert client.waiting_for == "A-ASSOCIATE-AC"
    client.receive_data(ac())
    assert client.next_event() == Accepted()
    client.echo_request()
    assert client.waiting_for == "C-ECHO-RSP"
    client.receive_data(rsp())
    assert client.next_event() == EchoResponse(status=0, message_id=1)
    assert client.release_request() == release_rq()
    client.receive_data(RELEASE_RP)
    assert client.next_event() == Released()
    assert client.state is State.CLOSED


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (1, "user-rejection"),
        (2, "no-reason"),
        (3, "abstract-syntax-not-supported"),
        (4, "transfer-syntaxes-not-supported"),
    ],
)
def test_presentation_context_rejected(result: int, text: str) -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(ac(result=result))
    assert client.next_event() == ContextRejected(result, text)


def test_ac_without_our_context_is_a_protocol_error() -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(ac(context_id=3))
    with pytest.raises(ProtocolError, match="presentation context 1"):
        client.next_event()


def test_ac_with_another_transfer_syntax_is_a_protocol_error() -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(ac(ts=b"1.2.840.10008.1.2.1"))
    with pytest.raises(ProtocolError, match="transfer syntax"):
        client.next_event()


@pytest.mark.parametrize(
    ("rj", "text"),
    [
        ((1, 1, 7), "permanent, service-user: called-AE-title-not-recognized"),
        ((1, 1, 3), "permanent, service-user: calling-AE-title-not-recognized"),
        ((1, 1, 2), "permanent, service-user: application-context-name-not-supported"),
        ((1, 1, 1), "permanent, service-user: no-reason-given"),
        ((1, 2, 2), "permanent, service-provider-ACSE: protocol-version-not-supported"),
        ((2, 3, 1), "transient, service-provider-presentation: temporary-congestion"),
        ((2, 3, 2), "transient, service-provider-presentation: local-limit-exceeded"),
        ((2, 1, 9), "transient, service-user: reason 9"),
    ],
)
def test_associate_rj(rj: tuple[int, int, int], text: str) -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(pdu(0x03, bytes([0, *rj])))
    assert client.next_event() == Rejected(*rj, text)
    assert client.state is State.CLOSED


@pytest.mark.parametrize(
    ("source", "reason", "text"),
    [
        (0, 0, "service-user"),
        (2, 0, "service-provider: reason-not-specified"),
        (2, 2, "service-provider: unexpected-PDU"),
        (2, 6, "service-provider: invalid-PDU-parameter-value"),
    ],
)
def test_abort_in_any_state(source: int, reason: int, text: str) -> None:
    waiting = EchoClient("PACS1", "PACSLB_CHECK")
    waiting.start()
    echoing = associated()
    echoing.echo_request()
    for client in (waiting, echoing):
        client.receive_data(pdu(0x07, bytes([0, 0, source, reason])))
        assert client.next_event() == Aborted(source, reason, text)
        assert client.state is State.CLOSED


def test_peer_close_names_what_we_waited_for() -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(ac()[:20])
    client.receive_data(b"")
    assert client.next_event() == PeerClosed("A-ASSOCIATE-AC")
    assert client.next_event() is None

    client = associated()
    client.echo_request()
    client.receive_data(b"")
    assert client.next_event() == PeerClosed("C-ECHO-RSP")


def test_abort_returns_bytes_and_closes() -> None:
    client = associated()
    assert client.abort() == abort_pdu(0)
    assert client.state is State.CLOSED


def test_calls_out_of_order_are_programming_errors() -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    with pytest.raises(RuntimeError):
        client.echo_request()
    client.start()
    with pytest.raises(RuntimeError):
        client.start()
    with pytest.raises(RuntimeError):
        client.release_request()


# Fragmentation -----------------------------------------------------------------------------


def test_whole_exchange_one_byte_at_a_time() -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    seen: list[object] = []
    stream = ac()
    for i in range(len(stream)):
        client.receive_data(stream[i : i + 1])
        seen += events(client)
    assert seen == [Accepted()]
    client.echo_request()
    stream = rsp(1, 0x0000)
    for i in range(len(stream)):
        client.receive_data(stream[i : i + 1])
        seen += events(client)
    assert seen == [Accepted(), EchoResponse(0, 1)]


def test_command_reassembled_across_pdvs_and_pdus() -> None:
    command = rsp_command(1, status=0x0122)
    a, b, c = command[:5], command[5:30], command[30:]
    client = associated()
    client.echo_request()
    # Two PDVs in the first PDU, the last fragment in a second PDU (PS3.8 Annex E).
    client.receive_data(pdu(0x04, pdv(a, 0x01) + pdv(b, 0x01)))
    assert client.next_event() is None
    client.receive_data(pdu(0x04, pdv(c, 0x03)))
    assert client.next_event() == EchoResponse(0x0122, 1)


@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    stream = ac()
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    seen: list[object] = []
    for start, end in itertools.pairwise(bounds):
        if end > start:  # b"" would mean end of stream
            client.receive_data(stream[start:end])
        seen += events(client)
    assert seen == [Accepted()]


def test_reader_splits_pdus_arriving_together() -> None:
    reader = PduReader()
    reader.receive_data(RELEASE_RP + abort_pdu(2, 1) + b"\x06")
    assert reader.next_pdu() == Pdu(0x06, bytes(4))
    assert reader.next_pdu() == Pdu(0x07, b"\x00\x00\x02\x01")
    assert reader.next_pdu() is None
    assert reader.pending == 1


# Garbage -------------------------------------------------------------------------------------


def test_http_answer_is_not_dicom() -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ProtocolError, match=r"^not DICOM: unexpected bytes 'HTTP/1\.1 400 Bad Re"):
        client.next_event()


def test_tls_alert_is_not_dicom() -> None:
    reader = PduReader()
    reader.receive_data(b"\x15\x03\x03\x00\x02\x02\x46")
    with pytest.raises(ProtocolError, match=r"unexpected bytes '\\x15\\x03"):
        reader.next_pdu()


def test_absurd_length_is_refused_before_buffering_it() -> None:
    reader = PduReader(max_pdu_length=65536)
    reader.receive_data(b"\x04\x00\x7f\xff\xff\xff")
    with pytest.raises(ProtocolError, match="exceeds the 65536 byte limit"):
        reader.next_pdu()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pdu(0x03, b"\x00\x01\x01"), "bad A-ASSOCIATE-RJ"),
        (pdu(0x07, b"\x00\x00\x02\x00\x00"), "bad A-ABORT"),
        (pdu(0x02, bytes(10)), "bad A-ASSOCIATE-AC"),
        (pdu(0x02, ac()[6:] + b"\x50\x00\x00\xff"), "bad A-ASSOCIATE-AC: item 0x50 runs past"),
        (pdu(0x04, pdv(rsp_command())), "unexpected P-DATA-TF while waiting for A-ASSOCIATE-AC"),
        (pdu(0x01, bytes(68)), "unexpected A-ASSOCIATE-RQ"),
        (RELEASE_RP, "unexpected A-RELEASE-RP"),
    ],
)
def test_bad_answers_to_the_rq(data: bytes, match: str) -> None:
    client = EchoClient("PACS1", "PACSLB_CHECK")
    client.start()
    client.receive_data(data)
    with pytest.raises(ProtocolError, match=match):
        client.next_event()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (rsp(message_id=2), "answers message 2"),
        (pdu(0x04, pdv(rsp_command(field=0x8001))), "CommandField 0x8001"),
        (pdu(0x04, pdv(rsp_command(), context_id=3)), "presentation context 3"),
        (pdu(0x04, pdv(rsp_command()[:-2])), "bad command set"),
        (pdu(0x04, b"\x00\x00\x00\x01\x01"), "truncated PDV"),
        (pdu(0x04, pdv(element(0x0100, b"\x30\x80"))), r"\(0000,0120\) missing"),
        (ac(), "unexpected A-ASSOCIATE-AC while waiting for C-ECHO-RSP"),
    ],
)
def test_bad_c_echo_rsp(data: bytes, match: str) -> None:
    client = associated()
    client.echo_request()
    client.receive_data(data)
    with pytest.raises(ProtocolError, match=match):
        client.next_event()
