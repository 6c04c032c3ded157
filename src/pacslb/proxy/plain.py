"""Plain-TCP client connections of the l7-http proxy: accepted, read and written on the raw
socket, polled by one epoll of the listener's own that sits in uvloop's loop as one reader.

Why not uvloop's transports here: a new connection per request is a Python proxy's weakest
figure (research/peers.md), and `strace -c` of the proxy under that load counted 12 system
calls per connection against HAProxy's 9. uvloop adds five of them to every accepted client:
TCP_NODELAY (already inherited from the listener), getsockname, getpeername, an epoll
registration through io_uring and its removal at close. `loop.add_reader` on a raw fd is
dearer still: libuv checks each new fd with an epoll add and delete, then sets O_NONBLOCK.

Here the listener accepts itself and reads at once: a client sends its request right after
connecting, so it is usually there before the socket is polled at all. The socket joins the
listener's epoll with one epoll_ctl, and leaves it by being closed. It stays blocking at the
fd level (no fcntl per connection); every call passes MSG_DONTWAIT. That is accept4,
getsockname (CPython's socket object checks its fd), recv, epoll_ctl, send and close per
connection, plus the shared epoll_wait calls: with the two calls to the pooled upstream, 8
against uvloop's 12 (`strace -c` under bench/proxy_bench.py's http-close load).

Not TCP_DEFER_ACCEPT, although it saved another 2 µs a connection by making the first read
certain: a connection the kernel holds back for its first bytes sits in the listening socket's
request queue, which closing the listener drops, so a client that had connected but not yet
written when a listener was replaced would be reset. Without it, it waits in the accept queue
that `HttpListener.close()` drains.

Per request on a kept-alive connection, though, uvloop's C is a few µs cheaper than this
Python and its second epoll (bench/proxy_bench.py, interleaved: 33-35 against 35-36 µs a
request). So the first bytes decide: a client whose first request is its last (`Connection:
close`, HTTP/1.0) stays here; one that keeps the connection is handed to uvloop's transports
(`HttpListener._hand_over`), whenever its first bytes come.

`PlainTransport` keeps the part of asyncio's transport contract that `ClientConnection` uses:
write/writelines buffering with pause_writing/resume_writing at the high and low water marks,
pause_reading/resume_reading, eof_received (True keeps the connection half-open for the
response), write_eof and close after the buffer drains, abort now, connection_lost once, from
the loop. TLS listeners keep uvloop's transports (the SSL layer lives there).
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import select
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["PlainTransport", "Poller", "accept_plain"]

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16  # bytes per recv: a request head, or a body chunk
HIGH_WATER = 1 << 16  # buffered bytes that pause the writer (asyncio's default)
LOW_WATER = HIGH_WATER // 4  # ... and resume it
MAX_EVENTS = 256  # events per dispatch: more stay ready for the next loop iteration

_DONTWAIT = socket.MSG_DONTWAIT
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_BAD = select.EPOLLERR | select.EPOLLHUP


HandOver = Callable[["PlainTransport", bytes], bool]


class _Closed(asyncio.Protocol):
    """The protocol of a closed transport: whatever late call comes goes nowhere."""


_CLOSED = _Closed()


class Poller:
    """One epoll for the sockets of a listener's clients, read from uvloop's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.transports: dict[int, PlainTransport] = {}
        loop.add_reader(self.epoll.fileno(), self._dispatch)

    def close(self) -> None:
        """Once no transport is left (the listener's shutdown)."""
        if not self.epoll.closed:
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()

    def _dispatch(self) -> None:
        transports = self.transports
        for fd, events in self.epoll.poll(0, MAX_EVENTS):
            transport = transports.get(fd)
            if transport is not None:
                try:
                    if events == _IN and transport._reading:
                        transport._read()  # the usual event, one call shorter
                    else:
                        transport._ready(events)
                except Exception as exc:  # one connection's failure stays its own
                    log.exception("client connection on fd %d", fd)
                    transport._fatal(exc)


class PlainTransport:
    """A client connection on its raw socket (see the module's docstring)."""

    __slots__ = (
        "_buf",
        "_closed",
        "_closing",
        "_eof",
        "_eof_pending",
        "_fd",
        "_hand_over",
        "_mask",
        "_paused",
        "_poller",
        "_protocol",
        "_reading",
        "_sock",
        "peer",
    )

    def __init__(
        self,
        poller: Poller,
        sock: _socket.socket,
        peer: Any,
        protocol: asyncio.Protocol,
        hand_over: HandOver | None = None,
    ) -> None:
        self._poller = poller
        self._hand_over = hand_over
        self._sock = sock
        self._fd = sock.fileno()
        self.peer = peer
        self._protocol = protocol
        self._buf = bytearray()
        self._mask = 0  # what epoll watches for (0: not registered)
        self._reading = True
        self._eof = False  # the client's FIN was read
        self._eof_pending = False  # write_eof() waits for the buffer to drain
        self._paused = False  # the protocol was told pause_writing()
        self._closing = False
        self._closed = False
        poller.transports[self._fd] = self

    def start(self, first: bytes | None) -> None:
        """connection_made, then the bytes of the first read (None: there were none yet);
        epoll is asked only for what is still awaited."""
        self._protocol.connection_made(self)  # type: ignore[arg-type]
        if first is not None and self._reading:
            self._received(first)
        self._update()

    # --- the transport API -------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "socket":
            return self._sock
        if name == "sockname" and not self._closed:
            return self._sock.getsockname()
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_pending or not data:
            return  # as asyncio: nothing is written after close() or write_eof()
        buf = self._buf
        if not buf:
            try:
                sent = self._sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            buf += memoryview(data)[sent:]
            self._update()
        else:
            buf += data
        if not self._paused and len(buf) > HIGH_WATER:
            self._paused = True
            self._protocol.pause_writing()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update()

    def resume_reading(self) -> None:
        if not self._reading and not self._eof and not self._closing:
            self._reading = True
            self._update()

    def write_eof(self) -> None:
        if self._closing or self._eof_pending:
            return
        self._eof_pending = True
        if not self._buf:
            self._shutdown_write()

    def close(self) -> None:
        """Close once the buffered bytes are out."""
        if self._closing:
            return
        self._closing = True
        self._reading = False
        if self._buf:
            self._update()
        else:
            self._finish(None)

    def abort(self) -> None:
        """Close now; buffered bytes are dropped."""
        self._closing = True
        self._finish(None)

    # --- events ----------------------------------------------------------------------------

    def _ready(self, events: int) -> None:
        if events & _OUT or (events & _BAD and self._buf):
            self._flush()
        if self._reading and events & (_IN | _BAD) and not self._closed:
            self._read()

    def _read(self) -> None:
        try:
            data = self._sock.recv(READ_SIZE, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        if data and self._hand_over is not None:
            hand_over, self._hand_over = self._hand_over, None
            if hand_over(self, data):
                return  # this transport is detached; the protocol has its bytes
        if data:
            self._protocol.data_received(data)
            return
        self._eof = True
        self._reading = False
        if self._protocol.eof_received():
            self._update()  # half-closed: the response still goes out
        else:
            self.close()

    def _flush(self) -> None:
        buf = self._buf
        try:
            sent = self._sock.send(buf, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del buf[:sent]
        if self._paused and len(buf) <= LOW_WATER:
            self._paused = False
            self._protocol.resume_writing()
        if buf:
            return
        if self._closing:
            self._finish(None)
            return
        self._update()
        if self._eof_pending:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc)

    def detach(self) -> _socket.socket:
        """Give the socket up, to another transport of the same protocol: out of epoll and
        of the poller, and no connection_lost (the connection goes on)."""
        if self._mask:
            self._poller.epoll.unregister(self._fd)
            self._mask = 0
        if self._poller.transports.get(self._fd) is self:
            del self._poller.transports[self._fd]
        self._closed = self._closing = True
        self._reading = False
        self._protocol = _CLOSED
        return self._sock

    def _fatal(self, exc: BaseException) -> None:
        self._closing = True
        self._finish(exc if isinstance(exc, Exception) else None)

    def _update(self) -> None:
        """Tell epoll what this connection now waits for."""
        if self._closed:
            return
        want = (_IN if self._reading else 0) | (_OUT if self._buf else 0)
        mask = self._mask
        if want == mask:
            return
        epoll = self._poller.epoll
        # A registered fd with nothing wanted would still report HUP and ERR, level-triggered,
        # on every iteration: it leaves epoll instead.
        if not want:
            epoll.unregister(self._fd)
        elif not mask:
            epoll.register(self._fd, want)
        else:
            epoll.modify(self._fd, want)
        self._mask = want

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._reading = False
        self._buf.clear()
        # Closing the socket takes it out of epoll (nothing else holds the open file).
        if self._poller.transports.get(self._fd) is self:
            del self._poller.transports[self._fd]
        self._sock.close()
        protocol, self._protocol = self._protocol, _CLOSED
        # The protocol holds this transport: without its reference back, no cycle is left for
        # the garbage collector (a pause of milliseconds when it comes, with thousands).
        self._poller.loop.call_soon(protocol.connection_lost, exc)


def accept_plain(
    listening: socket.socket,
    poller: Poller,
    protocol_factory: Any,
    limit: int,
    hand_over: HandOver | None = None,
) -> int:
    """Accept up to `limit` clients from `listening`, read each one's first bytes at once and
    start it; returns how many. Errors other than an empty queue (EMFILE, ENOBUFS, ...) are
    raised to the caller. `hand_over(transport, first)` is offered each client's first bytes,
    whenever they come, and may take the client elsewhere (it returns True, having detached
    the transport): the l7-http listener gives keep-alive clients to uvloop.

    `socket._accept` gives the fd and address without a Python-level socket object; the
    C-level socket built from them is told its family, type and protocol, so the kernel is
    asked only whether the fd is a socket (one getsockname)."""
    accept = listening._accept  # type: ignore[attr-defined]
    family = listening.family
    taken = 0
    for _ in range(limit):
        try:
            fd, peer = accept()
        except (BlockingIOError, InterruptedError):
            break
        except ConnectionAbortedError:
            continue
        sock = _socket.socket(family, _socket.SOCK_STREAM, 0, fd)
        taken += 1
        first: bytes | None
        try:
            first = sock.recv(READ_SIZE, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            first = None
        except OSError:
            sock.close()  # reset before it was served: nothing to tell anyone
            continue
        transport = PlainTransport(poller, sock, peer, protocol_factory(), hand_over)
        try:
            transport.start(first)
        except Exception as exc:  # this client's failure is its own, as in _dispatch
            log.exception("client connection on fd %d", fd)
            transport._fatal(exc)
    return taken
