"""The `l7-http` data plane: an HTTP/1.1 reverse proxy for one listening socket.

asyncio.Protocol callbacks on uvloop, never streams (research/peers.md: a coroutine switch per
read costs a third of the throughput). The message rules live in pacslb.core.http*, and the
heads are parsed through pacslb.core.heads (a C fast path for the usual heads, the Python rules
for the rest); the proxy moves bytes and keeps state, one job per module:

- `HttpListener` (here): accepts, holds the upstream pool, sweeps the deadlines;
- plain (not TLS) clients on their raw sockets (proxy/plain.py: fewer system calls per
  connection than uvloop's transports); TLS clients on uvloop's;
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
import logging
import select
import socket
import ssl
from typing import Any

from pacslb.core.http import set_cookie_fields
from pacslb.core.pool import IdlePool
from pacslb.proxy.budget import ServiceBudget, out_of_descriptors
from pacslb.proxy.http_client import ClientConnection
from pacslb.proxy.http_states import Key
from pacslb.proxy.http_upstream import Upstream
from pacslb.proxy.plain import PlainTransport, Poller, accept_plain
from pacslb.proxy.runtime import FALLBACK, ServiceRuntime, cookie_id
from pacslb.proxy.tcp import ACCEPT_BATCH, ACCEPT_PAUSE, ACCEPT_RETRY

__all__ = ["HttpListener"]

log = logging.getLogger(__name__)

BACKLOG = 4096
PLAIN_SOCKETS = hasattr(select, "epoll") and hasattr(socket, "MSG_DONTWAIT")
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
        budget: ServiceBudget | None = None,
    ) -> None:
        self.sock = sock
        self.runtime = runtime  # may be swapped by the caller: new requests use the current one
        self.vip_port = vip_port
        self.tls = tls
        # Bounded per real server (label, address, port, TLS), whatever the source address:
        # with source: client each client address has its own pooled connections. (Keys
        # without a bound source are one a server: bounded alone, at no extra cost.)
        self.pool: IdlePool[Key, Upstream] = IdlePool(
            POOL_MAX_IDLE,
            POOL_IDLE_TIMEOUT,
            group=lambda key: key[:4] if key[4] else None,
            evicted=_close_idle,
        )
        # the service's connection budget in this worker, shared by its listeners; a client
        # counts from connection_made to connection_lost (ClientConnection takes and gives)
        self.budget = budget if budget is not None else ServiceBudget(runtime.service.label)
        self.clients: set[ClientConnection] = set()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._poller: Poller | None = None  # plain: our own sockets; TLS: uvloop's transports
        self._accepting = False
        self._retry: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._cookies: dict[tuple[str, str, int | None, str], bytes] = {}
        # clients on their way to uvloop's transports (handed over, or taken while closing)
        self._pending: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        if self.tls is None and PLAIN_SOCKETS:
            # Inherited by every accepted socket (Linux), so nothing is set per connection.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._poller = Poller(loop)
        # Both kinds accept here (not loop.create_server), so that a listener at its
        # connection budget can stop accepting and resume: an asyncio Server cannot pause.
        self._resume()
        self._sweeper = loop.call_later(self._interval(), self._sweep)

    def close(self) -> None:
        """Stop accepting; open connections finish their current exchange, then close.

        Clients already in the kernel's accept queue are still taken (each gets one exchange),
        so that a listener replaced under SO_REUSEPORT resets nobody."""
        if self.closing:
            return
        self.closing = True
        for client in list(self.clients):
            client.listener_closing()
        if self._accepting:
            self._accept(BACKLOG, drain=True)
        self.budget.stop_waiting(self)
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.sock.close()
        if not self.clients and not self._pending:
            self._shutdown()

    # --- accepting ------------------------------------------------------------------------

    def _resume(self) -> None:
        self._retry = None
        if not self.closing and not self._accepting and self.loop is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self._accepting = True

    def _pause(self) -> None:
        if self._accepting and self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            self._accepting = False

    def resume_accepting(self) -> None:
        """Room again in the service's budget (called by the budget)."""
        if self._retry is None:
            self._resume()

    def _accept(self, limit: int = ACCEPT_BATCH, drain: bool = False) -> None:
        """Accept up to `limit` clients, within the budget unless `drain` (closing)."""
        assert self.loop is not None
        room = self.budget.room()
        if room <= 0 and not drain:
            # At the budget: stop accepting; the kernel's queue holds the clients until a
            # connection of this service closes (ServiceBudget.give wakes us).
            self._pause()
            self.budget.wait(self, f"{self.sock.getsockname()[0]}:{self.vip_port}")
            return
        limit = limit if drain else min(limit, room)
        try:
            if self._poller is not None:
                accept_plain(
                    self.sock,
                    self._poller,
                    lambda: ClientConnection(self),
                    limit,
                    self._hand_over,
                )
            else:
                self._accept_to_uvloop(limit)
        except OSError as exc:
            if exc.errno in ACCEPT_PAUSE:
                # The socket stays readable: pause rather than spin (as asyncio does).
                log.warning(
                    "accept on port %s: %s; pausing %.1f s", self.vip_port, exc, ACCEPT_RETRY
                )
                out_of_descriptors(self.budget.label, f"port {self.vip_port}", exc)
                self._pause()
                self._retry = self.loop.call_later(ACCEPT_RETRY, self._resume)
            else:
                log.error("accept on port %s: %s", self.vip_port, exc)

    def _accept_to_uvloop(self, limit: int) -> None:
        """TLS clients (and plain ones where there is no epoll) go to uvloop's transports
        (the SSL layer lives there); each counts in the budget from its accept, through its
        handshake (then it is a client)."""
        loop = self.loop
        assert loop is not None
        timeout = self.runtime.service.timeouts.http_request if self.tls else None
        for _ in range(limit):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            conn.setblocking(False)
            self.budget.take()
            task = loop.create_task(
                loop.connect_accepted_socket(
                    lambda: ClientConnection(self),
                    conn,
                    ssl=self.tls,
                    ssl_handshake_timeout=timeout,
                )
            )
            self._pending.add(task)
            task.add_done_callback(self._handshake_done)

    def _handshake_done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        self.budget.give()
        if not task.cancelled() and task.exception() is not None:
            log.debug("TLS client lost before its first request: %r", task.exception())

    def _hand_over(self, plain: PlainTransport, first: bytes) -> bool:
        """A client whose first request keeps the connection goes to uvloop's transports:
        per request they cost a few µs less than ours (C instead of Python, no second epoll),
        while ours save more than that on a connection that carries one exchange. A wrong
        guess costs speed only: both serve every client alike."""
        client = plain.get_protocol()
        if _one_exchange(first) or self.loop is None or not isinstance(client, ClientConnection):
            return False
        sock = plain.detach()
        # A `socket.socket`, which uvloop detaches when the transport closes the fd (it would
        # close a bare _socket.socket again, and with it whatever reused the number).
        handed = socket.socket(sock.family, socket.SOCK_STREAM, 0, sock.detach())
        client.first = first  # read here already: handled when uvloop's transport is made
        task = self.loop.create_task(self.loop.connect_accepted_socket(lambda: client, handed))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        task.add_done_callback(lambda t: _handed_over(t, client))
        return True

    def _shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for up in self.pool.clear():
            up.close()
        if self._poller is not None:
            self._poller.close()

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
        for up in self.pool.expire(now, lambda key: _gone(runtime, key[0]) or _stale(runtime, key)):
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


def _one_exchange(first: bytes) -> bool:
    """Whether the first request says it is the connection's only one (`Connection: close`,
    or HTTP/1.0): a guess for the choice of transport, never for the exchange itself."""
    end = first.find(b"\r\n\r\n")
    head = (first if end < 0 else first[:end]).lower()
    return b"\nconnection: close" in head or b" http/1.0\r\n" in head


def _handed_over(task: asyncio.Task[Any], client: ClientConnection) -> None:
    exc = None if task.cancelled() else task.exception()
    if task.cancelled() or exc is not None:
        log.info("client lost while handed to uvloop: %r", exc)
        client.connection_lost(exc if isinstance(exc, Exception) else None)


def _close_idle(up: Upstream) -> None:
    """An idle pooled upstream that made room for a newer one (see IdlePool's group)."""
    up.pooled = False
    up.close()


def _stale(runtime: ServiceRuntime, key: Key) -> bool:
    """An idle connection from a source the service no longer uses (its `source:` changed):
    never reused, so closed at once (a transparent one also holds the return path, which
    stays while any transparent connection is open: engines/tproxy.py)."""
    bind = key[4]
    if not bind:
        return False
    service = runtime.service
    if service.source == "client":
        return False
    return bind != (service.vip if service.source == "vip" else service.source)


def _gone(runtime: ServiceRuntime, label: str) -> bool:
    """A server that lost its connections (halted, down, removed): its idle ones close too."""
    rs = runtime.server(label)
    return label != FALLBACK and (rs is None or not rs.keeps_existing)
