"""The `l7-http` data plane: an HTTP/1.1 reverse proxy for one listening socket.

asyncio.Protocol callbacks on uvloop, never streams (research/peers.md: a coroutine switch per
read costs a third of the throughput). The message rules live in pacslb.core.http; this module
moves bytes and keeps state:

- a `ClientConnection` per accepted connection: keep-alive, one request at a time (pipelined
  requests wait in its buffer until the previous response is finished, RFC 9112 §9.3.2);
- an `Upstream` per connection to a real server, pooled between requests (bounded, idle ones
  closed after 30 s -- shorter than IIS's 120 s keep-alive, so the server rarely closes first);
- per-request scheduling (`ServiceRuntime.pick`) unless a persistence cookie pins the request;
- bodies streamed both ways with backpressure: when one side's write buffer is full
  (`pause_writing`) the other side stops reading, so a 1 GB download does not grow memory;
- timers without per-request timer objects: every connection holds a deadline, and one sweep
  per listener checks them a few times per second.
"""

from __future__ import annotations

import asyncio
import functools
import math
import socket
import ssl
from collections.abc import Sequence
from typing import Any

from pacslb.core.http import (
    IDEMPOTENT,
    MAX_RESPONSE_HEAD,
    NO_BODY,
    UNTIL_CLOSE,
    BodyReader,
    IdlePool,
    Reject,
    Request,
    Response,
    SniTable,
    client_response_head,
    forwarded_fields,
    head_overflow,
    parse_request,
    parse_response,
    set_cookie_fields,
    short_response,
    upstream_request_head,
)
from pacslb.proxy.runtime import FALLBACK, ServerStats, ServiceRuntime, cookie_id

__all__ = ["HttpListener", "tls_context"]

BACKLOG = 4096
POOL_IDLE_TIMEOUT = 30.0  # seconds an idle upstream connection is kept (IIS closes at 120 s)
POOL_MAX_IDLE = 128  # idle upstream connections kept per real server
HOLD_LIMIT = 65536  # bytes read ahead of the current exchange before the client is paused
REPLAY_LIMIT = 65536  # request bodies up to this size are kept to replay after a close race
LINGER = 2.0  # seconds to drain an unwanted request body before closing
_INF = math.inf

# ClientConnection states
C_IDLE = 0  # between requests (keep-alive), no byte of the next one yet
C_HEAD = 1  # part of a request head received
C_CONNECT = 2  # request parsed, waiting for an upstream connection
C_BODY = 3  # streaming the request body upstream
C_WAIT = 4  # request sent, response not finished
C_TUNNEL = 5  # after 101: raw bytes both ways
C_LINGER = 6  # answered; discarding the rest of the request body before closing
C_CLOSED = 7

# Upstream states
U_IDLE = 0  # in the pool or between exchanges
U_HEAD = 1  # waiting for (the rest of) a response head
U_BODY = 2
U_TUNNEL = 3
U_CLOSED = 4

# Why a client stops reading
_HOLD = 1  # read ahead of the exchange in progress
_UPSTREAM_FULL = 2  # the upstream's write buffer is full

_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

Key = tuple[str, str, int, bool]  # (server label, address, port, TLS)


@functools.cache
def _upstream_tls() -> ssl.SSLContext:
    # Re-encryption to real servers: internal servers carry self-signed or private-CA
    # certificates, so the certificate is NOT verified (like HAProxy `ssl verify none`). The
    # point is an encrypted hop on the server network, not server authentication.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_context(certificates: Sequence[tuple[str, str | None]]) -> ssl.SSLContext:
    """A server context for TLS termination: the first certificate is the default, the others
    are chosen by SNI against their names (subjectAltName DNS entries, else the CN)."""
    if not certificates:
        raise ValueError("TLS termination needs at least one certificate")
    contexts = []
    for cert, key in certificates:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        contexts.append(ctx)
    if len(contexts) > 1:
        table = SniTable([_cert_names(cert) for cert, _ in certificates])

        def choose(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            index = table.choose(server_name)
            if index:  # each certificate has its own context; 0 is the default already
                sock.context = contexts[index]

        contexts[0].sni_callback = choose
    return contexts[0]


def _cert_names(path: str) -> list[str]:
    # CPython's own PEM decoder (the one ssl uses for getpeercert()): no extra dependency.
    decode = getattr(getattr(ssl, "_ssl"), "_test_decode_cert")  # noqa: B009
    info: dict[str, Any] = decode(path)
    dns = [value for kind, value in info.get("subjectAltName", ()) if kind == "DNS"]
    return dns or [v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"]


class HttpListener:
    """The l7-http data plane of one listening socket."""

    def __init__(
        self,
        sock: socket.socket,
        runtime: ServiceRuntime,
        vip_port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.sock = sock
        self.runtime = runtime  # may be swapped by the caller: new requests use the current one
        self.vip_port = vip_port
        self.tls = tls
        self.pool: IdlePool[Key, Upstream] = IdlePool(POOL_MAX_IDLE, POOL_IDLE_TIMEOUT)
        self.clients: set[ClientConnection] = set()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._cookies: dict[tuple[str, str, int | None, str], bytes] = {}
        self._pending: set[asyncio.Task[Any]] = set()  # queued clients taken while closing

    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            sock=self.sock,
            ssl=self.tls,
            backlog=BACKLOG,
            ssl_handshake_timeout=self.runtime.service.timeouts.http_request if self.tls else None,
        )
        self._sweeper = loop.call_later(self._interval(), self._sweep)

    def close(self) -> None:
        """Stop accepting; open connections finish their current exchange, then close.

        Clients already in the kernel's accept queue are still taken (each gets one exchange),
        so that a listener replaced under SO_REUSEPORT resets nobody."""
        self.closing = True
        drained = self._drain_accept_queue()
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.listener_closing()
        if not self.clients and not drained:
            self._shutdown()

    def _drain_accept_queue(self) -> int:
        loop = self.loop
        if self._server is None or loop is None:
            return 0
        taken = 0
        for _ in range(BACKLOG):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            conn.setblocking(False)
            task = loop.create_task(
                loop.connect_accepted_socket(
                    lambda: ClientConnection(self),
                    conn,
                    ssl=self.tls,
                    ssl_handshake_timeout=(
                        self.runtime.service.timeouts.http_request if self.tls else None
                    ),
                )
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            taken += 1
        return taken

    def _shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for up in self.pool.clear():
            up.close()

    def _interval(self) -> float:
        t = self.runtime.service.timeouts
        shortest = min(
            t.http_request, t.http_keepalive, t.http_response, t.idle, t.connect, self.pool.timeout
        )
        return min(1.0, max(0.02, shortest / 10))

    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        for client in [c for c in self.clients if c.deadline <= now]:
            client.timed_out()
        runtime = self.runtime
        for up in self.pool.expire(now, lambda key: _gone(runtime, key[0])):
            up.pooled = False
            up.close()
        if self.closing and not self.clients and not self._pending:
            self._shutdown()
            return
        self._sweeper = self.loop.call_later(self._interval(), self._sweep)

    def cookie_fields(self, runtime: ServiceRuntime, label: str) -> bytes:
        p = runtime.service.persistence
        key = (runtime.service.label, p.cookie, p.cookie_max_age, label)
        fields = self._cookies.get(key)
        if fields is None:
            value = cookie_id(runtime.service.label, label)
            fields = set_cookie_fields(p.cookie, value, self.tls is not None, p.cookie_max_age)
            if len(self._cookies) > 4096:
                self._cookies.clear()
            self._cookies[key] = fields
        return fields


def _gone(runtime: ServiceRuntime, label: str) -> bool:
    """A server that lost its connections (halted, down, removed): its idle ones close too."""
    rs = runtime.server(label)
    return label != FALLBACK and (rs is None or not rs.keeps_existing)


_NO_STATS = ServerStats()  # stands in until a connection's first request is routed


class ClientConnection(asyncio.Protocol):
    """One client connection: parses its requests, routes each one, relays the responses."""

    # Defaults at class level keep the per-connection setup short (new connections per second
    # are the weakest figure of a Python proxy); instances assign what changes.
    transport: Any = None
    state = C_IDLE
    buf = b""
    deadline = _INF
    fresh = True  # no byte received yet: the first request's clock started at accept
    eof = False
    read_block = 0
    write_paused = False
    keep = True  # the connection is kept after the current response
    cookie_name: bytes | None = None  # the persistence cookie of the current service
    # the exchange in progress
    req: Request | None = None
    body: BodyReader | None = None  # the request body still to come
    label: str | None = None
    stats: ServerStats = _NO_STATS
    picked = False  # placed by runtime.pick(): release() it when the exchange ends
    set_cookie = b""
    key: Key | None = None
    up: Upstream | None = None
    tried: set[str] | None = None  # servers whose connect failed for this request
    replayable = False
    sent_body: list[bytes] | None = None  # raw body bytes kept for a close-race replay
    retried = False
    responded = False  # a byte of the response went to the client
    connecting: asyncio.Task[None] | None = None

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        assert listener.loop is not None
        self.loop = listener.loop
        self.runtime = listener.runtime
        self.ip = ""
        self.forwarded = b""

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "0.0.0.0"
        listener = self.listener
        self.forwarded = forwarded_fields(self.ip, listener.tls is not None)
        listener.clients.add(self)
        self.deadline = self.loop.time() + listener.runtime.service.timeouts.http_request
        # A client taken from the accept queue of a closing listener gets its one exchange:
        # the response of a closing listener always ends the connection (see final_head).

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == C_BODY:
            self._body(data)
        elif state <= C_HEAD:
            self._head(data)
        elif state == C_TUNNEL:
            assert self.up is not None
            self.up.transport.write(data)
            self.stats.bytes_in += len(data)
            self.deadline = self.loop.time() + self.runtime.service.timeouts.idle
        elif state in (C_WAIT, C_CONNECT):
            self.buf += data  # the next request: it waits for this response (RFC 9112 §9.3.2)
            if len(self.buf) > HOLD_LIMIT:
                self._block(_HOLD)
        # C_LINGER, C_CLOSED: discarded

    def eof_received(self) -> bool | None:
        self.eof = True
        state = self.state
        if state == C_TUNNEL:
            self._end_tunnel()
        elif state <= C_HEAD or state == C_LINGER:
            self.close()
        elif state == C_BODY or self.listener.tls is not None:
            self.abort()  # a body cut short; or TLS, which cannot stay half-open
        else:
            return True  # half-closed: the response still goes out, then the connection closes
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = C_CLOSED
        listener = self.listener
        listener.clients.discard(self)
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self._drop_upstream()
        self._end_exchange()
        if listener.closing and not listener.clients:
            listener._shutdown()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up is not None:
            self.up.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up is not None:
            self.up.resume()

    # --- closing and timeouts ----------------------------------------------------------------

    def abort(self) -> None:
        """Close now: the server was halted, or the exchange broke mid-response."""
        if self.state != C_CLOSED:
            self.state = C_CLOSED
            self.transport.abort()
        self._drop_upstream()

    def close(self) -> None:
        if self.state != C_CLOSED:
            self.state = C_CLOSED
            self.transport.close()

    def _drop_upstream(self) -> None:
        up = self.up
        if up is not None:
            self.up = None
            up.abort()

    def _fail(self, status: int) -> None:
        """Answer a short error and close: after a framing error nothing more is read."""
        self._drop_upstream()
        self._end_exchange()
        if self.state != C_CLOSED:
            self.transport.write(short_response(status))
            self.close()

    def listener_closing(self) -> None:
        if self.state == C_IDLE and not self.buf:
            self.close()
        else:
            self.keep = False

    def timed_out(self) -> None:
        state = self.state
        if state == C_IDLE:
            self.close()  # keep-alive timeout, or a connection that never sent a byte
        elif state == C_HEAD:
            self._fail(408)  # slowloris: the header timeout (HAProxy `timeout http-request`)
        elif state == C_TUNNEL:
            self._end_tunnel()
        elif state in (C_WAIT, C_BODY) and not self.responded:
            up = self.up
            self._fail(504 if state == C_WAIT and up is not None and up.state == U_HEAD else 408)
        else:
            self.abort()

    def _block(self, why: int) -> None:
        if not self.read_block and self.state != C_CLOSED:
            self.transport.pause_reading()
        self.read_block |= why

    def _unblock(self, why: int) -> None:
        if self.read_block & why:
            self.read_block &= ~why
            if not self.read_block and self.state != C_CLOSED:
                self.transport.resume_reading()

    # --- request side ----------------------------------------------------------------------

    def _head(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == C_IDLE and data[:1] in (b"\r", b"\n"):
            data = data.lstrip(b"\r\n")  # empty lines before a request (RFC 9112 §2.2)
            if not data:
                return
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if self.state == C_IDLE:
                # The header timeout runs from the first byte (from the accept for the first
                # request); a complete head never needs it.
                self.state = C_HEAD
                if not self.fresh:
                    timeouts = self.listener.runtime.service.timeouts
                    self.deadline = self.loop.time() + timeouts.http_request
            status = head_overflow(data)
            if status:
                self._fail(status)
            else:
                self.buf = data
            return
        runtime = self.runtime = self.listener.runtime
        persistence = runtime.service.persistence
        cookie = self.cookie_name = (
            persistence.cookie.encode() if persistence.kind == "http-cookie" else None
        )
        req = parse_request(data[:end], cookie)
        if isinstance(req, Reject):
            self._fail(req.status)
            return
        if len(data) > end + 4:
            self.buf = data[end + 4 :]
        self.req = req
        self.retried = self.responded = False
        self.tried = None
        self.body = None if req.framing == NO_BODY else BodyReader(req.framing, req.length)
        self.replayable = req.method in IDEMPOTENT
        if not req.keep_alive:
            self.keep = False
        self._route(req)

    def _route(self, req: Request) -> None:
        """Choose the server for this request (again after a failed connect) and send it."""
        runtime = self.runtime
        rs = None
        self.set_cookie = b""
        self.picked = False
        tried = self.tried
        kind = runtime.service.persistence.kind
        if kind == "http-cookie" and req.cookie is not None:
            rs = runtime.by_cookie(req.cookie)  # None: unknown, halted or down server
            if rs is not None and tried is not None and rs.label in tried:
                rs = None
        if rs is None:
            rs = runtime.pick(self.ip, tried or ())
            if rs is not None:
                self.picked = True
                if kind == "http-cookie":
                    self.set_cookie = self.listener.cookie_fields(runtime, rs.label)
        if rs is not None:
            key: Key = (rs.label, rs.address, rs.port or self.listener.vip_port, rs.reencrypt)
        else:
            fallback = runtime.fallback
            if fallback is None or (tried is not None and FALLBACK in tried):
                self._fail(503)
                return
            key = (FALLBACK, fallback.address, fallback.port or self.listener.vip_port, False)
        self.label = key[0]
        self.key = key
        self.stats = runtime.opened(key[0], self)
        pool = self.listener.pool
        while (up := pool.get(key)) is not None:
            up.pooled = False
            if up.state == U_IDLE and not up.transport.is_closing():
                self._attach(up, True)
                return
            up.close()
        self._start_connect(key)

    def _start_connect(self, key: Key) -> None:
        self.state = C_CONNECT
        self.deadline = _INF  # the connect timeout applies
        self.connecting = self.loop.create_task(self._connect(key))

    async def _connect(self, key: Key) -> None:
        label, address, port, tls = key
        runtime = self.runtime
        pool = self.listener.pool
        try:
            async with asyncio.timeout(runtime.service.timeouts.connect):
                _, up = await self.loop.create_connection(
                    lambda: Upstream(pool, key), address, port, ssl=_upstream_tls() if tls else None
                )
        except (OSError, TimeoutError, ValueError):  # ssl.SSLError is an OSError
            self.connecting = None
            if self.state != C_CONNECT or self.req is None:
                return
            # Nothing was sent: always safe to try the next server (DESIGN §8).
            if label != FALLBACK:
                runtime.connect_failed(label)
            self._end_exchange()
            self.tried = (self.tried or set()) | {label}
            self._route(self.req)
            return
        self.connecting = None
        if self.state != C_CONNECT:
            up.close()
        else:
            self._attach(up, False)

    def _attach(self, up: Upstream, reused: bool) -> None:
        """Send the request on `up`, with whatever part of its body is here already."""
        req = self.req
        assert req is not None
        self.up = up
        up.client = self
        up.reused = reused
        up.got_bytes = False
        up.head_request = req.method == b"HEAD"
        up.cookie_name = self.cookie_name
        up.state = U_HEAD
        if self.write_paused:
            up.pause()
        head = upstream_request_head(req, self.forwarded)
        up.transport.write(head)
        stats = self.stats
        stats.requests += 1
        stats.bytes_in += len(head)
        self.deadline = self.loop.time() + self.runtime.service.timeouts.http_response
        if self.body is None:
            self.state = C_WAIT
            if self.read_block & _HOLD and len(self.buf) <= HOLD_LIMIT:
                self._unblock(_HOLD)
            return
        self.state = C_BODY
        self.sent_body = [] if self.replayable else None
        rest = self.buf
        self.buf = b""
        self._unblock(_HOLD)
        if rest:
            self._body(rest)
        if self.eof and self.state == C_BODY:
            self.abort()  # the client half-closed before its body was complete

    def _body(self, data: bytes) -> None:
        body = self.body
        up = self.up
        assert body is not None and up is not None
        self.deadline = self.loop.time() + self.runtime.service.timeouts.http_response
        out, used = body.feed(data)
        if used < 0:
            # A broken chunked body: the remainder is never forwarded (research/http-proxy.md).
            if self.responded:
                self.abort()
            else:
                self._fail(400)
            return
        if out:
            up.transport.write(out)
            self.stats.bytes_in += len(out)
        kept = self.sent_body
        if kept is not None:
            if sum(map(len, kept)) + used > REPLAY_LIMIT:
                self.sent_body = None
            else:
                kept.append(data if used == len(data) else data[:used])
        if body.done:
            self.body = None
            if self.state == C_BODY:
                self.state = C_WAIT
            if used < len(data):
                self.buf += data[used:]
                if len(self.buf) > HOLD_LIMIT:
                    self._block(_HOLD)

    # --- response side (called by Upstream) --------------------------------------------------

    def interim(self, resp: Response) -> None:
        """Relay a 1xx (100 Continue, 103 Early Hints), never to an HTTP/1.0 client."""
        req = self.req
        assert req is not None
        if req.version == 11 and self.state != C_CLOSED:
            head = client_response_head(resp, 11, True)[0]
            self.responded = True
            self.transport.write(head)
            self.stats.bytes_out += len(head)

    def final_head(self, resp: Response) -> tuple[bytes, bool] | None:
        """The head of the final response -> (head, re-chunk the body); None refuses a 101
        the client did not ask for. Decides whether the client connection is kept."""
        req = self.req
        assert req is not None
        status = resp.status
        if status == 101:
            if req.upgrade is None or resp.upgrade is None:
                return None
            keep = True
        else:
            # Answered before the request body was complete: close after (lingering).
            keep = self.keep and self.state != C_BODY and not self.listener.closing
        head, rechunk_out, keep = client_response_head(resp, req.version, keep, self.set_cookie)
        self.keep = keep
        responses = self.stats.responses
        cls = _STATUS_CLASS.get(status // 100, "5xx")
        responses[cls] = responses.get(cls, 0) + 1
        self.responded = True
        return head, rechunk_out

    def start_tunnel(self) -> None:
        self.state = C_TUNNEL
        self.deadline = self.loop.time() + self.runtime.service.timeouts.idle
        rest = self.buf
        self.buf = b""
        self._unblock(_HOLD)
        if rest and self.up is not None:
            self.up.transport.write(rest)
            self.stats.bytes_in += len(rest)

    def _end_tunnel(self) -> None:
        up = self.up
        if up is not None:
            self.up = None
            up.close()
        self._end_exchange()
        self.close()

    def upstream_failed(self, up: Upstream, status: int) -> None:
        """The upstream broke the exchange: closed before any response byte, a bad response
        head (502), a truncated body. A pooled connection that closed just as it was reused
        gets the request once more on a fresh connection."""
        self.up = None
        up.abort()
        if self.state == C_CLOSED:
            return
        req = self.req
        if (
            req is not None
            and self.key is not None
            and up.reused
            and not up.got_bytes
            and not self.responded
            and not self.retried
            and self.replayable
            and self.state == C_WAIT
            and (req.framing == NO_BODY or self.sent_body is not None)
        ):
            # The close race: the server's keep-alive timeout closed the connection as it was
            # reused. No response byte came and the method is idempotent, so sending it again
            # is safe (RFC 9110 §9.2.2, research/http-proxy.md). The raw body goes back in
            # front of the buffer and is framed again.
            self.retried = True
            self.stats.requests -= 1
            if self.sent_body:
                self.buf = b"".join(self.sent_body) + self.buf
            if req.framing != NO_BODY:
                self.body = BodyReader(req.framing, req.length)
            self._start_connect(self.key)
        elif self.responded:
            self._end_exchange()
            self.abort()
        else:
            self._fail(status)

    def response_done(self, up: Upstream, reusable: bool) -> None:
        """The response is complete: pool the upstream, then the next request (or close)."""
        self.up = None
        up.client = None
        up.state = U_IDLE
        if up.paused:
            up.resume()
        state = self.state
        now = self.loop.time()
        if reusable and state == C_WAIT and self.listener.pool.put(up.key, up, now):
            up.pooled = True
        else:
            up.close()
        self._end_exchange()
        if state == C_CLOSED:
            return
        if state == C_BODY:
            # Answered before the client finished its body (an early 4xx, a refused
            # 100-continue): read and discard for a moment, then close, so that a reset does
            # not destroy the response on its way (a lingering close).
            self.state = C_LINGER
            self.deadline = now + LINGER
            self._unblock(_HOLD | _UPSTREAM_FULL)
            if self.listener.tls is None:
                self.transport.write_eof()
            return
        if not self.keep:
            self.close()
            return
        self.state = C_IDLE
        self.fresh = False
        self.req = None
        self.sent_body = None
        self.deadline = now + self.runtime.service.timeouts.http_keepalive
        if self.read_block:
            self._unblock(_HOLD | _UPSTREAM_FULL)
        if self.buf:
            self._head(b"")
            if self.eof and self.state == C_HEAD:
                self.close()  # half a request, and the client will send no more
        elif self.eof:
            self.close()

    def _end_exchange(self) -> None:
        """Stop counting the exchange on its server (active count, persistence hold)."""
        label = self.label
        if label is not None:
            self.label = None
            self.runtime.closed(label, self)
            if self.picked:
                self.picked = False
                self.runtime.release(self.ip, label)


class Upstream(asyncio.Protocol):
    """A connection to a real server: carries one exchange at a time, pooled in between."""

    transport: Any = None
    client: ClientConnection | None = None  # set by ClientConnection._attach
    state = U_IDLE
    buf = b""
    body: BodyReader | None = None
    until_close = False  # the body ends when the server closes
    keep_alive = False
    reused = False
    got_bytes = False
    head_request = False
    cookie_name: bytes | None = None
    paused = False
    pooled = False

    def __init__(self, pool: IdlePool[Key, Upstream], key: Key) -> None:
        self.pool = pool
        self.key = key

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def pause(self) -> None:
        if not self.paused and self.state != U_CLOSED:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.state != U_CLOSED:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.state != U_CLOSED:
            self.state = U_CLOSED
            self.client = None
            self.transport.close()

    def abort(self) -> None:
        if self.state != U_CLOSED:
            self.state = U_CLOSED
            self.client = None
            self.transport.abort()

    # This server's write buffer is full: stop reading the client until it drains.
    def pause_writing(self) -> None:
        if self.client is not None:
            self.client._block(_UPSTREAM_FULL)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client._unblock(_UPSTREAM_FULL)

    def data_received(self, data: bytes) -> None:
        client = self.client
        state = self.state
        if client is None:
            self.abort()  # bytes on an idle connection: out of step, never reuse it
        elif state == U_BODY:
            self._body(client, data, b"")
        elif state == U_HEAD:
            self._head(client, data)
        elif state == U_TUNNEL:
            client.transport.write(data)
            client.stats.bytes_out += len(data)
            client.deadline = client.loop.time() + client.runtime.service.timeouts.idle

    def _head(self, client: ClientConnection, data: bytes) -> None:
        self.got_bytes = True
        if self.buf:
            data = self.buf + data
            self.buf = b""
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_RESPONSE_HEAD:
                    client.upstream_failed(self, 502)
                else:
                    self.buf = data
                return
            resp = parse_response(data[:end], self.head_request, self.cookie_name)
            if isinstance(resp, Reject):
                client.upstream_failed(self, 502)
                return
            data = data[end + 4 :]
            if resp.status >= 200 or resp.status == 101:
                break
            client.interim(resp)
            if not data or client.state == C_CLOSED:
                return
        final = client.final_head(resp)
        if final is None:
            client.upstream_failed(self, 502)
            return
        head, rechunk_out = final
        self.keep_alive = resp.keep_alive
        if resp.status == 101:
            self.state = U_TUNNEL
            client.transport.write(head + data)
            client.stats.bytes_out += len(head) + len(data)
            client.start_tunnel()
        elif resp.framing == NO_BODY:
            client.transport.write(head)
            client.stats.bytes_out += len(head)
            client.response_done(self, self.keep_alive and not data)
        else:
            self.state = U_BODY
            self.until_close = resp.framing == UNTIL_CLOSE
            self.body = BodyReader(resp.framing, resp.length, rechunk_out)
            self._body(client, data, head)

    def _body(self, client: ClientConnection, data: bytes, head: bytes) -> None:
        body = self.body
        assert body is not None
        out, used = body.feed(data)
        if used < 0:
            client.upstream_failed(self, 502)  # a 502 if the head is not out yet, else a reset
            return
        if not head:
            if out:
                client.transport.write(out)
        elif len(out) <= 16384:
            client.transport.write(head + out)
        else:
            client.transport.writelines((head, out))  # no copy of a large first read
        client.stats.bytes_out += len(head) + len(out)
        if body.done:
            # bytes after the response: the server is out of step, the connection is not reused
            client.response_done(self, self.keep_alive and used == len(data))
        else:
            client.deadline = client.loop.time() + client.runtime.service.timeouts.http_response

    def eof_received(self) -> bool | None:
        self._lost()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        if self.pooled:
            self.pool.discard(self.key, self)

    def _lost(self) -> None:
        client = self.client
        state = self.state
        if client is None or state == U_CLOSED:
            self.state = U_CLOSED
            return
        if state == U_BODY and self.until_close:
            client.keep = False  # the end of a close-delimited body: the client's too
            client.response_done(self, False)
        elif state == U_TUNNEL:
            client._end_tunnel()
        else:
            client.upstream_failed(self, 502)  # no response yet, or a body cut short
        self.state = U_CLOSED
