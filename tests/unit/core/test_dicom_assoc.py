"""The l7-dicom proxy's view of an association: A-ASSOCIATE-RQ parsing, the called AE rewrite,
A-ASSOCIATE-RJ / A-ABORT bytes, and the PDU boundary tracker (PS3.8 §9.3)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacslb.core.dicom import PduReader, associate_rq
from pacslb.core.dicom_assoc import (
    ABORT_INVALID_PARAMETER,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU,
    REJECT_CALLED_AE_UNKNOWN,
    REJECT_NO_SERVER,
    REJECT_TOO_LARGE,
    REJECT_VERSION,
    AssociateRqError,
    PduTracker,
    called_ae,
    parse_associate_rq,
    rewrite_called_ae,
    rq_length,
)

CT = b"1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"


# An encoder written from PS3.8 Tables 9-11..9-16, independent of the code under test.
def item(kind: int, value: bytes) -> bytes:
    return bytes([kind, 0]) + len(value).to_bytes(2, "big") + value


def request(
    called: bytes = b"ARCHIVE",
    calling: bytes = b"MODALITY",
    contexts: int = 3,
    max_pdu: int = 16384,
    version: int = 1,
) -> bytes:
    body = version.to_bytes(2, "big") + b"\0\0" + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for n in range(contexts):
        subs = item(0x30, CT) + item(0x40, EXPLICIT_LE) + item(0x40, IMPLICIT_LE + b"\0")
        body += item(0x20, bytes([2 * n + 1, 0, 0, 0]) + subs)
    body += item(0x50, item(0x51, max_pdu.to_bytes(4, "big")) + item(0x52, b"1.2.3.4"))
    return b"\x01\x00" + len(body).to_bytes(4, "big") + body


def test_parse_reads_every_field() -> None:
    rq = parse_associate_rq(request(contexts=128))
    assert (rq.called_ae, rq.calling_ae, rq.version) == ("ARCHIVE", "MODALITY", 1)
    assert rq.application_context == "1.2.840.10008.3.1.1.1"
    assert len(rq.presentation_contexts) == 128
    first = rq.presentation_contexts[0]
    assert (first.id, first.abstract_syntax) == (1, CT.decode())
    assert first.transfer_syntaxes == (EXPLICIT_LE.decode(), IMPLICIT_LE.decode())
    assert rq.presentation_contexts[-1].id == 255
    assert rq.max_pdu_length == 16384
    assert rq.length == len(request(contexts=128))


def test_parse_reads_the_probes_own_request() -> None:
    """core/dicom.py's C-ECHO request (a second encoder) parses to what it was built from."""
    rq = parse_associate_rq(associate_rq("PACS1", "PACSLB_CHECK", 32768))
    assert (rq.called_ae, rq.calling_ae, rq.max_pdu_length) == ("PACS1", "PACSLB_CHECK", 32768)
    assert rq.presentation_contexts[0].abstract_syntax == "1.2.840.10008.1.1"


def test_rq_length_judges_the_header_alone() -> None:
    data = request()
    assert rq_length(b"", 65536) == 0
    assert rq_length(data[:3], 65536) == 0  # a good first byte: wait for the rest
    assert rq_length(data[:6], 65536) == len(data)
    with pytest.raises(AssociateRqError) as caught:
        rq_length(b"\x01\x00\x00\x10\x00\x00", 65536)  # declares 1 MiB
    assert caught.value.kind == "oversized" and caught.value.answer == REJECT_TOO_LARGE
    assert "1048582 bytes exceeds dicom.max_request (65536)" in str(caught.value)


@pytest.mark.parametrize(
    ("first", "answer"),
    [
        (b"GET / HTTP/1.1\r\n", ABORT_UNRECOGNIZED_PDU),
        (b"\x16\x03\x01\x02\x00", ABORT_UNRECOGNIZED_PDU),  # a TLS ClientHello
        (b"\x04\x00\x00\x00\x00\x10", ABORT_UNEXPECTED_PDU),  # P-DATA-TF before any association
        (b"\x07", ABORT_UNEXPECTED_PDU),
    ],
)
def test_wrong_first_pdu_is_refused_from_its_first_byte(first: bytes, answer: object) -> None:
    with pytest.raises(AssociateRqError) as caught:
        rq_length(first, 65536)
    assert caught.value.kind == "not-associate-rq"
    assert caught.value.answer == answer


def test_truncated_and_lying_lengths() -> None:
    data = request()
    with pytest.raises(AssociateRqError, match="truncated: 100 of") as caught:
        parse_associate_rq(data[:100])
    assert caught.value.kind == "truncated"
    # The PDU says it is shorter than its items: the last item runs past the PDU's end.
    short = data[:2] + (len(data) - 6 - 10).to_bytes(4, "big") + data[6:-10]
    with pytest.raises(AssociateRqError, match="declares") as caught:
        parse_associate_rq(short)
    assert caught.value.kind == "bad-item" and caught.value.answer == ABORT_INVALID_PARAMETER
    # A length below the fixed part.
    with pytest.raises(AssociateRqError, match="less than its fixed 68-byte part"):
        rq_length(b"\x01\x00\x00\x00\x00\x10", 65536)
    # More bytes than declared before the answer.
    with pytest.raises(AssociateRqError, match="came before the answer"):
        parse_associate_rq(data + b"\x04")


def test_item_overruns_and_missing_items() -> None:
    data = bytearray(request(contexts=1))
    data[74 + 2 : 74 + 4] = (0xFFFF).to_bytes(2, "big")  # application context item lies
    with pytest.raises(AssociateRqError, match="item 0x10 in the variable items declares 65535"):
        parse_associate_rq(bytes(data))
    no_context = request(contexts=0)
    with pytest.raises(AssociateRqError, match="no presentation context"):
        parse_associate_rq(no_context)
    with pytest.raises(AssociateRqError, match="empty called AE"):
        parse_associate_rq(request(called=b""))
    with pytest.raises(AssociateRqError) as caught:
        parse_associate_rq(request(version=2))
    assert caught.value.answer == REJECT_VERSION


def test_routing_only_parse_checks_every_item_but_reads_no_context() -> None:
    """The proxy's parse (contexts=False): the same titles, lengths and refusals of the
    PDU's items, without decoding the contexts' sub-items (90 % of a full parse)."""
    data = request(contexts=128)
    full, lean = parse_associate_rq(data), parse_associate_rq(data, contexts=False)
    assert len(full.presentation_contexts) == 128 and lean.presentation_contexts == ()
    assert (lean.called_ae, lean.calling_ae, lean.application_context) == (
        full.called_ae,
        full.calling_ae,
        full.application_context,
    )
    assert (lean.max_pdu_length, lean.length) == (full.max_pdu_length, full.length)
    with pytest.raises(AssociateRqError, match="no presentation context"):
        parse_associate_rq(request(contexts=0), contexts=False)
    lying = bytearray(data)
    lying[74 + 2 : 74 + 4] = (0xFFFF).to_bytes(2, "big")  # application context item lies
    with pytest.raises(AssociateRqError, match="item 0x10 in the variable items declares"):
        parse_associate_rq(bytes(lying), contexts=False)
    # A context's sub-item that lies is the archive's to judge: only the full parse sees it.
    bad_sub = bytearray(request(contexts=1))
    first = bad_sub.index(b"\x30\x00")
    bad_sub[first + 2 : first + 4] = (0x7FFF).to_bytes(2, "big")
    with pytest.raises(AssociateRqError, match="in a presentation context declares"):
        parse_associate_rq(bytes(bad_sub))
    assert parse_associate_rq(bytes(bad_sub), contexts=False).length == len(bad_sub)


def test_rewrite_called_ae_keeps_every_length() -> None:
    data = request(called=b"VIP_AE", contexts=5)
    out = rewrite_called_ae(data, "ARCHIVE_NODE_02")
    assert len(out) == len(data)
    assert out[2:6] == data[2:6]  # the PDU length field is unchanged and still right
    assert int.from_bytes(out[2:6], "big") == len(out) - 6
    assert out[10:26] == b"ARCHIVE_NODE_02 "
    assert out[:10] == data[:10] and out[26:] == data[26:]
    rq = parse_associate_rq(out)
    assert (rq.called_ae, rq.calling_ae) == ("ARCHIVE_NODE_02", "MODALITY")
    assert called_ae(out[:74]) == "ARCHIVE_NODE_02"
    # A whole PDU reader (the probe's framing) agrees on the length.
    reader = PduReader()
    reader.receive_data(out)
    pdu = reader.next_pdu()
    assert pdu is not None and len(pdu.payload) == len(out) - 6 and reader.pending == 0
    with pytest.raises(ValueError):
        rewrite_called_ae(data, "SEVENTEEN_CHARS_X")


def test_reject_and_abort_bytes() -> None:
    # PS3.8 §9.3.4: 03 00 00000004 00 result source reason
    assert REJECT_CALLED_AE_UNKNOWN.pdu() == bytes.fromhex("03000000000400010107")
    assert REJECT_NO_SERVER.pdu() == bytes.fromhex("03000000000400020301")
    assert REJECT_CALLED_AE_UNKNOWN.text == (
        "permanent, service-user: called-AE-title-not-recognized"
    )
    assert REJECT_NO_SERVER.text == "transient, service-provider-presentation: temporary-congestion"
    assert REJECT_TOO_LARGE.text.endswith("local-limit-exceeded")
    # PS3.8 §9.3.8: 07 00 00000004 00 00 source reason; the proxy is service-provider (2).
    assert ABORT_INVALID_PARAMETER.pdu() == bytes.fromhex("07000000000400000206")


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


STREAM = (
    pdu(0x04, b"\0" * 40)
    + pdu(0x04, b"\1" * 16378)
    + pdu(0x05, b"\0" * 4)
    + pdu(0x06, b"\0" * 4)
    + pdu(0x07, b"\0" * 4)
)


def test_tracker_feed_counts_pdus_across_any_split() -> None:
    for cut in (1, 3, 5, 6, 7, 46, 47, 52, 1000):
        tracker = PduTracker()
        for start in range(0, len(STREAM), cut):
            tracker.feed(STREAM[start : start + cut])
        assert (tracker.pdus, tracker.p_data, tracker.releases, tracker.release_rps) == (
            5,
            2,
            1,
            1,
        )
        assert tracker.aborts == 1 and tracker.last == 0x07 and tracker.at_boundary


def test_tracker_splice_style() -> None:
    """The splice relay peeks a header at each boundary and moves up to its end."""
    tracker = PduTracker()
    offset = 0
    while offset < len(STREAM):
        assert tracker.need == 0
        total = tracker.header(STREAM[offset : offset + 6])
        for step in (7, 1 << 20):  # a short move, then the rest
            moved = min(step, tracker.need)
            tracker.advance(moved)
            offset += moved
        assert tracker.at_boundary and offset <= len(STREAM)
        assert total >= 10
    assert tracker.pdus == 5 and tracker.p_data == 2
    tracker.header(pdu(0x04, b"xx"))
    with pytest.raises(ValueError):
        tracker.advance(9)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=300))
def test_fuzz_parser_raises_only_its_own_error(data: bytes, limit: int) -> None:
    for candidate in (data, b"\x01\x00" + len(data).to_bytes(4, "big") + data):
        try:
            rq = parse_associate_rq(candidate, max(limit, 74))
        except AssociateRqError as exc:
            assert exc.kind and str(exc)
        else:
            assert rq.length == len(candidate)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_requests(where: int, junk: bytes) -> None:
    base = request(contexts=2)
    where %= len(base)
    mutated = base[:where] + junk + base[where + len(junk) :]
    try:
        rq = parse_associate_rq(mutated)
    except AssociateRqError:
        return
    assert rq.length == len(mutated)
