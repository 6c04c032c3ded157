"""The `l7-tcp` data plane: a full TCP proxy for one listening socket.

Each accepted client gets a new connection to the real server that `ServiceRuntime.pick()`
chooses; a refused or timed-out connect is retried on another server (DESIGN §8: the client
never sees it), then the fallback server, then the client is reset. The bytes are relayed with
`os.splice` through one pipe per direction, so the kernel moves them and Python only steers
(research/peers.md: a splice relay beats HAProxy `mode tcp` on bulk transfers).

Everything runs in loop callbacks (`add_reader`/`add_writer` on the raw fds), no task or
coroutine per connection: new connections per second are a Python proxy's weakest figure.

Backpressure: a direction reads its source while its pipe is empty. When the destination
would block, what the source holds is taken into the pipe's room once, the source's reader is
removed and a writer is added on the destination; once the pipe drains, the reader comes back.
Memory per connection is bounded by the two pipes.

Half-close (RFC 9293 §3.6): EOF from one side is passed on as shutdown(SHUT_WR) on the other
once its pipe has drained; the connection ends when both directions have ended, or on the first
error (then both sockets are reset, as the peer that failed would have).

Idle connections (DICOM associations may be quiet for minutes, research/dicom.md) are found by
one periodic sweep per listener that compares byte counts, so the relay does no timer work.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
import time

from pacslb.proxy.budget import ServiceBudget, out_of_descriptors
from pacslb.proxy.runtime import FALLBACK, STOPPING, ServerStats, ServiceRuntime
from pacslb.proxy.source import (
    bind_address,
    bind_failed,
    transparent_timed_out,
    upstream_socket,
)

__all__ = ["HAVE_SPLICE", "KEEPALIVE", "TcpListener"]

log = logging.getLogger(__name__)

HAVE_SPLICE = hasattr(os, "splice") and hasattr(os, "pipe2")
CHUNK = 1 << 20  # bytes per splice call: the kernel stops earlier when the socket runs dry
PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ; unprivileged users past pipe-user-pages-soft keep 64 KiB
COPY_CHUNK = 1 << 16  # the recv/send path (no splice): one buffer per direction
# A read shorter than this emptied the socket (as HAProxy's raw_sock reads it). Half of a
# 64 KiB pipe, so that a read cut short by a full pipe is rarely taken for it (which would
# only cost a return to the loop, which reports the socket readable again at once).
DRY_READ = 1 << 15
ACCEPT_BATCH = 128  # accepts per readiness event, so one busy listener cannot starve the rest
ACCEPT_RETRY = 0.1  # seconds to pause accepting when out of fds/memory
BACKLOG_DRAIN = 65536  # accepts at most when closing: whatever the accept queue still holds
PIPE_POOL = 128  # empty pipes kept per listener for the next connections (4 syscalls each)
MAX_TRIES = 3  # real servers tried per connection (then the fallback)
# TCP keepalive on both sides: a dead peer behind a quiet DICOM association is found in
# idle + interval * count seconds (60 + 10 * 6 = 2 min) without sending application bytes.
KEEPALIVE = (60, 10, 6)

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_PIPE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
# Linux copies socket options from the listening socket to the accepted ones (sk_clone_lock),
# which saves five setsockopt calls per client; elsewhere they are set per connection.
_INHERITS_OPTIONS = sys.platform.startswith("linux")
ACCEPT_PAUSE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _socket_options() -> list[tuple[int, int, int]]:
    opts = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),  # DICOM PDUs stall on Nagle (dicom.md)
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    idle, interval, count = KEEPALIVE
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
    ):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return opts


_OPTIONS = _socket_options()


def _set_options(sock: socket.socket) -> None:
    for level, name, value in _OPTIONS:
        sock.setsockopt(level, name, value)


class TcpListener:
    """Accepts on one listening socket and relays each connection to a real server.

    `sock` is a bound, listening, non-blocking TCP socket; the listener owns it from now on
    and closes it in `close()`. `runtime` may be replaced at any time: new connections use the
    current one, established connections keep reporting to the one that placed them.
    `budget` is the service's connection budget in this worker, shared by its listeners (none:
    unlimited).
    """

    def __init__(
        self,
        sock: socket.socket,
        runtime: ServiceRuntime,
        vip_port: int,
        *,
        splice: bool | None = None,
        budget: ServiceBudget | None = None,
    ) -> None:
        self.sock = sock
        self.runtime = runtime
        self.vip_port = vip_port
        self.budget = budget if budget is not None else ServiceBudget(runtime.service.label)
        self.connections: set[_Connection] = set()
        self.use_splice = HAVE_SPLICE if splice is None else (splice and HAVE_SPLICE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = sock.fileno()
        self._accepting = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._pipes: list[tuple[int, int]] = []  # empty pipes for the next connections

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin accepting on the running loop."""
        if self._closed or self._loop is not None:
            raise RuntimeError("listener already started or closed")
        self._loop = asyncio.get_running_loop()
        if _INHERITS_OPTIONS:
            _set_options(self.sock)
        self._resume()
        self._schedule_sweep()

    def close(self) -> None:
        """Stop accepting and close the listening socket; established connections go on
        (a removed VIP lets its connections finish). Clients already in the accept queue are
        still taken, so that a listener replaced under SO_REUSEPORT drops nobody."""
        if self._closed:
            return
        if self._loop is not None and self._accepting:
            with contextlib.suppress(Exception):
                self._accept(BACKLOG_DRAIN, drain=True)
        self._closed = True
        self.budget.stop_waiting(self)
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.sock.close()
        if not self.connections:
            self._finished()

    def abort_all(self) -> int:
        """Reset every connection of this listener (process shutdown); returns how many."""
        conns = list(self.connections)
        for conn in conns:
            conn.abort(STOPPING)
        return len(conns)

    # --- accepting -------------------------------------------------------------------------

    def _resume(self) -> None:
        self._retry = None
        if not self._closed and not self._accepting and self._loop is not None:
            self._loop.add_reader(self._fd, self._accept)
            self._accepting = True

    def _pause(self) -> None:
        if self._accepting and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._accepting = False

    def resume_accepting(self) -> None:
        """Room again in the service's budget (called by the budget)."""
        if self._retry is None:
            self._resume()

    def _accept(self, limit: int = ACCEPT_BATCH, drain: bool = False) -> None:
        """Accept up to `limit` clients, within the budget unless `drain` (closing: what the
        queue holds is taken, so that a listener replaced under SO_REUSEPORT drops nobody)."""
        accept = self.sock.accept
        budget = self.budget
        room = budget.room()
        if room <= 0 and not drain:
            # At the budget: stop accepting; the kernel's queue holds the clients until a
            # connection of this service closes (ServiceBudget.give wakes us).
            self._pause()
            budget.wait(self, f"{self.sock.getsockname()[0]}:{self.vip_port}")
            return
        for _ in range(limit if drain else min(limit, room)):
            try:
                client, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_PAUSE and self._loop is not None:
                    # The socket stays readable: pause rather than spin (as asyncio does).
                    log.warning(
                        "accept on port %s: %s; pausing %.1f s", self.vip_port, exc, ACCEPT_RETRY
                    )
                    out_of_descriptors(budget.label, f"port {self.vip_port}", exc)
                    self._pause()
                    self._retry = self._loop.call_later(ACCEPT_RETRY, self._resume)
                    return
                log.error("accept on port %s: %s", self.vip_port, exc)
                return
            conn = self._connection(client, addr[0])
            self.connections.add(conn)
            budget.take()
            conn.start()

    def _connection(self, client: socket.socket, client_ip: str) -> _Connection:
        """A new client's connection (l7-dicom's listener makes its own kind)."""
        return _Connection(self, client, client_ip)

    # --- idle sweep ------------------------------------------------------------------------

    def _sweep_interval(self) -> float:
        idle = self.runtime.service.timeouts.idle
        return min(max(idle / 4, 0.05), 30.0)

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)

    def _sweep(self) -> None:
        """Close connections that moved no byte for `timeouts.idle` seconds.

        A connection counts as active at a sweep when its byte count changed since the last
        one, so a quiet connection is closed between idle and idle + one interval after its
        last byte (the interval is idle/4, at most 30 s)."""
        self._sweeper = None
        now = time.monotonic()
        idle = self.runtime.service.timeouts.idle
        try:
            for conn in list(self.connections):
                moved = conn.moved()
                if moved != conn.seen:
                    conn.seen = moved
                    conn.last_active = now
                elif now - conn.last_active >= idle:
                    log.debug("idle timeout after %.1f s: %s", idle, conn)
                    conn.abort(f"idle for {idle:g} s")
        finally:
            if not self._closed or self.connections:
                self._schedule_sweep()

    def _forget(self, conn: _Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
            self.budget.give()
        if self._closed and not self.connections:
            self._finished()

    def _finished(self) -> None:
        """Closed and no connection left: nothing more to sweep, no pipe to keep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._pipes:
            r, w = self._pipes.pop()
            os.close(r)
            os.close(w)


class _Pump:
    """One direction of a connection: reads `src`, writes `dst`, through a pipe (splice).

    Invariant: `pending` bytes sit in the pipe; in `run` the source is read only when it is
    empty, so a BlockingIOError with pending == 0 means the source has nothing, and otherwise
    that the destination is full (then `fill` reads once more). Exactly one of `reading` (a
    reader on src) and `writing` (a writer on dst) is set while the direction is alive."""

    __slots__ = (
        "conn",
        "done",
        "dst",
        "dst_fd",
        "eof",
        "inbound",
        "loop",
        "peer",
        "pending",
        "pipe_r",
        "pipe_w",
        "reading",
        "src",
        "src_fd",
        "stats",
        "total",
        "writing",
    )

    def __init__(
        self,
        conn: _Connection,
        src: socket.socket,
        dst: socket.socket,
        stats: ServerStats,
        inbound: bool,
    ) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.stats = stats
        self.inbound = inbound  # client -> server (bytes_in) or server -> client (bytes_out)
        self.pending = 0
        self.total = 0
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False
        self.pipe_r = -1
        self.pipe_w = -1
        self.peer: _Pump | None = None  # the other direction

    def open(self, pool: list[tuple[int, int]]) -> None:
        if pool:
            self.pipe_r, self.pipe_w = pool.pop()
            return
        self.pipe_r, self.pipe_w = os.pipe2(_PIPE_FLAGS)
        # Bigger pipes let one splice call move up to 1 MiB; refused past the per-user limit
        # (fs.pipe-user-pages-soft) for unprivileged users: the default 64 KiB still works.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)

    def close(self, pool: list[tuple[int, int]] | None = None) -> None:
        """Stop watching; return the (empty) pipe to `pool` or close it."""
        self.stop_waiting()
        r, w = self.pipe_r, self.pipe_w
        self.pipe_r = self.pipe_w = -1
        if r < 0:
            return
        if pool is not None and self.done and not self.pending and len(pool) < PIPE_POOL:
            pool.append((r, w))
            return
        os.close(r)
        os.close(w)

    def stop_waiting(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False

    def wait_source(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.dst_fd)
            self.writing = False
        if not self.reading:
            self.loop.add_reader(self.src_fd, self.run)
            self.reading = True

    def wait_destination(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src_fd)
            self.reading = False
        if not self.writing:
            self.loop.add_writer(self.dst_fd, self.run)
            self.writing = True

    def run(self) -> None:
        """Move bytes until the source runs dry or the destination is full."""
        if self.conn.closed:
            return  # an event that was already queued when the connection closed
        splice = os.splice
        n = self.pending
        moved = 0
        dry = False
        try:
            while True:
                if n:
                    k = splice(self.pipe_r, self.dst_fd, n, None, None, _SPLICE_FLAGS)
                    n -= k
                    moved += k
                    continue
                if self.eof:
                    break
                if dry:
                    # The last read took less than the socket could give: it is empty, and
                    # the next readiness event says when more comes. Reading again would only
                    # fail (a system call and an exception for every DICOM PDU).
                    self.pending = 0
                    self.account(moved)
                    self.wait_source()
                    return
                k = splice(self.src_fd, self.pipe_w, CHUNK, None, None, _SPLICE_FLAGS)
                if not k:
                    self.eof = True
                    continue
                n = k
                dry = k < DRY_READ
        except BlockingIOError:
            if n and not dry and not self.eof:
                n += self.fill()
            self.pending = n
            self.account(moved)
            if n:
                self.wait_destination()
            else:
                self.wait_source()
            return
        except Exception as exc:  # one connection's failure stays its own
            self.account(moved)
            # n > 0: writing to dst failed, else reading src: was it the server's socket?
            self.conn.fail(exc, server=(n > 0) == self.inbound)
            return
        self.pending = 0
        self.account(moved)
        self.finish()

    def fill(self) -> int:
        """The destination is full: take what the source holds into the pipe's room meanwhile,
        so the sender's window reopens while the destination drains (+6 % on one bulk
        stream, bench/README.md). One read: the bytes added, 0 on EOF (noted) or none."""
        try:
            k = os.splice(self.src_fd, self.pipe_w, CHUNK, None, None, _SPLICE_FLAGS)
        except BlockingIOError:
            return 0  # the source is empty, or the pipe full: the kernel does not say which
        except OSError:
            return 0  # the source failed: the next read sees it and fails the connection
        if not k:
            self.eof = True
        return k

    def account(self, moved: int) -> None:
        if moved:
            self.total += moved
            if self.inbound:
                self.stats.bytes_in += moved
            else:
                self.stats.bytes_out += moved

    def finish(self) -> None:
        """EOF read and everything before it written: pass the half-close on."""
        self.done = True
        self.stop_waiting()
        peer = self.peer
        if not self.inbound and not self.total and peer is not None and not peer.done:
            self.conn.server_failed("closed before sending a byte")  # passive health
        if peer is not None and peer.done:
            # Both ways ended: close() sends the FIN (nothing is left unread on either side).
            self.conn.direction_done()
            return
        # A peer that is gone makes this fail; the other direction then sees the error.
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.conn.direction_done()


class _CopyPump(_Pump):
    """The same direction without splice (non-Linux): recv_into one buffer, then send."""

    __slots__ = ("buf", "offset", "view")

    def open(self, pool: list[tuple[int, int]]) -> None:
        self.buf = bytearray(COPY_CHUNK)
        self.view = memoryview(self.buf)
        self.offset = 0

    def close(self, pool: list[tuple[int, int]] | None = None) -> None:
        self.stop_waiting()

    def run(self) -> None:
        if self.conn.closed:
            return
        n = self.pending
        off = self.offset
        moved = 0
        dry = False
        try:
            while True:
                if n:
                    k = self.dst.send(self.view[off : off + n])
                    n -= k
                    off += k
                    moved += k
                    continue
                if self.eof:
                    break
                if dry:
                    self.pending, self.offset = 0, 0
                    self.account(moved)
                    self.wait_source()
                    return
                k = self.src.recv_into(self.buf)
                if not k:
                    self.eof = True
                    continue
                n, off = k, 0
                dry = k < COPY_CHUNK
        except BlockingIOError:
            self.pending, self.offset = n, off
            self.account(moved)
            if n:
                self.wait_destination()
            else:
                self.wait_source()
            return
        except Exception as exc:
            self.account(moved)
            self.conn.fail(exc, server=(n > 0) == self.inbound)
            return
        self.pending = 0
        self.account(moved)
        self.finish()


class _Connection:
    """One client connection: connecting (with retries), then relaying, then closed.

    Registered with the runtime from the moment a server is picked (so least-connection
    scheduling and max_connections see connections still connecting), which is also when a
    halt can abort it. Every fd is closed exactly once, in `_close()`."""

    __slots__ = (
        "_connect_timer",
        "_connecting",
        "client",
        "client_ip",
        "closed",
        "down",
        "fallback_tried",
        "label",
        "last_active",
        "listener",
        "loop",
        "runtime",
        "seen",
        "server",
        "stats",
        "tried",
        "up",
    )

    def __init__(self, listener: TcpListener, client: socket.socket, client_ip: str) -> None:
        assert listener._loop is not None
        self.listener = listener
        self.loop = listener._loop
        self.runtime = listener.runtime
        self.client = client
        self.client_ip = client_ip
        self.server: socket.socket | None = None
        self.label: str | None = None  # the server (or FALLBACK) this connection is placed on
        self.stats: ServerStats | None = None
        self.tried: list[str] = []
        self.fallback_tried = False
        self.up: _Pump | None = None
        self.down: _Pump | None = None
        self.closed = False
        self.seen = 0
        self.last_active = time.monotonic()
        self._connect_timer: asyncio.TimerHandle | None = None
        self._connecting = False

    def __repr__(self) -> str:
        return f"<tcp {self.client_ip} -> {self.label}>"

    def moved(self) -> int:
        up, down = self.up, self.down
        return (up.total if up else 0) + (down.total if down else 0)

    # --- connecting ------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.client.setblocking(False)
            if not _INHERITS_OPTIONS:
                _set_options(self.client)
            self._next()
        except Exception as exc:
            self.fail(exc)

    def _target(self) -> tuple[str, str, int] | None:
        """The next (label, address, port) to try: a real server, else the fallback once."""
        runtime = self.runtime
        port = self.listener.vip_port
        if len(self.tried) < min(MAX_TRIES, len(runtime.service.real_servers)):
            rs = runtime.pick(self.client_ip, self.tried)
            if rs is not None:
                return rs.label, rs.address, rs.port or port
        fallback = runtime.fallback
        if fallback is None or self.fallback_tried:
            return None
        self.fallback_tried = True
        return FALLBACK, fallback.address, fallback.port or port

    def _next(self) -> None:
        """Connect to the next target; failures that show at once move on in this loop."""
        while not self.closed:
            target = self._target()
            if target is None:
                log.info("no server for %s on port %s", self.client_ip, self.listener.vip_port)
                self._close(reset=True)
                return
            label, address, port = target
            self.label = label
            self.stats = self.runtime.opened(label, self)
            service = self.runtime.service
            bind = bind_address(service, self.client_ip, address)
            try:
                server = upstream_socket(address, bind, service.source == "client")
            except OSError as exc:  # the source, not the server, failed: no passive health
                bind_failed(service.label, bind, exc)
                self._close(reset=True)
                return
            self.server = server
            _set_options(server)
            err = server.connect_ex((address, port))
            if err == 0:
                self._relay()
                return
            if err == errno.EADDRNOTAVAIL and bind:
                # No source port left from `bind` to this server: the source's fault, not the
                # server's (no passive health), and another server would not fare better.
                bind_failed(service.label, bind, OSError(err, os.strerror(err)))
                self._close(reset=True)
                return
            if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                self._connecting = True
                self.loop.add_writer(server.fileno(), self._connected)
                self._connect_timer = self.loop.call_later(
                    self.runtime.service.timeouts.connect, self._connect_timeout
                )
                return
            self._attempt_failed(os.strerror(err))

    def server_failed(self, reason: str) -> None:
        """Passive health: the server reset or closed before it sent any byte."""
        if self.label is not None and (self.down is None or not self.down.total):
            self.runtime.failed(self.label, reason)

    def _connected(self) -> None:
        try:
            assert self.server is not None
            err = self.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._stop_connecting()
                self._attempt_failed(os.strerror(err))
                self._next()
            else:
                # Readers first, then drop the connect writer: the server fd keeps its poll
                # handle in the loop instead of a teardown and a new one (fewer syscalls).
                self._relay()
                self._stop_connecting()
        except Exception as exc:
            self.fail(exc)

    def _connect_timeout(self) -> None:
        self._connect_timer = None
        try:
            if self.runtime.service.source == "client" and self.label is not None:
                transparent_timed_out(self.runtime.service.label, self.label)
            self._stop_connecting()
            self._attempt_failed("timed out")
            self._next()
        except Exception as exc:
            self.fail(exc)

    def _stop_connecting(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        if self._connecting:
            self._connecting = False
            assert self.server is not None
            self.loop.remove_writer(self.server.fileno())

    def _attempt_failed(self, reason: str) -> None:
        """Count and forget a failed connect, so that the next attempt starts clean."""
        label, server = self.label, self.server
        assert label is not None and server is not None
        log.info("connect to %s failed (%s), client %s", label, reason, self.client_ip)
        self.server = None
        server.close()
        self.runtime.connect_failed(label, f"connect: {reason}")
        self._unplace()
        self.tried.append(label)

    def _unplace(self) -> None:
        label = self.label
        if label is None:
            return
        self.label = None
        self.runtime.closed(label, self)
        if label != FALLBACK:
            self.runtime.release(self.client_ip, label)

    # --- relaying --------------------------------------------------------------------------

    def _relay(self) -> None:
        assert self.server is not None and self.stats is not None
        kind: type[_Pump] = _Pump if self.listener.use_splice else _CopyPump
        self.up = up = kind(self, self.client, self.server, self.stats, True)
        self.down = down = kind(self, self.server, self.client, self.stats, False)
        up.peer, down.peer = down, up
        pipes = self.listener._pipes
        up.open(pipes)
        down.open(pipes)
        # Level-triggered readers: bytes the client sent while we connected are read at once.
        self.up.wait_source()
        self.down.wait_source()

    def direction_done(self) -> None:
        if self.up is not None and self.down is not None and self.up.done and self.down.done:
            self._close(reset=False)

    def fail(self, exc: BaseException, server: bool = False) -> None:
        if not isinstance(exc, OSError):
            log.error("tcp connection %r failed", self, exc_info=exc)
        elif server:
            self.server_failed(f"{exc.strerror or exc} before sending a byte")
        self._close(reset=True)

    def abort(self, reason: str = "") -> None:
        """Close both sockets now with a reset (halt, idle timeout, shutdown): a byte stream
        has no way to say why, so `reason` is only logged."""
        log.debug("resetting %r: %s", self, reason)
        self._close(reset=True)

    def _close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        # Unregister every fd before closing it: the loop must never watch a reused number.
        try:
            self._stop_connecting()
        except Exception:
            log.exception("closing %r", self)
        up, down = self.up, self.down
        if down is not None and down.total and self.stats is not None:
            self.stats.failing = 0  # passive health: the server answered
        self._close_pumps(up is not None and up.done and down is not None and down.done)
        for sock in (self.client, self.server):
            if sock is None:
                continue
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            sock.close()
        self.server = None
        try:
            self._unplace()
        finally:
            self.listener._forget(self)

    def _close_pumps(self, graceful: bool) -> None:
        # Pipes go back to the pool only after both directions ended on EOF: each pipe is
        # then empty by construction, so no byte can reach another client.
        pool = self.listener._pipes if graceful and not self.listener._closed else None
        for pump in (self.up, self.down):
            if pump is not None:
                try:
                    pump.close(pool)
                except Exception:
                    log.exception("closing %r", self)
