"""PeerClient: HTTPS calls to the HA peer's REST API, to its pinned certificate only.

The peer's WebUI certificate is self-signed (or from a hospital CA we do not know), so the
usual chain check cannot say whether we talk to the peer. What pairing pins instead is the
SHA-256 fingerprint of the peer's certificate: every connection completes the TLS handshake,
compares the certificate the peer presented with the pinned fingerprint, and sends nothing (the
token least of all) unless it matches.

Why asyncio + ssl and not httpx: httpx is only a test dependency of pacslb, and pinning with it
needs a custom transport anyway (its verification is a CA chain); the peer API is a handful of
small JSON requests, for which one HTTP/1.1 request per connection (`Connection: close`) is all
that is needed. Every call has a short timeout: a peer that does not answer must never stall
the active node (replication goes on in the background once it answers again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacslb.control.store import StateFileError, write_atomic
from pacslb.core.replication import fingerprint
from pacslb.errors import PacslbError

TIMEOUT = 3.0  # seconds for one call (connect, TLS, request, answer)
MAX_ANSWER = 8 * 1024 * 1024  # the peer's answers are small JSON documents


class PeerError(PacslbError):
    """The peer could not be reached, or did not answer as a pacslb peer (unreachable)."""


class WrongCertificate(PeerError):
    """The peer presented a certificate other than the pinned one: nothing was sent."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # parsed JSON (or the text when it is not JSON)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def detail(self) -> str:
        if isinstance(self.body, dict) and "detail" in self.body:
            return str(self.body["detail"])
        return str(self.body)[:300]


def _tls() -> ssl.SSLContext:
    # No chain or name check here: the pinned fingerprint is the check (see the module doc).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def host_port(address: str, default_port: int) -> tuple[str, int]:
    """`ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address -> (host, port)."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"{address!r}: no address")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{address!r}: {port!r} is not a port")
    return host, int(port) if port else default_port


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Connect and complete TLS; the caller's deadline bounds it (one for the whole call)."""
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=_tls(), server_hostname=None, limit=MAX_ANSWER
        )
    except (OSError, ssl.SSLError) as exc:
        raise PeerError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    tls = writer.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    if not der:
        writer.close()
        raise PeerError(f"{host}:{port} presented no certificate")
    return reader, writer, fingerprint(der)


async def certificate_fingerprint(host: str, port: int, timeout: float = TIMEOUT) -> str:
    """The SHA-256 fingerprint of the certificate host:port presents (first contact)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer, seen = await _connect(host, port)
    except TimeoutError:
        raise PeerError(f"{host}:{port} did not answer within {timeout:g} s") from None
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return seen


class PeerClient:
    """Calls to one peer: its address, the fingerprint pinned at pairing, its API token."""

    def __init__(
        self, host: str, port: int, pinned: str, token: str, timeout: float = TIMEOUT
    ) -> None:
        self.host, self.port = host, port
        self.pinned = pinned
        self.token = token
        self.timeout = timeout

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    async def get(self, path: str, timeout: float | None = None) -> Answer:
        return await self.call("GET", path, None, timeout)

    async def post(self, path: str, body: Any = None, timeout: float | None = None) -> Answer:
        return await self.call("POST", path, body, timeout)

    async def put(self, path: str, body: Any = None, timeout: float | None = None) -> Answer:
        return await self.call("PUT", path, body, timeout)

    async def call(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Answer:
        """One request; PeerError when the peer cannot be reached or gives no HTTP answer,
        WrongCertificate (nothing sent) when its certificate is not the pinned one.

        `timeout` is one deadline for the whole call (connect, TLS, request, answer), not one
        per phase: a peer that accepts TCP and then stalls costs the caller `timeout`, once."""
        limit = timeout or self.timeout
        try:
            async with asyncio.timeout(limit):
                return await self._exchange(method, path, body)
        except TimeoutError:
            raise PeerError(f"{self.name} did not answer within {limit:g} s") from None

    async def _exchange(self, method: str, path: str, body: Any) -> Answer:
        reader, writer, seen = await _connect(self.host, self.port)
        try:
            if seen != self.pinned:
                raise WrongCertificate(
                    f"{self.name} presented a certificate with fingerprint {seen}, not the "
                    f"pinned {self.pinned}: nothing was sent (pair again if the peer's "
                    "certificate was replaced on purpose)"
                )
            payload = b"" if body is None else json.dumps(body).encode()
            head = [
                f"{method} {path} HTTP/1.1",
                f"Host: {self.host}:{self.port}",
                f"Authorization: Bearer {self.token}",
                "Accept: application/json",
                "Connection: close",
                f"Content-Length: {len(payload)}",
            ]
            if body is not None:
                head.append("Content-Type: application/json")
            try:
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
                raw = await reader.read(MAX_ANSWER + 65536)
                while chunk := await reader.read(65536):
                    raw += chunk
                    if len(raw) > MAX_ANSWER + 65536:
                        raise PeerError(f"{self.name}: answer larger than {MAX_ANSWER} bytes")
            except (OSError, ssl.SSLError) as exc:
                raise PeerError(f"{self.name}: connection failed: {exc}") from None
            return parse_answer(raw, self.name)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def parse_answer(raw: bytes, name: str) -> Answer:
    """An HTTP/1.1 answer read to the end of a `Connection: close` connection."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise PeerError(f"{name}: no complete HTTP answer")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise PeerError(f"{name}: not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        rest = _unchunk(rest, name)
    elif "content-length" in headers:
        rest = rest[: int(headers["content-length"])]
    text = rest.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return Answer(int(parts[1]), parsed)


def _unchunk(data: bytes, name: str) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise PeerError(f"{name}: truncated chunked answer")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]


# --- the pairing record (state_dir/ha-peer.json) --------------------------------------------

PEER_FILE = "ha-peer.json"
PEER_FILE_VERSION = 1


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """Who this node is paired with, kept in state_dir/ha-peer.json (mode 0600: it holds the
    token that calls the peer). `given_token_id`: the id of the token the peer calls this node
    with (replication calls are accepted from it only). `generation` and `applied_revision`
    are this node's replication bookkeeping (core/replication.py)."""

    host: str
    port: int
    fingerprint: str
    token: str
    given_token_id: str
    paired_at: str
    generation: int = 0
    applied_revision: int = 0  # the peer's revision this node last applied from a replica
    # The last state both nodes held (digest) and this node's generation then: a conflict is
    # both nodes changed since (core/replication.py:in_conflict). None: not synced once yet.
    common_digest: str | None = None
    common_generation: int = 0

    @property
    def name(self) -> str:
        return self.host

    def client(self, timeout: float = TIMEOUT) -> PeerClient:
        return PeerClient(self.host, self.port, self.fingerprint, self.token, timeout)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PEER_FILE_VERSION,
            "peer": {"address": self.host, "port": self.port, "fingerprint": self.fingerprint},
            "token": self.token,
            "given_token_id": self.given_token_id,
            "paired_at": self.paired_at,
            "generation": self.generation,
            "applied_revision": self.applied_revision,
            "common_digest": self.common_digest,
            "common_generation": self.common_generation,
        }

    @classmethod
    def from_json(cls, data: Any) -> PeerRecord:
        peer = data["peer"]
        return cls(
            host=str(peer["address"]),
            port=int(peer["port"]),
            fingerprint=str(peer["fingerprint"]),
            token=str(data["token"]),
            given_token_id=str(data["given_token_id"]),
            paired_at=str(data["paired_at"]),
            generation=int(data.get("generation", 0)),
            applied_revision=int(data.get("applied_revision", 0)),
            common_digest=str(data["common_digest"]) if data.get("common_digest") else None,
            common_generation=int(data.get("common_generation", 0)),
        )


def load_record(path: Path) -> PeerRecord | None:
    """The pairing in `path`, None when not paired; StateFileError naming the file when it
    cannot be read (a pairing silently forgotten would stop replication unnoticed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateFileError(f"{path}: cannot read: {exc}") from exc
    try:
        if data.get("version") != PEER_FILE_VERSION:
            raise ValueError(f"unsupported version {data.get('version')!r}")
        return PeerRecord.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateFileError(f"{path}: malformed pairing: {exc!r}") from exc


def save_record(path: Path, record: PeerRecord) -> None:
    body = json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomic(path, body.encode(), 0o600)


def remove_record(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
