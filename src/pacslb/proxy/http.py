"""The `l7-http` data plane: an HTTP/1.1 reverse proxy for one listening socket.

asyncio.Protocol callbacks on uvloop, never streams (research/peers.md: a coroutine switch per
read costs a third of the throughput). The message rules live in pacslb.core.http*; the proxy
moves bytes and keeps state, one job per module:

- `HttpListener` (here): accepts, holds the upstream pool, sweeps the deadlines;
- a `ClientConnection` (http_client.py) per accepted connection: keep-alive, one request at a
  time (pipelined requests wait in its buffer until the previous response is finished,
  RFC 9112 §9.3.2);
- an `Upstream` (http_upstream.py) per connection to a real server, pooled between requests
  (bounded, idle ones closed after 30 s -- shorter than IIS's 120 s keep-alive, so the server
  rarely closes first);
- per-request scheduling (`ServiceRuntime.pick`) unless a persistence cookie pins the request;
- bodies streamed both ways with backpressure: when one side's write buffer is full
  (`pause_writing`) the other side stops reading, so a 1 GB download does not grow memory;
- timers without per-request timer objects: every connection holds a deadline, and one sweep
  per listener checks them a few times per second.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from pacslb.core.http import set_cookie_fields
from pacslb.core.pool import IdlePool
from pacslb.proxy.http_client import ClientConnection
from pacslb.proxy.http_states import Key
from pacslb.proxy.http_upstream import Upstream
from pacslb.proxy.runtime import FALLBACK, ServiceRuntime, cookie_id

__all__ = ["HttpListener"]

BACKLOG = 4096
POOL_IDLE_TIMEOUT = 30.0  # seconds an idle upstream connection is kept (IIS closes at 120 s)
POOL_MAX_IDLE = 128  # idle upstream connections kept per real server


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
