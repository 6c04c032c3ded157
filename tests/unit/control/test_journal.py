"""Events as journal fields and syslog lines (control/journal.py): the encodings, no sockets."""

from __future__ import annotations

import struct

from pacslb.control.events import Event
from pacslb.control.journal import (
    ERR,
    INFO,
    WARNING,
    decode_native,
    encode_native,
    encode_syslog,
    event_fields,
    field_name,
    priority,
)


def test_native_datagram_uses_the_binary_form_only_for_values_with_a_newline() -> None:
    fields = {"MESSAGE": "one line", "PACSLB_DATA_DETAIL": "two\nlines"}
    datagram = encode_native(fields)
    detail = b"two\nlines"
    assert datagram == (
        b"MESSAGE=one line\n"
        + b"PACSLB_DATA_DETAIL\n"
        + struct.pack("<Q", len(detail))
        + detail
        + b"\n"
    )
    assert decode_native(datagram) == fields


def test_event_fields_carry_kind_service_server_and_each_data_key() -> None:
    event = Event(
        "health",
        "up -> down: connect refused",
        "McK-Radiology_DICOM",
        "Srv1",
        at="2026-12-06T23:00:00.000+00:00",
        data={"current": "down", "previous": "up", "ok": False, "retry-after": 5},
    )
    fields = event_fields(event)
    assert fields["MESSAGE"] == "health: McK-Radiology_DICOM/Srv1: up -> down: connect refused"
    assert fields["PRIORITY"] == str(WARNING)
    assert fields["SYSLOG_IDENTIFIER"] == "pacslb"
    assert fields["PACSLB_SERVICE"] == "McK-Radiology_DICOM"
    assert fields["PACSLB_SERVER"] == "Srv1"
    assert fields["PACSLB_DATA_CURRENT"] == "down"
    assert fields["PACSLB_DATA_OK"] == "false"
    assert fields["PACSLB_DATA_RETRY_AFTER"] == "5"
    assert decode_native(encode_native(fields)) == fields


def test_field_names_are_what_journald_accepts() -> None:
    assert field_name("retry-after") == "RETRY_AFTER"
    assert field_name("_private") == "PRIVATE"  # a leading _ is the journal's own (trusted)
    assert field_name("ä") == "X"  # nothing left: a name all the same
    assert len(field_name("x" * 100)) == 64


def test_priority_follows_what_happened() -> None:
    assert priority(Event("engine", "proxy: worker proxy-0 crashed (killed by SIGKILL)")) == ERR
    assert priority(Event("engine", "kernel: apply failed: nft: No such file")) == ERR
    assert priority(Event("config", "reload refused: 2 problems")) == WARNING
    assert priority(Event("health", "down -> up: 200 OK", data={"current": "up"})) == INFO
    assert priority(Event("admin", "online -> drain by admin")) == INFO


def test_syslog_line_is_one_line_with_facility_daemon() -> None:
    event = Event("admin", "online -> drain\nby admin", "Web", "Srv1", data={"x": 1})
    line = encode_syslog(event, 1234).decode()
    assert line.startswith("<30>pacslb[1234]: admin: Web/Srv1: online -> drain by admin [")
    assert "kind=admin service=Web server=Srv1" in line and "\n" not in line
