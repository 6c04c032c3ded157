"""DICOM upper layer (PS3.8) for a C-ECHO client, sans-I/O.

Bytes in, events out, the h11 way: `EchoClient.start()` gives the A-ASSOCIATE-RQ to send,
`receive_data()` takes whatever the socket produced (b"" for end of stream) and `next_event()`
returns one event at a time, or None when more bytes are needed. The asyncio shell
(`pacslb.control.dicom_echo`) owns the socket and the deadline.

Only what a Verification SCU needs is here: one presentation context (id 1, Verification SOP
class, Implicit VR Little Endian), the C-ECHO-RQ command set and the C-ECHO-RSP status.
PDUs are big-endian (PS3.8 §9.3.1); command sets are Implicit VR Little Endian (PS3.7 §6.3.1).
A peer that breaks the protocol raises ProtocolError; a peer that says no (rejection, abort,
a failure status) is an event.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pacslb.errors import ProtocolError

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "Aborted",
    "Accepted",
    "ContextRejected",
    "EchoClient",
    "EchoResponse",
    "Event",
    "Pdu",
    "PduReader",
    "PeerClosed",
    "Rejected",
    "Released",
    "State",
    "abort_pdu",
    "associate_rq",
    "c_echo_rq",
    "release_rq",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 Annex A.2.1
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # PS3.4 Annex A.4
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"  # PS3.5 §10.1
# Our own UID under the UUID-derived root 2.25 (PS3.5 §B.2): no registered org root needed.
IMPLEMENTATION_CLASS_UID = "2.25.105601442708440512586667079701570093930"
IMPLEMENTATION_VERSION_NAME = "PACSLB_01"
MAX_PDU_LENGTH = 16384  # what we advertise we can receive (PS3.8 Annex D.1)
READ_LIMIT = 65536  # refuse any PDU longer than this: a compliant peer never gets near it
CONTEXT_ID = 1

# PDU types, PS3.8 §9.3.1 Table 9-1.
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

# PS3.8 §9.3.3.2 Table 9-18: presentation context result/reason in an A-ASSOCIATE-AC.
CONTEXT_RESULTS = {
    1: "user-rejection",
    2: "no-reason",
    3: "abstract-syntax-not-supported",
    4: "transfer-syntaxes-not-supported",
}
# PS3.8 §9.3.4 Table 9-21: A-ASSOCIATE-RJ result, source, and reason per source.
REJECT_RESULTS = {1: "permanent", 2: "transient"}
REJECT_SOURCES = {1: "service-user", 2: "service-provider-ACSE", 3: "service-provider-presentation"}
REJECT_REASONS = {
    1: {
        1: "no-reason-given",
        2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized",
        7: "called-AE-title-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
# PS3.8 §9.3.8 Table 9-26: A-ABORT source and (provider) reason/diag.
ABORT_SOURCES = {0: "service-user", 2: "service-provider"}
ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}


@dataclass(frozen=True, slots=True)
class Pdu:
    type: int
    payload: bytes  # everything after the 6-byte header


# Events, named for what happened.
@dataclass(frozen=True, slots=True)
class Accepted:
    """A-ASSOCIATE-AC with presentation context 1 accepted: C-ECHO may be sent."""


@dataclass(frozen=True, slots=True)
class ContextRejected:
    """A-ASSOCIATE-AC, but presentation context 1 was refused (association is up, unusable)."""

    result: int
    text: str


@dataclass(frozen=True, slots=True)
class Rejected:
    result: int
    source: int
    reason: int
    text: str  # e.g. "permanent, service-user: called-AE-title-not-recognized"


@dataclass(frozen=True, slots=True)
class Aborted:
    source: int
    reason: int
    text: str


@dataclass(frozen=True, slots=True)
class EchoResponse:
    status: int  # 0x0000 = success (PS3.7 §9.1.5.1.4)
    message_id: int


@dataclass(frozen=True, slots=True)
class Released:
    """A-RELEASE-RP: the association ended cleanly."""


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer closed the transport while we were waiting for `waiting_for`."""

    waiting_for: str


Event = Accepted | ContextRejected | Rejected | Aborted | EchoResponse | Released | PeerClosed


def _preview(data: bytes | bytearray, limit: int = 24) -> str:
    text = repr(bytes(data[:limit]))[2:-1].replace("'", "\\'")
    return f"'{text}'" + ("..." if len(data) > limit else "")


class PduReader:
    """Frames a byte stream into PDUs (PS3.8 §9.3.1: type, reserved, 4-byte length, payload)."""

    def __init__(self, max_pdu_length: int = READ_LIMIT) -> None:
        self.max_pdu_length = max_pdu_length
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_pdu(self) -> Pdu | None:
        buf = self._buffer
        if not buf:
            return None
        # Judge the first byte at once: an HTTP or TLS peer is recognised from its first segment.
        if buf[0] not in PDU_NAMES:
            raise ProtocolError(f"not DICOM: unexpected bytes {_preview(buf)}")
        if len(buf) < 6:
            return None
        length = int.from_bytes(buf[2:6], "big")
        if length > self.max_pdu_length:
            raise ProtocolError(
                f"not DICOM: {PDU_NAMES[buf[0]]} PDU length {length} exceeds the "
                f"{self.max_pdu_length} byte limit (bytes {_preview(buf)})"
            )
        if len(buf) < 6 + length:
            return None
        pdu = Pdu(buf[0], bytes(buf[6 : 6 + length]))
        del buf[: 6 + length]
        return pdu


def _ae(title: str, what: str) -> bytes:
    # PS3.5 §6.2 AE VR: up to 16 characters of the default repertoire, no backslash or control
    # characters, not all spaces; PS3.8 §9.3.2 pads it with spaces to 16 bytes.
    if not title.strip() or len(title) > 16 or not title.isascii():
        raise ValueError(f"bad {what} AE title {title!r}: 1-16 ASCII characters")
    if "\\" in title or not title.isprintable():
        raise ValueError(f"bad {what} AE title {title!r}: no backslash or control characters")
    return title.encode("ascii").ljust(16, b" ")


def _item(item_type: int, value: bytes) -> bytes:
    # PS3.8 §9.3.2.x items and sub-items: type, reserved, 2-byte length, value.
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(payload)) + payload


def associate_rq(called_ae: str, calling_ae: str, max_pdu_length: int = MAX_PDU_LENGTH) -> bytes:
    """A-ASSOCIATE-RQ proposing Verification / Implicit VR LE as context 1 (PS3.8 §9.3.2)."""
    syntaxes = _item(0x30, VERIFICATION_SOP_CLASS.encode()) + _item(
        0x40, IMPLICIT_VR_LITTLE_ENDIAN.encode()
    )
    context = _item(0x20, bytes([CONTEXT_ID, 0, 0, 0]) + syntaxes)  # §9.3.2.2
    user_info = _item(
        0x50,  # §9.3.2.3 with sub-items of Annex D.1 (max length) and D.3.3.2 (implementation)
        _item(0x51, struct.pack(">I", max_pdu_length))
        + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
        + _item(0x55, IMPLEMENTATION_VERSION_NAME.encode()),
    )
    header = struct.pack(">HH", 1, 0) + _ae(called_ae, "called") + _ae(calling_ae, "calling")
    items = _item(0x10, APPLICATION_CONTEXT.encode()) + context + user_info
    return _pdu(A_ASSOCIATE_RQ, header + bytes(32) + items)


def release_rq() -> bytes:
    return _pdu(A_RELEASE_RQ, bytes(4))  # PS3.8 §9.3.6


def abort_pdu(source: int = 0, reason: int = 0) -> bytes:
    # PS3.8 §9.3.8: source 0 = service-user (us), 2 = service-provider (a proxy cutting in).
    return _pdu(A_ABORT, bytes([0, 0, source, reason]))


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value  # Implicit VR LE, PS3.5 §7.1.3


def c_echo_rq(message_id: int) -> bytes:
    """P-DATA-TF with the C-ECHO-RQ command set as one PDV (PS3.7 §9.3.5, PS3.8 §9.3.5)."""
    uid = VERIFICATION_SOP_CLASS.encode()
    body = (
        _element(0x0000, 0x0002, uid + b"\0" * (len(uid) % 2))  # UI padded with NUL to even
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0030))  # CommandField: C-ECHO-RQ
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))  # MessageID
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0101))  # CommandDataSetType: none
    )
    command = _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body  # group length
    # PDV item (PS3.8 §9.3.5.1): length, context id, then the message control header of
    # Annex E.2: bit 0 set = command, bit 1 set = last fragment.
    pdv = struct.pack(">IBB", len(command) + 2, CONTEXT_ID, 0x03) + command
    return _pdu(P_DATA_TF, pdv)


def _items(data: bytes, where: str) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ProtocolError(f"bad {where}: truncated item header")
        item_type, _, length = struct.unpack_from(">BBH", data, offset)
        if offset + 4 + length > len(data):
            raise ProtocolError(f"bad {where}: item 0x{item_type:02x} runs past the end")
        out.append((item_type, data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return out


def _command_elements(command: bytes) -> dict[int, bytes]:
    """Elements of a group-0000 command set, keyed by element number (PS3.7 §6.3, §E.1)."""
    elements, offset = {}, 0
    while offset < len(command):
        if offset + 8 > len(command):
            raise ProtocolError("bad command set: truncated element header")
        group, element, length = struct.unpack_from("<HHI", command, offset)
        if group != 0x0000 or offset + 8 + length > len(command):
            raise ProtocolError(f"bad command set: element ({group:04x},{element:04x})")
        elements[element] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return elements


def _us(elements: dict[int, bytes], element: int) -> int:
    value = elements.get(element)
    if value is None or len(value) != 2:
        raise ProtocolError(f"bad C-ECHO-RSP: (0000,{element:04x}) missing or not US")
    return int.from_bytes(value, "little")


class State(enum.StrEnum):
    IDLE = "idle"
    AWAITING_AC = "A-ASSOCIATE-AC"
    ASSOCIATED = "associated"
    AWAITING_RSP = "C-ECHO-RSP"
    AWAITING_RP = "A-RELEASE-RP"
    CLOSED = "closed"


class EchoClient:
    """Association requestor that sends C-ECHO-RQs (a subset of the PS3.8 §9.2 state machine)."""

    def __init__(self, called_ae: str, calling_ae: str) -> None:
        self._rq = associate_rq(called_ae, calling_ae)  # validates the AE titles
        self._reader = PduReader()
        self._state = State.IDLE
        self._eof = False
        self._message_id = 0
        self._fragments = bytearray()

    @property
    def state(self) -> State:
        return self._state

    @property
    def waiting_for(self) -> str:
        """What we wait for from the peer, for timeout and close messages."""
        return self._state.value

    def start(self) -> bytes:
        self._expect(State.IDLE, "start")
        self._state = State.AWAITING_AC
        return self._rq

    def echo_request(self) -> bytes:
        self._expect(State.ASSOCIATED, "echo_request")
        self._state = State.AWAITING_RSP
        self._message_id = self._message_id % 0xFFFF + 1
        self._fragments.clear()
        return c_echo_rq(self._message_id)

    def release_request(self) -> bytes:
        self._expect(State.ASSOCIATED, "release_request")
        self._state = State.AWAITING_RP
        return release_rq()

    def abort(self) -> bytes:
        self._state = State.CLOSED
        return abort_pdu(source=0)

    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; b"" means the peer closed its side."""
        if data:
            self._reader.receive_data(data)
        else:
            self._eof = True

    def next_event(self) -> Event | None:
        while self._state is not State.CLOSED:
            pdu = self._reader.next_pdu()
            if pdu is None:
                if self._eof and self._state is not State.IDLE:
                    waiting_for = self.waiting_for
                    self._state = State.CLOSED
                    return PeerClosed(waiting_for)
                return None
            event = self._handle(pdu)
            if event is not None:
                return event
        return None

    def _expect(self, state: State, action: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"{action}() in state {self._state.name}")

    def _handle(self, pdu: Pdu) -> Event | None:
        state, kind = self._state, pdu.type
        if kind == A_ABORT:  # PS3.8 §9.2: an A-ABORT is valid in every state
            self._state = State.CLOSED
            source, reason = _four(pdu)[2:]
            text = ABORT_SOURCES.get(source, f"source {source}")
            if source == 2:  # reason/diag is only meaningful from the provider
                text += ": " + ABORT_REASONS.get(reason, f"reason {reason}")
            return Aborted(source, reason, text)
        if state is State.AWAITING_AC and kind == A_ASSOCIATE_AC:
            return self._associate_ac(pdu.payload)
        if state is State.AWAITING_AC and kind == A_ASSOCIATE_RJ:
            self._state = State.CLOSED
            result, source, reason = _four(pdu)[1:]
            why = REJECT_REASONS.get(source, {}).get(reason, f"reason {reason}")
            text = (
                f"{REJECT_RESULTS.get(result, f'result {result}')}, "
                f"{REJECT_SOURCES.get(source, f'source {source}')}: {why}"
            )
            return Rejected(result, source, reason, text)
        if state is State.AWAITING_RSP and kind == P_DATA_TF:
            return self._p_data(pdu.payload)
        # PS3.8 §7.2.2: an A-RELEASE-RQ here is a release collision; we close either way.
        if state is State.AWAITING_RP and kind in (A_RELEASE_RP, A_RELEASE_RQ):
            self._state = State.CLOSED
            return Released()
        raise ProtocolError(f"unexpected {PDU_NAMES[kind]} while {_doing(state)}")

    def _associate_ac(self, payload: bytes) -> Event:
        # PS3.8 §9.3.3: same 68-byte fixed part as the RQ; AE titles are echoed, not tested.
        if len(payload) < 68:
            raise ProtocolError(f"bad A-ASSOCIATE-AC: {len(payload)} byte payload")
        for item_type, value in _items(payload[68:], "A-ASSOCIATE-AC"):
            if item_type != 0x21 or len(value) < 4 or value[0] != CONTEXT_ID:
                continue
            result = value[2]  # PS3.8 §9.3.3.2 Table 9-18
            self._state = State.ASSOCIATED
            if result != 0:
                return ContextRejected(result, CONTEXT_RESULTS.get(result, f"result {result}"))
            syntaxes = [v for t, v in _items(value[4:], "presentation context") if t == 0x40]
            if [s.rstrip(b"\0 ") for s in syntaxes] != [IMPLICIT_VR_LITTLE_ENDIAN.encode()]:
                raise ProtocolError(f"bad A-ASSOCIATE-AC: transfer syntax {syntaxes!r}")
            return Accepted()
        raise ProtocolError("bad A-ASSOCIATE-AC: no result for presentation context 1")

    def _p_data(self, payload: bytes) -> Event | None:
        # PS3.8 §9.3.5: one or more PDV items; a command may span PDVs and PDUs (Annex E).
        offset, last = 0, False
        while offset < len(payload):
            if offset + 6 > len(payload):
                raise ProtocolError("bad P-DATA-TF: truncated PDV header")
            length, context_id, header = struct.unpack_from(">IBB", payload, offset)
            if length < 2 or offset + 4 + length > len(payload):
                raise ProtocolError(f"bad P-DATA-TF: PDV length {length}")
            if context_id != CONTEXT_ID:
                raise ProtocolError(f"bad P-DATA-TF: presentation context {context_id}")
            if last:
                raise ProtocolError("bad P-DATA-TF: PDV after the last command fragment")
            # A C-ECHO-RSP has no data set (CommandDataSetType 0x0101); a data PDV is skipped.
            if header & 0x01:
                self._fragments += payload[offset + 6 : offset + 4 + length]
                last = bool(header & 0x02)
            offset += 4 + length
        if not last:
            return None
        elements = _command_elements(bytes(self._fragments))
        self._fragments.clear()
        if _us(elements, 0x0100) != 0x8030:  # PS3.7 §9.3.5.2 C-ECHO-RSP
            raise ProtocolError(f"bad C-ECHO-RSP: CommandField 0x{_us(elements, 0x0100):04x}")
        responding_to = _us(elements, 0x0120)
        if responding_to != self._message_id:
            raise ProtocolError(f"bad C-ECHO-RSP: answers message {responding_to}")
        self._state = State.ASSOCIATED
        return EchoResponse(_us(elements, 0x0900), responding_to)


def _four(pdu: Pdu) -> bytes:
    # A-ASSOCIATE-RJ (§9.3.4) and A-ABORT (§9.3.8) carry exactly four bytes.
    if len(pdu.payload) != 4:
        raise ProtocolError(f"bad {PDU_NAMES[pdu.type]}: {len(pdu.payload)} byte payload")
    return pdu.payload


def _doing(state: State) -> str:
    if state in (State.AWAITING_AC, State.AWAITING_RSP, State.AWAITING_RP):
        return f"waiting for {state.value}"
    return state.value
