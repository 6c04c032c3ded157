"""One client connection of the l7-http proxy: parses its requests, routes each one to a real
server (proxy/http_upstream.py carries it there), relays the response back."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pacslb.core.heads import parse_request
from pacslb.core.http import (
    IDEMPOTENT,
    NO_BODY,
    Reject,
    Request,
    Response,
    forwarded_fields,
    upstream_request_head,
)
from pacslb.core.http_body import BodyReader, head_overflow
from pacslb.core.http_response import client_response_head, short_response
from pacslb.proxy.http_states import (
    C_BODY,
    C_CLOSED,
    C_CONNECT,
    C_HEAD,
    C_IDLE,
    C_LINGER,
    C_TUNNEL,
    C_WAIT,
    HOLD,
    HOLD_LIMIT,
    INF,
    LINGER,
    LINGER_BYTES,
    REPLAY_LIMIT,
    U_HEAD,
    U_IDLE,
    UPSTREAM_FULL,
    Key,
)
from pacslb.proxy.http_upstream import Upstream
from pacslb.proxy.runtime import FALLBACK, NO_SERVER, ServerStats
from pacslb.proxy.source import (
    SourceError,
    bind_address,
    bind_failed,
    open_upstream,
    transparent_timed_out,
)
from pacslb.proxy.tls import upstream_tls

if TYPE_CHECKING:
    from pacslb.proxy.http import HttpListener

_NO_STATS = ServerStats()  # stands in until a connection's first request is routed


class ClientConnection(asyncio.Protocol):
    """One client connection: parses its requests, routes each one, relays the responses."""

    # Defaults at class level keep the per-connection setup short (new connections per second
    # are the weakest figure of a Python proxy); instances assign what changes.
    transport: Any = None
    state = C_IDLE
    buf = b""
    deadline = INF
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
    picked = False  # placed by runtime.pick() with persistence: release() it at the end
    set_cookie = b""
    key: Key | None = None
    up: Upstream | None = None
    tried: set[str] | None = None  # servers whose connect failed for this request
    replayable = False
    sent_body: list[bytes] | None = None  # raw body bytes kept for a close-race replay
    retried = False  # sent once more already (a request is retried at most once)
    responded = False  # a byte of the response went to the client
    connecting: asyncio.Task[None] | None = None
    first = b""  # bytes read before uvloop's transport took over (HttpListener._hand_over)
    lingered = 0  # bytes discarded in C_LINGER

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        assert listener.loop is not None
        self.loop = listener.loop
        self.runtime = listener.runtime
        self.ip = ""
        self.forwarded = b""

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:
            self._transport_changed(transport)
            return
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "0.0.0.0"
        listener = self.listener
        self.forwarded = forwarded_fields(self.ip, listener.tls is not None)
        listener.clients.add(self)
        listener.budget.take()  # a client counts in the budget until connection_lost
        self.deadline = self.loop.time() + listener.runtime.service.timeouts.http_request
        # A client taken from the accept queue of a closing listener gets its one exchange:
        # the response of a closing listener always ends the connection (see final_head).

    def _transport_changed(self, transport: asyncio.BaseTransport) -> None:
        """Handed from our plain socket to uvloop's transport (HttpListener._hand_over),
        with the first bytes, read already: they go first, before anything uvloop reads."""
        self.transport = transport
        first, self.first = self.first, b""
        if self.state == C_CLOSED:
            transport.close()  # timed out or halted while on its way
        elif first:
            self.data_received(first)

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
                self._block(HOLD)
        elif state == C_LINGER:
            self.lingered += len(data)  # discarded, up to a bound
            if self.lingered > LINGER_BYTES:
                self.close()
        # C_CLOSED: discarded

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
        try:
            listener.clients.remove(self)
        except KeyError:
            pass  # lost twice: counted once
        else:
            listener.budget.give()
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

    def abort(self, reason: str = "") -> None:
        """Close now: the server was halted, or the exchange broke mid-response (`reason` is
        unused: a reset says nothing to an HTTP client)."""
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
        """Answer a short error and close: after a framing error nothing more is forwarded.
        A lingering close only while the client may still be sending (its head or body not
        read to the end, or more bytes after them); a request read in full (a 502, 503 or
        504) closes at once, so that an error storm does not hold every client's descriptor
        and budget slot for LINGER seconds."""
        self._drop_upstream()
        self._end_exchange()
        if self.state != C_CLOSED:
            self.transport.write(short_response(status))
            if self.req is None or self.body is not None or self.buf:
                self._linger()
            else:
                self.close()

    def _proxy_error(self, status: int) -> None:
        """The proxy's own answer about the server of this exchange (502, 504), counted in
        that server's responses as HAProxy counts them, so status and /metrics show them."""
        self.stats.classes[5] += 1
        self._fail(status)

    def _linger(self) -> None:
        """Close after an answer the client may still be sending a request for: the end of
        the response (FIN) goes out, what the client still sends is read and discarded for
        LINGER seconds or LINGER_BYTES, then the connection closes (a lingering close)."""
        if self.eof:
            self.close()  # the client sends nothing more: nothing to wait for
            return
        self.state = C_LINGER
        self.keep = False
        self.lingered = 0
        self.deadline = self.loop.time() + LINGER
        self._unblock(HOLD | UPSTREAM_FULL)
        if self.listener.tls is None:
            self.transport.write_eof()  # TLS cannot half-close: the client reads to the end

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
            if state == C_WAIT and up is not None and up.state == U_HEAD and self.label:
                timeout = self.runtime.service.timeouts.http_response
                self.runtime.failed(self.label, f"no response in {timeout:g} s")
                self._proxy_error(504)
            else:
                self._fail(408)
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
        req = parse_request(data[:end], runtime.cookie_name)
        if isinstance(req, Reject):
            self._fail(req.status)
            return
        if len(data) > end + 4:
            self.buf = data[end + 4 :]
        self.req = req
        self.cookie_name = runtime.cookie_name
        self.retried = self.responded = False
        self.tried = None
        self.body = None if req.framing == NO_BODY else BodyReader(req.framing, req.length)
        self.replayable = req.method in IDEMPOTENT
        if not req.keep_alive:
            self.keep = False
        self._route(req)

    def _route(self, req: Request, retry_status: int = 0) -> None:
        """Choose the server for this request (again after a failed connect) and send it.
        A retry (`retry_status`, the answer if no other server is left) goes to a real server
        not tried yet, never the fallback."""
        runtime = self.runtime
        rs = None
        self.set_cookie = b""
        self.picked = False
        tried = self.tried
        cookies = self.cookie_name is not None  # http-cookie persistence
        if cookies and req.cookie is not None:
            rs = runtime.by_cookie(req.cookie)  # None: unknown, halted or down server
            if rs is not None and tried is not None and rs.label in tried:
                rs = None
        if rs is None:
            rs = runtime.pick(self.ip, tried or ())
            if rs is not None:
                self.picked = runtime.persistent
                if cookies:
                    self.set_cookie = self.listener.cookie_fields(runtime, rs.label)
        if rs is not None:
            port = rs.port or self.listener.vip_port
            bind = bind_address(runtime.service, self.ip, rs.address)
            key: Key = (rs.label, rs.address, port, rs.reencrypt, bind)
            if retry_status:
                # Another server takes it: the request moves off the one that failed.
                self.stats.requests -= 1
                self.stats.retries += 1
                self._rewind(req)
        elif retry_status:
            self._proxy_error(retry_status)  # against the server that failed (self.stats)
            return
        else:
            fallback = runtime.fallback
            if fallback is None or (tried is not None and FALLBACK in tried):
                # No server: counted against the service (its no-server row), as HAProxy
                # counts a 503 of a backend without servers.
                self.stats = runtime.stats.setdefault(NO_SERVER, ServerStats())
                self._proxy_error(503)
                return
            port = fallback.port or self.listener.vip_port
            bind = bind_address(runtime.service, self.ip, fallback.address)
            key = (FALLBACK, fallback.address, port, False, bind)
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
        self.deadline = INF  # the connect timeout applies
        self.connecting = self.loop.create_task(self._connect(key))

    async def _connect(self, key: Key) -> None:
        label, address, port, tls, bind = key
        runtime = self.runtime
        pool = self.listener.pool
        try:
            async with asyncio.timeout(runtime.service.timeouts.connect):
                _, up = await open_upstream(
                    self.loop,
                    lambda: Upstream(pool, key),
                    (address, port),
                    bind,
                    runtime.service.source == "client",
                    upstream_tls() if tls else None,
                )
        except SourceError as exc:  # our bind failed, not the server: no passive health
            self.connecting = None
            bind_failed(runtime.service.label, bind, exc.cause)
            if self.state == C_CONNECT and self.req is not None:
                self._proxy_error(503)
            return
        except (OSError, TimeoutError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.connecting = None
            if self.state != C_CONNECT or self.req is None:
                return
            if isinstance(exc, TimeoutError) and bind and runtime.service.source == "client":
                transparent_timed_out(runtime.service.label, label)
            # Nothing was sent: always safe to try the next server (DESIGN §8).
            if label != FALLBACK:
                runtime.connect_failed(label, f"connect: {exc or 'timed out'}")
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
            if self.read_block & HOLD and len(self.buf) <= HOLD_LIMIT:
                self._unblock(HOLD)
            return
        self.state = C_BODY
        self.sent_body = [] if self.replayable else None
        rest = self.buf
        self.buf = b""
        self._unblock(HOLD)
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
                    self._block(HOLD)

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
        stats = self.stats
        stats.classes[status // 100 if status < 600 else 5] += 1  # ServerStats.classes
        if status < 500 or not self.runtime.passive_5xx:
            stats.failing = 0  # passive health: an answer ends a run of failures
        elif self.label is not None:
            self.runtime.failed(self.label, f"answered {status}")
        self.responded = True
        return head, rechunk_out

    def start_tunnel(self) -> None:
        self.state = C_TUNNEL
        self.deadline = self.loop.time() + self.runtime.service.timeouts.idle
        rest = self.buf
        self.buf = b""
        self._unblock(HOLD)
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

    def upstream_failed(self, up: Upstream, status: int, reason: str) -> None:
        """The upstream broke the exchange: closed or reset before any response byte, a bad
        response head (502), a truncated body. Before any response byte, an idempotent request
        whose whole body was sent and kept goes once more (RFC 9110 §9.2.2): on a fresh
        connection when a pooled one was closed by the server as it was reused (the
        keep-alive race, not a failure of the server), else on another real server."""
        self.up = None
        up.abort()
        if self.state == C_CLOSED:
            return
        req = self.req
        stale = up.reused and not up.got_bytes
        if self.label is not None and not self.responded and not stale:
            self.runtime.failed(self.label, reason)  # passive health
        if (
            req is not None
            and self.key is not None
            and not up.got_bytes
            and not self.responded
            and not self.retried
            and self.replayable
            and self.state == C_WAIT
            and (req.framing == NO_BODY or self.sent_body is not None)
        ):
            # No response byte came and the method is idempotent, so sending it again is safe
            # (research/http-proxy.md).
            self.retried = True
            if stale:
                # The same server on a fresh connection: counted as one request, and not as a
                # retry (the server did not fail; it closed an idle connection as we reused it).
                self.stats.requests -= 1
                self._rewind(req)
                self._start_connect(self.key)
            else:
                # Counted as a retry only if another server takes it (_route).
                self.tried = (self.tried or set()) | {self.key[0]}
                self._end_exchange()
                self._route(req, status)
        elif self.responded:
            self._end_exchange()
            self.abort()
        else:
            self._proxy_error(status)

    def _rewind(self, req: Request) -> None:
        """Ready the request to be sent again: its raw body (kept) goes back in front of the
        buffer and is framed again."""
        if self.sent_body:
            self.buf = b"".join(self.sent_body) + self.buf
        if req.framing != NO_BODY:
            self.body = BodyReader(req.framing, req.length)

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
            # 100-continue): a lingering close, so that a reset does not destroy the response
            # on its way.
            self._linger()
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
            self._unblock(HOLD | UPSTREAM_FULL)
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
