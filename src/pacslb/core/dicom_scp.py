"""A sans-I/O Verification and Storage SCP: A-ASSOCIATE, C-ECHO, C-STORE and A-RELEASE.

Used by `pacslb demo` so that its DICOM real servers answer `echoscu`, `storescu` and pacslb's
own dicom-echo checks like a real archive would, and a drain or halt during a store can be
watched. Accepted: Verification, and every Storage SOP Class (PS3.4 Annex B: UIDs under
1.2.840.10008.5.1.4.1.1.) in Implicit or Explicit VR Little Endian; every other presentation
context is rejected by result (PS3.8 §9.3.3.2). A stored data set is counted, never kept: memory
stays bounded by the PDU limit (core.dicom.READ_LIMIT) and the command limit, whatever a
modality sends or claims.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pacslb.core.dicom import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MAX_PDU_LENGTH,
    P_DATA_TF,
    VERIFICATION_SOP_CLASS,
    PduReader,
    _command_elements,
    _element,
    _item,
    _items,
    _pdu,
    abort_pdu,
)
from pacslb.errors import ProtocolError

ACCEPTED, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # PS3.5 §A.2
STORAGE_SOP_CLASSES = "1.2.840.10008.5.1.4.1.1."  # the prefix of every Storage SOP Class UID
TAKEN_SYNTAXES = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
MAX_COMMAND = 16384  # a command set is ~200 bytes; more is a peer that lies
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATA_SET = 0x0101  # CommandDataSetType (PS3.7 §E.1)


def _uid(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii", errors="replace")


def _context_result(abstract: str, transfers: list[str]) -> tuple[int, str]:
    """The result and transfer syntax for one proposed context: the proposer's first syntax
    among those taken here (its list is in order of preference, PS3.8 §9.3.2.2)."""
    if abstract != VERIFICATION_SOP_CLASS and not abstract.startswith(STORAGE_SOP_CLASSES):
        return ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT_VR_LITTLE_ENDIAN
    taken = next((t for t in transfers if t in TAKEN_SYNTAXES), None)
    if taken is None:
        return TRANSFER_SYNTAXES_NOT_SUPPORTED, IMPLICIT_VR_LITTLE_ENDIAN
    return ACCEPTED, taken


def associate_ac(rq_payload: bytes) -> tuple[bytes, dict[int, str]]:
    """The A-ASSOCIATE-AC for an RQ's payload, and the accepted contexts' abstract syntaxes."""
    if len(rq_payload) < 68:
        raise ProtocolError("bad A-ASSOCIATE-RQ: shorter than its fixed fields")
    header = rq_payload[:68]  # version, reserved, called AE, calling AE, reserved (§9.3.3)
    results, accepted = b"", {}
    for item_type, value in _items(rq_payload[68:], "A-ASSOCIATE-RQ"):
        if item_type != 0x20 or len(value) < 4:
            continue
        context_id = value[0]
        subs = _items(value[4:], "presentation context")
        abstract = next((_uid(v) for t, v in subs if t == 0x30), "")
        result, syntax = _context_result(abstract, [_uid(v) for t, v in subs if t == 0x40])
        if result == ACCEPTED:
            accepted[context_id] = abstract
        results += _item(0x21, bytes([context_id, 0, result, 0]) + _item(0x40, syntax.encode()))
    user_info = _item(
        0x50,
        _item(0x51, struct.pack(">I", MAX_PDU_LENGTH))
        + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
        + _item(0x55, IMPLEMENTATION_VERSION_NAME.encode()),
    )
    items = _item(0x10, APPLICATION_CONTEXT.encode()) + results + user_info
    return _pdu(A_ASSOCIATE_AC, header + items), accepted


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)  # UI padded with NUL to even length (PS3.5 §6.2)


def response(
    context_id: int, command_field: int, message_id: int, sop_class: str, instance: str = ""
) -> bytes:
    """P-DATA-TF with a response command set, status Success (PS3.7 §9.3.1.2, §9.3.5.2)."""
    body = (
        _element(0x0000, 0x0002, _ui(sop_class))  # AffectedSOPClassUID
        + _element(0x0000, 0x0100, struct.pack("<H", command_field))
        + _element(0x0000, 0x0120, struct.pack("<H", message_id))  # MessageIDBeingRespondedTo
        + _element(0x0000, 0x0800, struct.pack("<H", NO_DATA_SET))
        + _element(0x0000, 0x0900, struct.pack("<H", 0x0000))  # Status: Success
    )
    if instance:
        body += _element(0x0000, 0x1000, _ui(instance))  # AffectedSOPInstanceUID
    command = _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body
    return _pdu(P_DATA_TF, struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command)


def c_echo_rsp(context_id: int, message_id: int) -> bytes:
    return response(context_id, C_ECHO_RSP, message_id, VERIFICATION_SOP_CLASS)


def _us(elements: dict[int, bytes], element: int) -> int:
    value = elements.get(element)
    if value is None or len(value) != 2:
        raise ProtocolError(f"bad command set: (0000,{element:04x}) missing or not US")
    return int.from_bytes(value, "little")


@dataclass
class _Store:
    """A C-STORE-RQ whose data set is arriving: what its response needs, and a byte count."""

    message_id: int
    sop_class: str
    instance: str
    received: int = 0


class ScpResponder:
    """Feed it the bytes a peer sent; it returns the bytes to send back. `done` once released
    or aborted (then close the connection). `stored` and `bytes_stored` count what arrived."""

    def __init__(self) -> None:
        self._reader = PduReader()
        self._accepted: dict[int, str] = {}  # context id -> abstract syntax
        self._commands: dict[int, bytes] = {}  # context id -> command fragments so far
        self._stores: dict[int, _Store] = {}  # context id -> the data set arriving there
        self.stored = 0
        self.bytes_stored = 0
        self.done = False

    def receive_data(self, data: bytes) -> bytes:
        self._reader.receive_data(data)
        out = b""
        try:
            while not self.done and (pdu := self._reader.next_pdu()) is not None:
                out += self._handle(pdu.type, pdu.payload)
        except ProtocolError:
            self.done = True
            out += abort_pdu(source=2, reason=0)
        return out

    def _handle(self, pdu_type: int, payload: bytes) -> bytes:
        if pdu_type == A_ASSOCIATE_RQ:
            ac, self._accepted = associate_ac(payload)
            return ac
        if pdu_type == A_RELEASE_RQ:
            self.done = True
            return _pdu(A_RELEASE_RP, bytes(4))
        if pdu_type == A_ABORT:
            self.done = True
            return b""
        if pdu_type != P_DATA_TF:
            raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02x}")
        out, offset = b"", 0
        while offset < len(payload):  # PDV items (PS3.8 §9.3.5.1)
            if offset + 6 > len(payload):
                raise ProtocolError("bad P-DATA-TF: truncated PDV item")
            length, context_id, control = struct.unpack_from(">IBB", payload, offset)
            if length < 2 or offset + 4 + length > len(payload):
                raise ProtocolError(f"bad P-DATA-TF: a PDV length of {length} lies")
            fragment = payload[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if context_id not in self._accepted:
                raise ProtocolError(f"P-DATA on presentation context {context_id}, not accepted")
            last = bool(control & 0x02)  # message control header, PS3.8 Annex E.2
            if control & 0x01:
                out += self._command(context_id, fragment, last)
            else:
                out += self._data(context_id, fragment, last)
        return out

    def _command(self, context_id: int, fragment: bytes, last: bool) -> bytes:
        if context_id in self._stores:
            raise ProtocolError("a command before the C-STORE's data set ended")
        command = self._commands.pop(context_id, b"") + fragment
        if len(command) > MAX_COMMAND:
            raise ProtocolError(f"a command set longer than {MAX_COMMAND} bytes")
        if not last:
            self._commands[context_id] = command
            return b""
        elements = _command_elements(command)
        field, message_id = _us(elements, 0x0100), _us(elements, 0x0110)
        if field == C_ECHO_RQ:
            return c_echo_rsp(context_id, message_id)
        if field != C_STORE_RQ:
            raise ProtocolError(f"only C-ECHO and C-STORE are served here, not 0x{field:04x}")
        if _us(elements, 0x0800) == NO_DATA_SET:
            raise ProtocolError("a C-STORE-RQ without a data set")
        sop_class = _uid(elements.get(0x0002, b""))
        if sop_class != self._accepted[context_id]:
            raise ProtocolError(f"a C-STORE-RQ of {sop_class} on a context for another class")
        instance = _uid(elements.get(0x1000, b""))
        self._stores[context_id] = _Store(message_id, sop_class, instance)
        return b""

    def _data(self, context_id: int, fragment: bytes, last: bool) -> bytes:
        store = self._stores.get(context_id)
        if store is None:
            raise ProtocolError("a data set without a C-STORE-RQ before it")
        store.received += len(fragment)  # counted, not kept
        if not last:
            return b""
        del self._stores[context_id]
        self.stored += 1
        self.bytes_stored += store.received
        return response(context_id, C_STORE_RSP, store.message_id, store.sop_class, store.instance)
