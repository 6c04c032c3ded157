"""Every event also as a line in the system log: the journal with its fields, else syslog.

Run by systemd (the package's pacslb.service), stdout already goes to the journal, but as plain
text: `journalctl -u pacslb PACSLB_KIND=health PACSLB_SERVICE=McK-Radiology_DICOM` needs the
event's fields, so each event is sent through the journal's native protocol instead
(systemd.journal-fields(7), "Native Journal Protocol": one datagram to
/run/systemd/journal/socket, a `FIELD=value` line per field; a value holding a newline is sent
as `FIELD\\n`, its length as 64-bit little endian, the bytes, `\\n`). Where that socket is missing
(a host without journald) the event goes to syslog (/dev/log, RFC 3164 framing, facility
daemon) with its fields as `key=value` after the message.

Which sink: $PACSLB_LOG_TO = `journal`, `syslog` or `none`; unset, an event goes to the system
log only when systemd started pacslb with its output in the journal ($JOURNAL_STREAM, set by
systemd): a `pacslb run` in a terminal, and every test, leaves the host's log alone. When the
event went to the journal and stdout is the journal stream too, the caller skips its stdout line
(`duplicates_stdout`), so `journalctl` shows each event once.

A send that fails (journald restarting, a full socket buffer) loses that log line, never the
event: events.jsonl has it, and the load balancer must not wait on logging.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacslb.control.events import Event

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
IDENTIFIER = "pacslb"
LOG_DAEMON = 3  # syslog facility
ERR, WARNING, INFO = 3, 4, 6  # syslog severities, as the journal's PRIORITY

_FIELD_CHARS = re.compile(r"[^A-Z0-9_]")


def priority(event: Event) -> int:
    """How loud an event is: a fault is an error, a server down or a refusal a warning."""
    text = event.message.lower()
    if event.kind in ("engine", "process") and any(
        w in text for w in ("crashed", "hung", "apply failed", "start-failed", "failed:")
    ):
        return ERR
    if (event.kind == "health" and (event.data or {}).get("current") == "down") or any(
        w in text for w in ("warning", "refused", "degraded", "cannot")
    ):
        return WARNING
    return INFO


def field_name(key: str) -> str:
    """A journal field name: upper case letters, digits and underscores, not starting with
    an underscore (those are the journal's own trusted fields), at most 64 characters."""
    name = _FIELD_CHARS.sub("_", key.upper()).lstrip("_")
    return name[:64] or "X"


def event_fields(event: Event) -> dict[str, str]:
    """The journal fields of an event: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and PACSLB_*."""
    where = "/".join(p for p in (event.service, event.server) if p)
    fields = {
        "MESSAGE": f"{event.kind}: {where + ': ' if where else ''}{event.message}",
        "PRIORITY": str(priority(event)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "PACSLB_KIND": event.kind,
        "PACSLB_AT": event.at,
    }
    if event.service:
        fields["PACSLB_SERVICE"] = event.service
    if event.server:
        fields["PACSLB_SERVER"] = event.server
    if event.data:
        fields["PACSLB_DATA"] = json.dumps(event.data, sort_keys=True, separators=(",", ":"))
        for key, value in event.data.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            fields["PACSLB_DATA_" + field_name(str(key))] = text
    return fields


def encode_native(fields: Mapping[str, str]) -> bytes:
    """The journal's native datagram for `fields`."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def decode_native(datagram: bytes) -> dict[str, str]:
    """The inverse of encode_native (what journald reads); for tests and for tools."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(datagram):
        newline = datagram.index(b"\n", pos)
        line = datagram[pos:newline]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode("utf-8", "replace")
            pos = newline + 1
        else:
            (size,) = struct.unpack("<Q", datagram[newline + 1 : newline + 9])
            start = newline + 9
            fields[line.decode()] = datagram[start : start + size].decode("utf-8", "replace")
            pos = start + size + 1
    return fields


def encode_syslog(event: Event, pid: int) -> bytes:
    """RFC 3164 framing as /dev/log takes it; the receiver adds the time and host name."""
    fields = event_fields(event)
    extra = " ".join(
        f"{k.removeprefix('PACSLB_').lower()}={json.dumps(v) if ' ' in v or not v else v}"
        for k, v in fields.items()
        if k.startswith("PACSLB_") and not k.startswith("PACSLB_DATA_") and k != "PACSLB_AT"
    )
    pri = LOG_DAEMON * 8 + int(fields["PRIORITY"])
    text = f"<{pri}>{IDENTIFIER}[{pid}]: {fields['MESSAGE']} [{extra}]"
    return " ".join(text.split("\n")).encode("utf-8", "replace")


def stdout_is_journal(environ: Mapping[str, str]) -> bool:
    """$JOURNAL_STREAM ("DEV:INODE") names stdout's own file: stdout goes to the journal."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stdout.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


class SystemLog:
    """Sends events to the journal (native) or syslog; `from_environment` picks one, or none."""

    def __init__(self, kind: str, address: str, duplicates_stdout: bool = False) -> None:
        if kind not in ("journal", "syslog"):
            raise ValueError(f"unknown system log {kind!r}")
        self.kind, self.address = kind, address
        self.duplicates_stdout = duplicates_stdout  # the caller's stdout line would be a twin
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)  # a full journal buffer drops a line, never blocks us
        self._pid = os.getpid()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemLog | None:
        env = os.environ if environ is None else environ
        wanted = env.get("PACSLB_LOG_TO", "")
        if wanted == "none" or (not wanted and not env.get("JOURNAL_STREAM")):
            return None
        journal = env.get("PACSLB_JOURNAL_SOCKET", JOURNAL_SOCKET)
        syslog = env.get("PACSLB_SYSLOG_SOCKET", SYSLOG_SOCKET)
        twin = stdout_is_journal(env)
        if wanted in ("", "journal") and os.path.exists(journal):
            return cls("journal", journal, duplicates_stdout=twin)
        if wanted in ("", "journal", "syslog") and os.path.exists(syslog):
            return cls("syslog", syslog)
        return None

    def send(self, event: Event) -> bool:
        """True when the socket took the line."""
        if self.kind == "journal":
            fields = event_fields(event)
            datagrams = [encode_native(fields)]
            # Too big for one datagram (a huge data field): the message alone still goes.
            datagrams.append(encode_native({k: fields[k] for k in list(fields)[:5]}))
        else:
            datagrams = [encode_syslog(event, self._pid)]
        for datagram in datagrams:
            try:
                self._sock.sendto(datagram, self.address)
                return True
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:  # too big: try the shorter form
                    return False
        return False

    def close(self) -> None:
        self._sock.close()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address}
