"""Real peers the alert tests deliver to, on h18a's loopback block (127.10.2.0/24).

An SMTP relay (aiosmtpd; optionally STARTTLS with AUTH required), syslog collectors over UDP
and TCP (RFC 6587 octet counting), a webhook receiver that can fail its first requests, a
relay that accepts TCP and never answers, and a strict RFC 5424 parser for what arrives.
Each runs in this test process's threads and is stopped by its context manager.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from tests.peers.procs import free_port as free_port  # the alert tests import it from here

from pacslb.core.certs import self_signed

BLOCK = "127.10.2"


# --- SMTP ----------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """What the relay received: the parsed mails and, per mail, the AUTH user if any.
    `answers`: replies to the next DATA commands instead of taking the mail (e.g. a 451)."""

    mails: list[Message] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    refused: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.answers:
                self.refused.append(message_from_bytes(envelope.content))
                return self.answers.pop(0)
            self.mails.append(message_from_bytes(envelope.content))
            user = session.auth_data.login.decode() if session.auth_data else ""
            self.users.append(user)
        return "250 OK"

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for m in self.mails]

    def bodies(self) -> list[str]:
        with self.lock:
            return [str(m.get_payload(decode=True).decode()) for m in self.mails]


def tls_files(directory: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for `address` (its own CA for the client), and its key."""
    now = datetime.datetime.now(datetime.UTC)
    cert, key = self_signed("alert test peer", now, addresses=[address])
    cert_path, key_path = directory / "peer-cert.pem", directory / "peer-key.pem"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


@contextlib.contextmanager
def smtp_relay(
    host: str,
    port: int,
    tls: tuple[Path, Path] | None = None,
    login: tuple[str, str] = ("", ""),
    box: Mailbox | None = None,
) -> Iterator[Mailbox]:
    """aiosmtpd; with `tls`, STARTTLS is required and so is AUTH with `login`."""
    box = box or Mailbox()
    kwargs: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any):  # type: ignore[no-untyped-def]
            ok = (
                isinstance(data, LoginPassword)
                and (
                    data.login.decode(),
                    data.password.decode(),
                )
                == login
            )
            return AuthResult(success=ok, handled=False, auth_data=data)

        kwargs = {
            "tls_context": context,
            "require_starttls": True,
            "auth_required": True,
            "authenticator": authenticator,
        }
    controller = Controller(box, hostname=host, port=port, **kwargs)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@contextlib.contextmanager
def silent_relay(host: str, port: int) -> Iterator[list[socket.socket]]:
    """Accepts TCP and never says a word (no banner): an SMTP relay that hangs."""
    listener = socket.create_server((host, port))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


# --- syslog --------------------------------------------------------------------------------


@dataclass
class Collector:
    lines: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, line: bytes) -> None:
        with self.lock:
            self.lines.append(line)

    def parsed(self) -> list[dict[str, Any]]:
        with self.lock:
            return [parse_rfc5424(line) for line in self.lines]


@contextlib.contextmanager
def syslog_udp(host: str, port: int) -> Iterator[Collector]:
    collector = Collector()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(0.1)
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                collector.add(sock.recv(65536))

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def read_octet_counted(conn: socket.socket, collector: Collector) -> None:
    """RFC 6587 §3.4.1 frames 'LEN SP MSG' until the sender closes; anything else fails."""
    buffer = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            assert buffer == b"", f"a torn frame at close: {buffer!r}"
            return
        buffer += chunk
        while b" " in buffer:
            length, _, rest = buffer.partition(b" ")
            assert length.isdigit() and not length.startswith(b"0"), f"bad length {length!r}"
            if len(rest) < int(length):
                break
            collector.add(rest[: int(length)])
            buffer = rest[int(length) :]


@contextlib.contextmanager
def syslog_stream(
    host: str, port: int, tls: tuple[Path, Path] | None = None
) -> Iterator[Collector]:
    collector = Collector()
    listener = socket.create_server((host, port))
    listener.settimeout(0.1)
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                conn.settimeout(5)
                if context is not None:
                    conn = context.wrap_socket(conn, server_side=True)
                with conn:
                    read_octet_counted(conn, collector)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert not errors, errors


# RFC 5424 §6 ABNF, strictly: every field, its length and its characters.
_HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
    rb"(?P<timestamp>-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})) "
    rb"(?P<hostname>[\x21-\x7e]{1,255}) (?P<app>[\x21-\x7e]{1,48}) "
    rb"(?P<procid>[\x21-\x7e]{1,128}) (?P<msgid>[\x21-\x7e]{1,32}) "
)
_NAME = re.compile(rb"[!#-<>-\\^-~]{1,32}")  # PRINTUSASCII except '=', ' ', ']', '"'


def parse_rfc5424(line: bytes) -> dict[str, Any]:
    """Parse one syslog message by RFC 5424 or raise ValueError saying where it breaks."""
    match = _HEADER.match(line)
    if match is None:
        raise ValueError(f"no RFC 5424 HEADER: {line[:80]!r}")
    pri = int(match["pri"])
    if pri > 191 or (len(match["pri"]) > 1 and match["pri"].startswith(b"0")):
        raise ValueError(f"PRI {pri} out of range")
    out: dict[str, Any] = {
        "facility": pri // 8,
        "severity": pri % 8,
        "version": int(match["version"]),
        "timestamp": match["timestamp"].decode(),
        "hostname": match["hostname"].decode(),
        "app_name": match["app"].decode(),
        "procid": match["procid"].decode(),
        "msgid": match["msgid"].decode(),
        "sd": {},
    }
    if out["timestamp"] != "-":
        datetime.datetime.fromisoformat(out["timestamp"].replace("Z", "+00:00"))
    rest = line[match.end() :]
    if rest.startswith(b"-"):
        rest = rest[1:]
    else:
        if not rest.startswith(b"["):
            raise ValueError(f"STRUCTURED-DATA is neither '-' nor an element: {rest[:40]!r}")
        while rest.startswith(b"["):
            rest = _sd_element(rest[1:], out["sd"])
    if rest:
        if not rest.startswith(b" "):
            raise ValueError(f"no SP before MSG: {rest[:40]!r}")
        body = rest[1:]
        if body.startswith(b"\xef\xbb\xbf"):
            body = body[3:]
        out["msg"] = body.decode("utf-8")
    return out


def _sd_element(rest: bytes, sd: dict[str, dict[str, str]]) -> bytes:
    name = _NAME.match(rest)
    if name is None:
        raise ValueError(f"bad SD-ID: {rest[:40]!r}")
    params: dict[str, str] = {}
    sd[name[0].decode()] = params
    rest = rest[name.end() :]
    while rest.startswith(b" "):
        pname = _NAME.match(rest, 1)
        if pname is None or rest[pname.end() : pname.end() + 2] != b'="':
            raise ValueError(f"bad SD-PARAM: {rest[:40]!r}")
        i, value = pname.end() + 2, bytearray()
        while True:
            if i >= len(rest):
                raise ValueError("unterminated PARAM-VALUE")
            ch = rest[i : i + 1]
            if ch == b"\\" and rest[i + 1 : i + 2] in (b'"', b"\\", b"]"):
                value += rest[i + 1 : i + 2]
                i += 2
            elif ch == b'"':
                break
            elif ch == b"]":
                raise ValueError("']' unescaped in a PARAM-VALUE")
            else:
                value += ch
                i += 1
        params[pname[0].decode()] = value.decode("utf-8")
        rest = rest[i + 1 :]
    if not rest.startswith(b"]"):
        raise ValueError(f"SD-ELEMENT not closed: {rest[:40]!r}")
    return rest[1:]


# --- webhook -------------------------------------------------------------------------------


@dataclass
class Hook:
    """Requests received (headers, JSON body) and the statuses still to answer with."""

    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    fail_first: int = 0
    answered: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def webhook(host: str, port: int, fail_first: int = 0) -> Iterator[Hook]:
    hook = Hook(fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hook.lock:
                status = 500 if len(hook.answered) < hook.fail_first else 200
                hook.answered.append(status)
                if status == 200:
                    hook.received.append((dict(self.headers), json.loads(body)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- health-checked servers ----------------------------------------------------------------


class Listener:
    """A TCP server a connect check probes; stop() and start() take it down and back, and
    the time of each accepted connection (each probe) is kept."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.accepts: list[float] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()
        self._sock = socket.create_server((self.host, self.port))
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept, args=(self._sock,), daemon=True)
        self._thread.start()

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepts.append(time.monotonic())
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# The local socket's format, as glibc's syslog(3) writes it: <PRI>Mmm dd hh:mm:ss TAG[PID]: MSG
_LOCAL = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    rb"(?P<day>[ 1-3]\d) (?P<time>\d{2}:\d{2}:\d{2}) "
    rb"(?P<tag>[^\s:\[\]]{1,48})\[(?P<pid>\d+)\]: (?P<msg>[\x20-\x7e]*)"
)


def parse_local_syslog(line: bytes) -> dict[str, Any]:
    """Parse one datagram of the local socket's format strictly, or raise ValueError."""
    match = _LOCAL.fullmatch(line)
    if match is None:
        raise ValueError(f"not '<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG': {line[:80]!r}")
    pri = int(match["pri"])
    if pri > 191 or (len(match["pri"]) > 1 and match["pri"].startswith(b"0")):
        raise ValueError(f"PRI {pri} out of range")
    day = int(match["day"])
    if not 1 <= day <= 31 or (day < 10 and not match["day"].startswith(b" ")):
        raise ValueError(f"day {match['day']!r}: 1-31, padded with a space")
    time.strptime(match["time"].decode(), "%H:%M:%S")
    return {
        "facility": pri // 8,
        "severity": pri % 8,
        "month": match["month"].decode(),
        "day": day,
        "time": match["time"].decode(),
        "tag": match["tag"].decode(),
        "pid": int(match["pid"]),
        "msg": match["msg"].decode(),
    }
