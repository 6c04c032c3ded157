"""A connection from the l7-http proxy to a real server: one exchange at a time, pooled in
between (bounded, idle ones closed before the server's own keep-alive timeout)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pacslb.core.heads import parse_response
from pacslb.core.http import LENGTH, MAX_RESPONSE_HEAD, NO_BODY, UNTIL_CLOSE, Reject
from pacslb.core.http_body import BodyReader
from pacslb.core.pool import IdlePool
from pacslb.proxy.http_states import (
    C_CLOSED,
    U_BODY,
    U_CLOSED,
    U_HEAD,
    U_IDLE,
    U_TUNNEL,
    UPSTREAM_FULL,
    Key,
)

if TYPE_CHECKING:
    from pacslb.proxy.http_client import ClientConnection


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
            self.client._block(UPSTREAM_FULL)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client._unblock(UPSTREAM_FULL)

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
                    client.upstream_failed(self, 502, "response head too long")
                else:
                    self.buf = data
                return
            resp = parse_response(data[:end], self.head_request, self.cookie_name)
            if isinstance(resp, Reject):
                client.upstream_failed(self, 502, f"bad response head: {resp.reason}")
                return
            data = data[end + 4 :]
            if resp.status >= 200 or resp.status == 101:
                break
            client.interim(resp)
            if not data or client.state == C_CLOSED:
                return
        final = client.final_head(resp)
        if final is None:
            client.upstream_failed(self, 502, "a 101 response the client did not ask for")
            return
        head, rechunk_out = final
        keep_alive = self.keep_alive = resp.keep_alive
        framing = resp.framing
        if framing == LENGTH and len(data) == resp.length:
            # The usual small response: its whole body came with the head. One write, and no
            # body reader (what BodyReader would decide for this case, in fewer steps).
            if len(data) <= 16384:
                client.transport.write(head + data)
            else:
                client.transport.writelines((head, data))  # no copy of a large first read
            client.stats.bytes_out += len(head) + len(data)
            client.response_done(self, keep_alive)
        elif resp.status == 101:
            self.state = U_TUNNEL
            client.transport.write(head + data)
            client.stats.bytes_out += len(head) + len(data)
            client.start_tunnel()
        elif framing == NO_BODY:
            client.transport.write(head)
            client.stats.bytes_out += len(head)
            client.response_done(self, keep_alive and not data)
        else:
            self.state = U_BODY
            self.until_close = framing == UNTIL_CLOSE
            self.body = BodyReader(framing, resp.length, rechunk_out)
            self._body(client, data, head)

    def _body(self, client: ClientConnection, data: bytes, head: bytes) -> None:
        body = self.body
        assert body is not None
        out, used = body.feed(data)
        if used < 0:
            # a 502 if the head is not out yet, else a reset
            client.upstream_failed(self, 502, "bad response body")
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
        self._lost("closed")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"{exc}" if exc is not None else "closed")
        if self.pooled:
            self.pool.discard(self.key, self)

    def _lost(self, how: str) -> None:
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
            # no response yet, or a body cut short
            client.upstream_failed(self, 502, f"{how} before a complete response")
        self.state = U_CLOSED
