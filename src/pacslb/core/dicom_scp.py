"""A sans-I/O Verification SCP: answers A-ASSOCIATE-RQ, C-ECHO-RQ and A-RELEASE-RQ.

Used by `pacslb demo` so that its DICOM real servers answer `echoscu` and pacslb's own
dicom-echo checks like a real archive would. Only the Verification SOP class is accepted;
every other presentation context is rejected as abstract-syntax-not-supported (PS3.8 §9.3.3.2),
so a storescu is told clearly that this is not a storage archive.
"""

from __future__ import annotations

import struct

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
    _us,
    abort_pdu,
)
from pacslb.errors import ProtocolError

ACCEPTED, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4


def _uid(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii", errors="replace")


def associate_ac(rq_payload: bytes) -> tuple[bytes, set[int]]:
    """The A-ASSOCIATE-AC for an RQ's payload, and the ids of the accepted contexts."""
    if len(rq_payload) < 68:
        raise ProtocolError("bad A-ASSOCIATE-RQ: shorter than its fixed fields")
    header = rq_payload[:68]  # version, reserved, called AE, calling AE, reserved (§9.3.3)
    results, accepted = b"", set()
    for item_type, value in _items(rq_payload[68:], "A-ASSOCIATE-RQ"):
        if item_type != 0x20 or len(value) < 4:
            continue
        context_id = value[0]
        subs = _items(value[4:], "presentation context")
        abstract = next((_uid(v) for t, v in subs if t == 0x30), "")
        transfers = [_uid(v) for t, v in subs if t == 0x40]
        if abstract != VERIFICATION_SOP_CLASS:
            result, syntax = ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT_VR_LITTLE_ENDIAN
        elif IMPLICIT_VR_LITTLE_ENDIAN not in transfers:
            result, syntax = TRANSFER_SYNTAXES_NOT_SUPPORTED, IMPLICIT_VR_LITTLE_ENDIAN
        else:
            result, syntax = ACCEPTED, IMPLICIT_VR_LITTLE_ENDIAN
            accepted.add(context_id)
        results += _item(0x21, bytes([context_id, 0, result, 0]) + _item(0x40, syntax.encode()))
    user_info = _item(
        0x50,
        _item(0x51, struct.pack(">I", MAX_PDU_LENGTH))
        + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
        + _item(0x55, IMPLEMENTATION_VERSION_NAME.encode()),
    )
    items = _item(0x10, APPLICATION_CONTEXT.encode()) + results + user_info
    return _pdu(A_ASSOCIATE_AC, header + items), accepted


def c_echo_rsp(context_id: int, message_id: int) -> bytes:
    """P-DATA-TF with a C-ECHO-RSP, status Success (PS3.7 §9.3.5.2)."""
    uid = VERIFICATION_SOP_CLASS.encode()
    body = (
        _element(0x0000, 0x0002, uid + b"\0" * (len(uid) % 2))
        + _element(0x0000, 0x0100, struct.pack("<H", 0x8030))  # CommandField: C-ECHO-RSP
        + _element(0x0000, 0x0120, struct.pack("<H", message_id))  # MessageIDBeingRespondedTo
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0101))  # no data set
        + _element(0x0000, 0x0900, struct.pack("<H", 0x0000))  # Status: Success
    )
    command = _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body
    return _pdu(P_DATA_TF, struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command)


class VerificationResponder:
    """Feed it the bytes a peer sent; it returns the bytes to send back. `done` once released
    or aborted (then close the connection)."""

    def __init__(self) -> None:
        self._reader = PduReader()
        self._accepted: set[int] = set()
        self._fragments: dict[int, bytes] = {}
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
        out = b""
        offset = 0
        while offset + 6 <= len(payload):
            length, context_id, control = struct.unpack_from(">IBB", payload, offset)
            fragment = payload[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if context_id not in self._accepted or not control & 0x01:
                raise ProtocolError("P-DATA on an unaccepted context or without a command")
            command = self._fragments.pop(context_id, b"") + fragment
            if not control & 0x02:  # not the last fragment (PS3.8 Annex E.2)
                self._fragments[context_id] = command
                continue
            elements = _command_elements(command)
            if _us(elements, 0x0100) != 0x0030:
                raise ProtocolError("only C-ECHO is served here")
            out += c_echo_rsp(context_id, _us(elements, 0x0110))
        return out
