"""What the `l7-dicom` proxy reads of an association, sans-I/O (PS3.8 §9.3).

Three jobs, each on bytes alone:

- `rq_length()` judges an A-ASSOCIATE-RQ from its 6-byte PDU header (type, size limit), so an
  oversized request is refused before a byte of its body is read; `parse_associate_rq()` then
  reads the whole PDU (PS3.8 §9.3.2: version, called/calling AE, application context,
  presentation contexts, user information with the maximum PDU length).
- `rewrite_called_ae()` writes another called AE title into the fixed 16-byte field, so every
  length field of the PDU stays right; `associate_rj()` and `abort_pdu()` build the answers.
- `PduTracker` follows PDU boundaries in a relayed byte stream from the 6-byte headers alone
  (type, reserved, 4-byte length; PS3.8 §9.3.1), counting P-DATA-TF PDUs and noticing
  A-RELEASE-RQ/RP and A-ABORT, without looking inside a PDU.

Everything that is wrong with a request raises `AssociateRqError`, whose `answer` says which
PDU the client gets (A-ASSOCIATE-RJ or A-ABORT, with the PS3.8 result/source/reason).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pacslb.core.dicom import (
    A_ABORT,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PDU_NAMES,
    REJECT_REASONS,
    REJECT_RESULTS,
    REJECT_SOURCES,
    abort_pdu,
)
from pacslb.errors import ProtocolError

__all__ = [
    "ABORT_INVALID_PARAMETER",
    "ABORT_NOT_SPECIFIED",
    "ABORT_UNEXPECTED_PDU",
    "ABORT_UNRECOGNIZED_PDU",
    "FIXED_PART",
    "HEADER",
    "REJECT_CALLED_AE_UNKNOWN",
    "REJECT_NO_SERVER",
    "REJECT_TOO_LARGE",
    "REJECT_VERSION",
    "Abort",
    "AssociateRequest",
    "AssociateRqError",
    "PduTracker",
    "PresentationContext",
    "Reject",
    "abort_pdu",
    "associate_rj",
    "called_ae",
    "parse_associate_rq",
    "rewrite_called_ae",
    "rq_length",
]

HEADER = 6  # PDU type, reserved, 4-byte length (PS3.8 §9.3.1)
# PDU header (6) + version (2) + reserved (2) + called AE (16) + calling AE (16) + reserved
# (32): the items start here (PS3.8 §9.3.2 Table 9-11); routing needs only these bytes.
FIXED_PART = 74
_CALLED_AE = slice(10, 26)
_CALLING_AE = slice(26, 42)


@dataclass(frozen=True, slots=True)
class Reject:
    """An A-ASSOCIATE-RJ (PS3.8 §9.3.4 Table 9-21)."""

    result: int  # 1 permanent, 2 transient
    source: int  # 1 service-user, 2 provider (ACSE), 3 provider (presentation)
    reason: int

    @property
    def text(self) -> str:
        why = REJECT_REASONS.get(self.source, {}).get(self.reason, f"reason {self.reason}")
        result = REJECT_RESULTS.get(self.result, f"result {self.result}")
        return f"{result}, {REJECT_SOURCES.get(self.source, f'source {self.source}')}: {why}"

    def pdu(self) -> bytes:
        return associate_rj(self.result, self.source, self.reason)


@dataclass(frozen=True, slots=True)
class Abort:
    """An A-ABORT from the proxy as service-provider (PS3.8 §9.3.8 Table 9-26: source 2)."""

    reason: int

    @property
    def text(self) -> str:
        return {0: "reason-not-specified", 1: "unrecognized-PDU", 2: "unexpected-PDU"}.get(
            self.reason, "invalid-PDU-parameter-value" if self.reason == 6 else str(self.reason)
        )

    def pdu(self) -> bytes:
        return abort_pdu(source=2, reason=self.reason)


# The answers the proxy gives, chosen from PS3.8 Table 9-21 (RJ) and Table 9-26 (A-ABORT):
# - a called AE no route names: the called application is not known here, for good
#   (permanent, service-user, called-AE-title-not-recognized), as an archive answers it;
REJECT_CALLED_AE_UNKNOWN = Reject(1, 1, 7)
# - no real server can take it now (all down, drained, halted or full): a retry later may
#   succeed, and no DICOM application has refused it, so transient and from the presentation
#   service-provider, reason 1 temporary-congestion (reason 2 local-limit-exceeded names a
#   limit of the provider itself, which REJECT_TOO_LARGE uses);
REJECT_NO_SERVER = Reject(2, 3, 1)
# - a request past `dicom.max_request`: our own limit, and the same request will always
#   exceed it: permanent, presentation service-provider, local-limit-exceeded;
REJECT_TOO_LARGE = Reject(1, 3, 2)
# - a protocol version without bit 0 set (§9.3.2: "bit 0 set ... version 1"):
#   permanent, ACSE service-provider, protocol-version-not-supported.
REJECT_VERSION = Reject(1, 2, 2)
# A request that is not a well-formed A-ASSOCIATE-RQ gets an A-ABORT (the state machine of
# PS3.8 §9.2.3, action AA-1/AA-8 for an invalid or unrecognised PDU in Sta2):
ABORT_NOT_SPECIFIED = Abort(0)  # no request within dicom.request_timeout, or a halt
ABORT_UNRECOGNIZED_PDU = Abort(1)  # a first byte that is no PDU type at all (HTTP, TLS...)
ABORT_UNEXPECTED_PDU = Abort(2)  # a PDU type, but not A-ASSOCIATE-RQ
ABORT_INVALID_PARAMETER = Abort(6)  # length fields that lie, items past their end


class AssociateRqError(ProtocolError):
    """The client's A-ASSOCIATE-RQ is not one the proxy forwards.

    `kind` names the fault for events and counters (truncated, not-associate-rq,
    oversized, bad-length, bad-item, bad-version, bad-ae); `answer` is what the client gets.
    """

    def __init__(self, kind: str, message: str, answer: Reject | Abort) -> None:
        super().__init__(message)
        self.kind = kind
        self.answer = answer


@dataclass(frozen=True, slots=True)
class PresentationContext:
    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    """An A-ASSOCIATE-RQ as parsed; `length` is the whole PDU's byte count, header included."""

    version: int
    called_ae: str
    calling_ae: str
    application_context: str
    presentation_contexts: tuple[PresentationContext, ...]  # () when not read (contexts=False)
    max_pdu_length: int | None  # user information sub-item 0x51 (Annex D.1); 0 = unlimited
    length: int


def rq_length(header: bytes | bytearray | memoryview, max_request: int) -> int:
    """The whole PDU's length (header included) from its first bytes, or AssociateRqError.

    Takes 1 to 6 bytes: a first byte that is not A-ASSOCIATE-RQ is refused at once (an HTTP or
    TLS client is known by its first segment); with all six, a declared length above
    `max_request` is refused before any of the body is read. Fewer than six good bytes: 0."""
    if not header:
        return 0
    kind = header[0]
    if kind != A_ASSOCIATE_RQ:
        if kind in PDU_NAMES:
            raise AssociateRqError(
                "not-associate-rq",
                f"the first PDU is {PDU_NAMES[kind]}, not A-ASSOCIATE-RQ",
                ABORT_UNEXPECTED_PDU,
            )
        raise AssociateRqError(
            "not-associate-rq",
            f"not DICOM: first byte 0x{kind:02x} is no PDU type",
            ABORT_UNRECOGNIZED_PDU,
        )
    if len(header) < HEADER:
        return 0
    total = HEADER + int.from_bytes(header[2:6], "big")
    if total > max_request:
        raise AssociateRqError(
            "oversized",
            f"A-ASSOCIATE-RQ of {total} bytes exceeds dicom.max_request ({max_request})",
            REJECT_TOO_LARGE,
        )
    if total < FIXED_PART:
        raise AssociateRqError(
            "bad-length",
            f"A-ASSOCIATE-RQ declares {total - HEADER} bytes, less than its fixed "
            f"{FIXED_PART - HEADER}-byte part",
            ABORT_INVALID_PARAMETER,
        )
    return total


def _text(value: bytes, what: str) -> str:
    # UIDs are NUL-padded to even length (PS3.5 §9.1), AE titles space-padded (PS3.8 §9.3.2).
    try:
        return value.decode("ascii").rstrip("\0 ").lstrip(" ")
    except UnicodeDecodeError:
        raise AssociateRqError(
            "bad-item", f"A-ASSOCIATE-RQ: {what} is not ASCII", ABORT_INVALID_PARAMETER
        ) from None


def _items(data: bytes, start: int, end: int, where: str) -> list[tuple[int, int, int]]:
    """(type, value start, value end) of each item in data[start:end] (PS3.8 §9.3.2.x)."""
    out: list[tuple[int, int, int]] = []
    offset = start
    append = out.append
    while offset < end:
        value = offset + 4
        if value > end:
            raise AssociateRqError(
                "bad-item",
                f"A-ASSOCIATE-RQ: truncated item header in {where}",
                ABORT_INVALID_PARAMETER,
            )
        stop = value + ((data[offset + 2] << 8) | data[offset + 3])
        if stop > end:
            raise AssociateRqError(
                "bad-item",
                f"A-ASSOCIATE-RQ: item 0x{data[offset]:02x} in {where} declares "
                f"{stop - value} bytes, {end - value} are left",
                ABORT_INVALID_PARAMETER,
            )
        append((data[offset], value, stop))
        offset = stop
    return out


def parse_associate_rq(
    data: bytes, max_request: int = 1 << 20, contexts: bool = True
) -> AssociateRequest:
    """Parse one whole A-ASSOCIATE-RQ PDU (exactly its bytes) or raise AssociateRqError.

    `contexts=False` (the proxy): every item's bounds are checked and at least one
    presentation context must be there, but the contexts' sub-items are not read (so
    `presentation_contexts` is empty). Routing needs only the fixed part, the archive judges
    the contexts, and reading them was 90 % of the parse (storescu sends 128)."""
    total = rq_length(data[:HEADER], max_request)
    if total == 0 or len(data) < total:
        got = len(data)
        raise AssociateRqError(
            "truncated",
            f"A-ASSOCIATE-RQ truncated: {got} of {total or '6+'} bytes",
            ABORT_INVALID_PARAMETER,
        )
    if len(data) > total:
        raise AssociateRqError(
            "bad-length",
            f"A-ASSOCIATE-RQ declares {total} bytes but {len(data)} came before the answer",
            ABORT_INVALID_PARAMETER,
        )
    version = int.from_bytes(data[6:8], "big")
    if not version & 1:
        raise AssociateRqError(
            "bad-version", f"A-ASSOCIATE-RQ: protocol version 0x{version:04x}", REJECT_VERSION
        )
    called, calling = _text(data[_CALLED_AE], "called AE"), _text(data[_CALLING_AE], "calling AE")
    if not called or not calling:
        raise AssociateRqError(
            "bad-ae",
            "A-ASSOCIATE-RQ: empty " + ("called" if not called else "calling") + " AE title",
            ABORT_INVALID_PARAMETER,
        )
    context_name = ""
    read: list[PresentationContext] = []
    count = 0
    max_pdu: int | None = None
    uids: dict[bytes, str] = {}
    for item_type, start, end in _items(data, FIXED_PART, total, "the variable items"):
        if item_type == 0x10:  # §9.3.2.1 application context
            context_name = _text(data[start:end], "application context name")
        elif item_type == 0x20:  # §9.3.2.2 presentation context: id, 3 reserved, sub-items
            if end - start < 4:
                raise AssociateRqError(
                    "bad-item",
                    "A-ASSOCIATE-RQ: presentation context item shorter than 4 bytes",
                    ABORT_INVALID_PARAMETER,
                )
            count += 1
            if not contexts:
                continue
            abstract, transfers = "", []
            for sub, s, e in _items(data, start + 4, end, "a presentation context"):
                if sub == 0x30 or sub == 0x40:
                    # A request repeats a few UIDs over its contexts (storescu: 128
                    # contexts, 3 transfer syntaxes each): each distinct one decoded once.
                    raw = data[s:e]
                    uid = uids.get(raw)
                    if uid is None:
                        what = "abstract syntax" if sub == 0x30 else "transfer syntax"
                        uid = uids[raw] = _text(raw, what)
                    if sub == 0x30:
                        abstract = uid
                    else:
                        transfers.append(uid)
            read.append(PresentationContext(data[start], abstract, tuple(transfers)))
        elif item_type == 0x50:  # §9.3.2.3 user information
            for sub, s, e in _items(data, start, end, "the user information"):
                if sub == 0x51:  # Annex D.1: maximum length received, 4 bytes
                    if e - s != 4:
                        raise AssociateRqError(
                            "bad-item",
                            f"A-ASSOCIATE-RQ: maximum length sub-item of {e - s} bytes, not 4",
                            ABORT_INVALID_PARAMETER,
                        )
                    max_pdu = int.from_bytes(data[s:e], "big")
    if not context_name:
        raise AssociateRqError(
            "bad-item", "A-ASSOCIATE-RQ: no application context item", ABORT_INVALID_PARAMETER
        )
    if not count:
        raise AssociateRqError(
            "bad-item", "A-ASSOCIATE-RQ: no presentation context item", ABORT_INVALID_PARAMETER
        )
    return AssociateRequest(version, called, calling, context_name, tuple(read), max_pdu, total)


def called_ae(data: bytes | bytearray) -> str:
    """The called AE title of a request whose first FIXED_PART bytes are at hand."""
    return _text(bytes(data[_CALLED_AE]), "called AE")


def rewrite_called_ae(data: bytes, title: str) -> bytes:
    """The same PDU with `title` as its called AE. The field is fixed at 16 bytes, space
    padded (PS3.8 §9.3.2), so no length field changes."""
    encoded = title.encode("ascii")
    if not 0 < len(encoded) <= 16:
        raise ValueError(f"AE title {title!r}: 1-16 ASCII characters")
    if len(data) < FIXED_PART:
        raise ValueError(f"{len(data)} bytes are no A-ASSOCIATE-RQ")
    return data[: _CALLED_AE.start] + encoded.ljust(16, b" ") + data[_CALLED_AE.stop :]


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 §9.3.4): reserved, result, source, reason/diag."""
    return struct.pack(">BBIBBBB", A_ASSOCIATE_RJ, 0, 4, 0, result, source, reason)


class PduTracker:
    """PDU boundaries of one direction of an association, from the 6-byte headers alone.

    Two ways to drive it. A relay that moves bytes without seeing them (splice) asks `need`
    (bytes left of the current PDU; 0 = the next bytes are a header), gives the header it
    peeked to `header()` and reports what it moved with `advance()`. A relay that holds the
    bytes gives them to `feed()`. Headers split across reads are kept (`partial`)."""

    __slots__ = (
        "aborts",
        "first",
        "last",
        "need",
        "p_data",
        "partial",
        "pdus",
        "release_rps",
        "releases",
    )

    def __init__(self) -> None:
        self.need = 0  # bytes up to the end of the current PDU, its header included
        self.partial = b""  # the first bytes of a header split across reads
        self.pdus = 0
        self.p_data = 0
        self.releases = 0  # A-RELEASE-RQ seen
        self.release_rps = 0  # A-RELEASE-RP seen
        self.aborts = 0
        self.last = 0  # type of the last PDU whose header was seen
        self.first = 0  # type of the first (from a server: AC, RJ or A-ABORT)

    @property
    def at_boundary(self) -> bool:
        """Between two PDUs: a cut here leaves the peer no partial PDU."""
        return self.need == 0 and not self.partial

    def header(self, head: bytes | bytearray | memoryview) -> int:
        """A whole 6-byte header at a boundary: its PDU's total length (header included).
        The unknown types are counted too (the relay carries them; the peers judge them)."""
        kind = head[0]
        total = HEADER + int.from_bytes(head[2:6], "big")
        if not self.pdus:
            self.first = kind
        self.pdus += 1
        self.last = kind
        if kind == P_DATA_TF:
            self.p_data += 1
        elif kind == A_RELEASE_RQ:
            self.releases += 1
        elif kind == A_RELEASE_RP:
            self.release_rps += 1
        elif kind == A_ABORT:
            self.aborts += 1
        self.need = total
        return total

    def advance(self, moved: int) -> None:
        """`moved` bytes of the current PDU were relayed (never past its end)."""
        if moved > self.need:
            raise ValueError(f"moved {moved} bytes past a PDU boundary ({self.need} left)")
        self.need -= moved

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes relayed in order: every header inside them is seen. Returns how many of
        them began a P-DATA-TF PDU."""
        before = self.p_data
        view = memoryview(data)
        offset, size = 0, len(view)
        while offset < size:
            if self.need:
                step = min(self.need, size - offset)
                self.need -= step
                offset += step
                continue
            want = HEADER - len(self.partial)
            piece = bytes(view[offset : offset + want])
            offset += len(piece)
            if len(piece) < want:
                self.partial += piece
                break
            head, self.partial = self.partial + piece, b""
            self.need = self.header(head) - HEADER
        return self.p_data - before
