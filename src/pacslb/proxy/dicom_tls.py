"""DICOM TLS for `l7-dicom` (PS3.15 Annex B, port 2762): terminate TLS on the VIP, read the
A-ASSOCIATE-RQ from the decrypted stream, route it by AE title, relay to the archive in plain
TCP or, for a real server with `reencrypt: true`, in TLS again.

splice cannot carry TLS (the kernel would move ciphertext), so this relay holds the bytes:
asyncio protocols on uvloop's transports, both ways, with backpressure: when one side's write
buffer passes HIGH_WATER the other side stops reading until it drains below LOW_WATER, so an
association holds at most about 2 × HIGH_WATER of relayed data whatever the peers do.

What the plaintext `l7-dicom` listener does, this one does too, with the same pure core
(pacslb.core.dicom_assoc): the request is judged from its header before its body is read
(a request past `dicom.max_request` is refused unread), a client that sends no whole request
within `dicom.request_timeout` gets an A-ABORT, an unknown called AE or no usable server gets
the A-ASSOCIATE-RJ PS3.8 defines, the called AE is rewritten for a server with an `ae_title`,
and the PDU headers of the relayed stream are followed (P-DATA count, release, abort) without
parsing data sets. A halt ends an association with A-ABORT to both sides, each sent only at a
PDU boundary of the direction it travels (never inside a PDU).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from typing import Any

from pacslb.core.dicom import A_ASSOCIATE_RJ
from pacslb.core.dicom_assoc import (
    ABORT_NOT_SPECIFIED,
    REJECT_NO_SERVER,
    Abort,
    AssociateRequest,
    AssociateRqError,
    PduTracker,
    Reject,
    parse_associate_rq,
    rewrite_called_ae,
    rq_length,
)
from pacslb.core.plan import PlanDicom
from pacslb.proxy.budget import ServiceBudget, out_of_descriptors
from pacslb.proxy.dicom import report_refusal, route
from pacslb.proxy.notices import notice
from pacslb.proxy.runtime import STOPPING, ServerStats, ServiceRuntime
from pacslb.proxy.tcp import (
    ACCEPT_BATCH,
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    BACKLOG_DRAIN,
    KEEPALIVE,
    MAX_TRIES,
)

__all__ = ["HIGH_WATER", "DicomTlsListener", "upstream_context"]

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024  # bytes buffered towards one peer before the other is paused
LOW_WATER = 64 * 1024
ABORT_FLUSH = 2.0  # seconds an A-ABORT may take to leave before the connection is reset
SWEEP = 1.0  # seconds between checks of request deadlines, idle associations, the drain cap
_DEFAULTS = PlanDicom()


@functools.cache
def upstream_context() -> ssl.SSLContext:
    """Re-encryption to archives: as l7-http's (proxy/tls.py), the server's certificate is not
    verified (archives carry private-CA or self-signed ones; the point is an encrypted hop),
    and no ALPN is offered: DICOM has no ALPN name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _tune(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY (dcmtk's 12-byte PDU headers stall on Nagle, research/dicom.md) and
    keepalive (associations may be quiet for minutes) on the transport's socket."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class DicomTlsListener:
    """Accepts TLS clients on one listening socket (owned from now on, closed in close());
    `runtime` may be replaced at any time: new associations use the current one."""

    def __init__(
        self,
        sock: socket.socket,
        runtime: ServiceRuntime,
        vip_port: int,
        context: ssl.SSLContext,
        budget: ServiceBudget | None = None,
    ) -> None:
        self.sock = sock
        self.runtime = runtime
        self.vip_port = vip_port
        self.context = context
        self.budget = budget if budget is not None else ServiceBudget(runtime.service.label)
        self.associations: set[_Association] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._accepting = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.loop is not None or self._closed:
            raise RuntimeError("listener already started or closed")
        self.loop = asyncio.get_running_loop()
        self._resume()
        self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def close(self) -> None:
        """Stop accepting; associations in progress go on until they end (a removed VIP).
        Clients already in the accept queue are still taken, so that a listener replaced
        under SO_REUSEPORT drops nobody (as TcpListener)."""
        if self._closed:
            return
        if self.loop is not None and self._accepting:
            with contextlib.suppress(Exception):
                self._accept(drain=True)
        self._closed = True
        self.budget.stop_waiting(self)
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close()
        self._finish_if_idle()

    def abort_all(self) -> int:
        """End every association with A-ABORT (process shutdown); returns how many."""
        found = list(self.associations)
        for assoc in found:
            assoc.abort(STOPPING)
        for task in list(self._handshakes):
            task.cancel()
        return len(found)

    def resume_accepting(self) -> None:
        if self._retry is None:
            self._resume()

    # --- accepting ------------------------------------------------------------------------

    def _resume(self) -> None:
        self._retry = None
        if not self._closed and not self._accepting and self.loop is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self._accepting = True

    def _pause(self) -> None:
        if self._accepting and self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            self._accepting = False

    def _accept(self, drain: bool = False) -> None:
        """Accept a batch within the budget; `drain` (closing): what the queue holds."""
        loop = self.loop
        assert loop is not None
        room = self.budget.room()
        if room <= 0 and not drain:
            self._pause()
            self.budget.wait(self, f"{self.sock.getsockname()[0]}:{self.vip_port}")
            return
        for _ in range(BACKLOG_DRAIN if drain else min(ACCEPT_BATCH, room)):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_PAUSE:
                    out_of_descriptors(self.budget.label, f"port {self.vip_port}", exc)
                    self._pause()
                    self._retry = loop.call_later(ACCEPT_RETRY, self._resume)
                else:
                    log.error("accept on port %s: %s", self.vip_port, exc)
                return
            conn.setblocking(False)
            self.budget.take()  # from accept, through the handshake, to the association's end
            assoc = _Association(self, addr[0])
            timeout = self.settings().request_timeout
            task = loop.create_task(
                loop.connect_accepted_socket(
                    lambda a=assoc: _ClientSide(a),  # type: ignore[misc]
                    conn,
                    ssl=self.context,
                    ssl_handshake_timeout=timeout,
                )
            )
            self._handshakes.add(task)
            task.add_done_callback(functools.partial(self._handshake_done, assoc))

    def _handshake_done(self, assoc: _Association, task: asyncio.Task[Any]) -> None:
        self._handshakes.discard(task)
        if task.cancelled() or task.exception() is not None:
            # A failed handshake never became an association: nothing to answer in DICOM.
            if not task.cancelled():
                why = task.exception()
                log.debug("TLS client %s lost in its handshake: %r", assoc.client_ip, why)
            self.budget.give()
            self._finish_if_idle()

    def settings(self) -> PlanDicom:
        return self.runtime.service.dicom or _DEFAULTS

    # --- bookkeeping ----------------------------------------------------------------------

    def forget(self, assoc: _Association) -> None:
        if assoc in self.associations:
            self.associations.remove(assoc)
            self.budget.give()
        self._finish_if_idle()

    def _finish_if_idle(self) -> None:
        idle = self._closed and not self.associations and not self._handshakes
        if idle and self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """Requests past their deadline get A-ABORT; associations quiet for timeouts.idle, or
        held by a drained server past dicom.drain_limit (counted from the drain), end with
        A-ABORT at PDU boundaries."""
        self._sweeper = None
        assert self.loop is not None
        now = time.monotonic()
        runtime = self.runtime
        idle = runtime.service.timeouts.idle
        limit = self.settings().drain_limit
        for assoc in list(self.associations):
            drained = runtime.drained_since.get(assoc.label or "")
            capped = limit > 0 and drained is not None and now - drained >= limit
            if capped and not assoc.up.releases:  # a release under way ends it anyway
                assoc.abort(f"drain limit of {limit:g} s reached")
            else:
                assoc.check(now, idle)
        if not self._closed or self.associations or self._handshakes:
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)


class _ClientSide(asyncio.Protocol):
    """The client's TLS transport: its callbacks go to the association."""

    __slots__ = ("assoc",)

    def __init__(self, assoc: _Association) -> None:
        self.assoc = assoc

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.assoc.client_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.assoc.from_client(data)

    def eof_received(self) -> bool:
        self.assoc.side_ended(client=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.assoc.side_lost(client=True, exc=exc)

    def pause_writing(self) -> None:
        self.assoc.pause(client_full=True)

    def resume_writing(self) -> None:
        self.assoc.resume(client_full=True)


class _ServerSide(asyncio.Protocol):
    """The real server's transport (plain, or TLS when it re-encrypts)."""

    __slots__ = ("assoc",)

    def __init__(self, assoc: _Association) -> None:
        self.assoc = assoc

    def data_received(self, data: bytes) -> None:
        self.assoc.from_server(data)

    def eof_received(self) -> bool:
        self.assoc.side_ended(client=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.assoc.side_lost(client=False, exc=exc)

    def pause_writing(self) -> None:
        self.assoc.pause(client_full=False)

    def resume_writing(self) -> None:
        self.assoc.resume(client_full=False)


class _Association:
    """One client: reading its A-ASSOCIATE-RQ, connecting, relaying, ended."""

    def __init__(self, listener: DicomTlsListener, client_ip: str) -> None:
        self.listener = listener
        self.runtime = listener.runtime
        self.client_ip = client_ip
        self.sticky_key = client_ip  # the calling AE title under calling-ae persistence
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.request = bytearray()
        self.label: str | None = None
        self.stats: ServerStats | None = None
        self.ae_stats: ServerStats | None = None
        self.up = PduTracker()  # client -> server
        self.down = PduTracker()  # server -> client
        self.started = 0.0  # when relaying began (0: not yet)
        self.deadline = time.monotonic() + listener.settings().request_timeout
        self.last_active = time.monotonic()
        self.moved = 0  # bytes relayed, both ways (the idle check compares it)
        self.seen = 0
        self.cut_reason = ""
        self.ended = False
        self._connecting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<dicom-tls {self.client_ip} -> {self.label}>"

    # --- the request ----------------------------------------------------------------------

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        _tune(transport)
        self.listener.associations.add(self)

    def from_client(self, data: bytes) -> None:
        if self.server is not None:
            self._relay(data, self.server, self.up, inbound=True)
            return
        self.request += data
        if self._connecting is not None or self.ended:
            return  # what came with the RQ's last read: the server judges it (PS3.8 §9.2)
        settings = self.listener.settings()
        try:
            total = rq_length(self.request[:6], settings.max_request)
            if not total or len(self.request) < total:
                return
            # Exactly the request: a client that sent more before the answer is refused by
            # the parser (what the plaintext listener, which reads no byte past it, sees too).
            request = parse_associate_rq(bytes(self.request), settings.max_request, contexts=False)
        except AssociateRqError as exc:
            self.refuse(exc.answer, exc.kind, str(exc))
            return
        assert self.listener.loop is not None
        assert self.client is not None
        self.client.pause_reading()  # until the server is there: nothing piles up meanwhile
        self._connecting = self.listener.loop.create_task(self._connect(request))

    async def _connect(self, rq: AssociateRequest) -> None:
        """Route by called AE (proxy/dicom.py's rules), pick (persistence by calling AE when
        set), connect; a failed connect tries another server (DESIGN §8), up to MAX_TRIES,
        then A-ASSOCIATE-RJ transient."""
        runtime = self.runtime
        self.ae_stats = runtime.calling_ae_stats(rq.calling_ae)
        allowed = route(self.listener.settings(), rq)
        if isinstance(allowed, Reject):
            self.refuse(allowed, "unknown-called-ae", f"called AE {rq.called_ae!r} has no route")
            return
        if runtime.service.persistence.kind == "calling-ae":
            self.sticky_key = rq.calling_ae
        loop = self.listener.loop
        assert loop is not None
        tried: list[str] = []
        while len(tried) < min(MAX_TRIES, len(runtime.service.real_servers)):
            rs = runtime.pick(self.sticky_key, tried, allowed=allowed)
            if rs is None:
                break
            tried.append(rs.label)
            context = upstream_context() if rs.reencrypt else None
            self.label = rs.label
            self.stats = runtime.opened(rs.label, self)
            try:
                async with asyncio.timeout(runtime.service.timeouts.connect):
                    transport, _ = await loop.create_connection(
                        lambda: _ServerSide(self),
                        rs.address,
                        rs.port or self.listener.vip_port,
                        ssl=context,
                        server_hostname="" if context else None,
                    )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self._unplace()
                runtime.connect_failed(rs.label, f"{type(exc).__name__}: {exc}")
                continue
            if self.ended:  # the client left (or a halt came) while we connected
                transport.close()
                return
            self._relay_from(transport, rq, rs.ae_title)
            return
        what = f"{rq.calling_ae} -> {rq.called_ae}"
        tried_text = f" (tried {', '.join(tried)})" if tried else ""
        self.refuse(REJECT_NO_SERVER, "no-server", f"no real server for {what}{tried_text}")

    def _relay_from(
        self, server: asyncio.Transport, rq: AssociateRequest, title: str | None
    ) -> None:
        """Connected: the request goes out first (with the server's own called AE if it has
        one), then what the client sent after it, then both ways as it comes."""
        self.server = server
        server.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        _tune(server)
        first = bytes(self.request[: rq.length])
        rest = bytes(self.request[rq.length :])
        self.request = bytearray()
        if title is not None:
            first = rewrite_called_ae(first, title)
        self.started = time.monotonic()
        for stats in (self.stats, self.ae_stats):
            if stats is not None:
                stats.associations += 1
                stats.assoc_active += 1
        self._relay(first, server, self.up, inbound=True)
        if rest:
            self._relay(rest, server, self.up, inbound=True)
        if self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    def refuse(self, answer: Reject | Abort, kind: str, message: str) -> None:
        """Answer the client in DICOM (RJ or A-ABORT), count and report it, then close;
        nothing reached a real server."""
        if self.ended:
            return
        client = f"{self.client_ip} (TLS)"
        report_refusal(self.runtime, self.ae_stats, answer, kind, message, client)
        if self.client is not None and not self.client.is_closing():
            self.client.write(answer.pdu())
            self.client.close()  # once the answer has left
        self._end()

    # --- relaying -------------------------------------------------------------------------

    def _relay(
        self, data: bytes, to: asyncio.Transport, tracker: PduTracker, inbound: bool
    ) -> None:
        to.write(data)
        self.moved += len(data)
        p_data = tracker.feed(data)
        for stats in (self.stats, self.ae_stats):
            if stats is None:
                continue
            stats.pdata_pdus += p_data
            if inbound:
                stats.bytes_in += len(data)
            else:
                stats.bytes_out += len(data)

    def from_server(self, data: bytes) -> None:
        if self.client is not None and not self.client.is_closing():
            self._relay(data, self.client, self.down, inbound=False)

    def pause(self, client_full: bool) -> None:
        # The side that is full stops the other one reading: bounded memory per association.
        other = self.server if client_full else self.client
        if other is not None and not other.is_closing():
            other.pause_reading()

    def resume(self, client_full: bool) -> None:
        other = self.server if client_full else self.client
        if other is not None and not other.is_closing():
            other.resume_reading()

    def side_ended(self, client: bool) -> None:
        """EOF from one side: the other is closed once what is buffered for it has left
        (asyncio's TLS transport cannot half-close; after A-RELEASE-RP nothing follows)."""
        other = self.server if client else self.client
        if other is not None:
            other.close()
        if client and self.server is None:
            self._end()

    def side_lost(self, client: bool, exc: Exception | None) -> None:
        other = self.server if client else self.client
        if other is not None and not other.is_closing():
            if exc is None:
                other.close()
            else:
                other.abort()
        if client or self.client is None or self.client.is_closing():
            self._end()

    # --- ending ---------------------------------------------------------------------------

    def abort(self, reason: str = "") -> None:
        """Halt, removal, drain cap, idle: A-ABORT (PS3.8 §9.3.8, source 2 service-provider) to
        each side whose direction is between two PDUs, then close; a side inside a PDU is
        reset (an A-ABORT there would be garbage); a reset too if it does not flush in time."""
        if self.ended:
            return
        reason = reason or "reason not given"
        if self.server is None:
            self.refuse(ABORT_NOT_SPECIFIED, "cut", reason)  # not relaying yet
            return
        self.cut_reason = reason
        log.info("ending %r with A-ABORT: %s", self, reason)
        service, label = self.runtime.service.label, self.label or ""
        text = f"association ended with A-ABORT: {reason}"
        notice(text, service, label, key=f"dicom-cut/{service}/{label}")  # as proxy/dicom.py
        pdu = ABORT_NOT_SPECIFIED.pdu()
        for transport, tracker in ((self.client, self.down), (self.server, self.up)):
            if transport is None or transport.is_closing():
                continue
            if tracker.at_boundary:
                transport.write(pdu)
                transport.close()
            else:
                transport.abort()
        if self.listener.loop is not None:
            self.listener.loop.call_later(ABORT_FLUSH, self._reset)
        self._end()

    def _reset(self) -> None:
        # A peer that does not read keeps the A-ABORT in our buffer: reset it instead.
        for transport in (self.client, self.server):
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.abort()

    def check(self, now: float, idle: float) -> None:
        if self.server is None and self._connecting is None and now >= self.deadline:
            message = "no whole A-ASSOCIATE-RQ within dicom.request_timeout"
            self.refuse(ABORT_NOT_SPECIFIED, "timeout", message)
            return
        if self.moved != self.seen:
            self.seen, self.last_active = self.moved, now
        elif self.server is not None and now - self.last_active >= idle:
            self.abort(f"idle for {idle:g} s")

    def _unplace(self) -> None:
        label, self.label, self.stats = self.label, None, None
        if label is not None:
            self.runtime.closed(label, self)
            self.runtime.release(self.sticky_key, label)

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        task = self._connecting
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self._account_end()
        self._unplace()
        self.listener.forget(self)

    def _account_end(self) -> None:
        if not self.started:
            return
        seconds = time.monotonic() - self.started
        rejected = self.down.first == A_ASSOCIATE_RJ  # the server's own RJ
        aborted = bool(self.cut_reason) or self.up.aborts > 0 or self.down.aborts > 0
        for stats in (self.stats, self.ae_stats):
            if stats is not None:
                stats.assoc_active -= 1
                stats.assoc_seconds += seconds
                stats.assoc_rejected += rejected
                stats.assoc_aborted += aborted
