"""The `l7-dicom` data plane: l7-tcp that reads the A-ASSOCIATE-RQ first and keeps PDU bounds.

A client's connection first has its A-ASSOCIATE-RQ read, exactly its bytes (the 6-byte header
says how many; one declaring more than `dicom.max_request` is refused from the header alone),
within `dicom.request_timeout`. The called AE picks the candidate servers (`dicom.routes`),
calling-ae persistence keys the choice by the calling AE title, and the request goes to the
chosen server as read (with the called AE rewritten to the server's `ae_title` if set). From
then on the connection relays like l7-tcp (tcp.py: splice, TCP_NODELAY, the same connect
retries and pipe pool), with one difference: each direction splices no further than the end
of the current PDU and peeks the next 6-byte header there (core.dicom_assoc.PduTracker). That
costs one recv(MSG_PEEK) per PDU and buys three things: P-DATA-TF PDUs are counted, a halt or
a drain cap ends an association with A-ABORT at a PDU boundary (never a bare reset mid-PDU),
and aborts and releases are seen.

Refusals are DICOM answers, each an event (a notice) with its reason: no usable server,
A-ASSOCIATE-RJ transient; an unknown called AE, A-ASSOCIATE-RJ called-AE-not-recognised; a
malformed, oversized or late request, A-ASSOCIATE-RJ or A-ABORT as core.dicom_assoc chooses.
Nothing reaches a real server in those cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from pacslb.core.dicom import A_ASSOCIATE_RJ
from pacslb.core.dicom_assoc import (
    ABORT_INVALID_PARAMETER,
    ABORT_NOT_SPECIFIED,
    HEADER,
    REJECT_CALLED_AE_UNKNOWN,
    REJECT_NO_SERVER,
    Abort,
    AssociateRequest,
    AssociateRqError,
    Reject,
    parse_associate_rq,
    rewrite_called_ae,
    rq_length,
)
from pacslb.core.plan import PlanDicom
from pacslb.proxy.dicom_pumps import DicomCopyPump, DicomPump
from pacslb.proxy.notices import notice
from pacslb.proxy.runtime import FALLBACK, NO_SERVER, ServerStats, ServiceRuntime
from pacslb.proxy.tcp import (
    _INHERITS_OPTIONS,
    MAX_TRIES,
    TcpListener,
    _Connection,
    _set_options,
)

__all__ = ["DicomListener", "report_refusal", "route"]

log = logging.getLogger(__name__)

DRAIN_CHECK = 1.0  # seconds between checks of the drain cap (dicom.drain_limit)
CUT_GRACE = 10.0  # seconds a cut association has to reach a PDU boundary (then a reset)
LINGER = 2.0  # seconds a refused client's further bytes are read and dropped
LINGER_BYTES = 4 << 20  # ... and at most this many, so that the answer is read before a RST
CUT_LINGER_BYTES = 1 << 30  # after a cut: the rest of a data set being written (a cine loop)
_SINK = bytearray(1 << 16)  # where dropped bytes go
_DEFAULTS = PlanDicom()


def route(dicom: PlanDicom, rq: AssociateRequest) -> tuple[str, ...] | Reject:
    """The servers this association may go to (() = any), or the refusal."""
    allowed = dicom.servers_for(rq.called_ae)
    return REJECT_CALLED_AE_UNKNOWN if allowed is None else allowed


def report_refusal(
    runtime: ServiceRuntime,
    ae_stats: ServerStats | None,
    answer: Reject | Abort,
    kind: str,
    message: str,
    client: str,
) -> None:
    """Count and report an association refused before any real server took it (plaintext and
    TLS listeners alike): on the service's no-server row and the calling AE's, and as a notice
    rate-limited per kind of refusal."""
    service = runtime.service.label
    verb = "rejected" if isinstance(answer, Reject) else "aborted"
    text = f"association {verb} ({answer.text}): {message}"
    log.info("%s: %s, client %s", service, text, client)
    notice(text, service, key=f"dicom-{kind}/{service}")
    for stats in (runtime.stats.setdefault(NO_SERVER, ServerStats()), ae_stats):
        if stats is None:
            continue
        if isinstance(answer, Reject):
            stats.assoc_rejected += 1
        else:
            stats.assoc_aborted += 1


class DicomListener(TcpListener):
    """A TcpListener whose connections are DicomConnections, with the drain cap's timer."""

    _drain_timer: asyncio.TimerHandle | None = None

    def _connection(self, client: socket.socket, client_ip: str) -> _Connection:
        return DicomConnection(self, client, client_ip)

    def start(self) -> None:
        super().start()
        self._schedule_drain_check()

    def _schedule_drain_check(self) -> None:
        assert self._loop is not None
        self._drain_timer = self._loop.call_later(DRAIN_CHECK, self._check_drains)

    def _check_drains(self) -> None:
        """End with A-ABORT the associations a drained server has held past the cap
        (dicom.drain_limit, counted from the drain; 0 = no cap)."""
        self._drain_timer = None
        try:
            runtime = self.runtime
            limit = (runtime.service.dicom or _DEFAULTS).drain_limit
            since = runtime.drained_since
            if limit > 0 and since:
                now = time.monotonic()
                for conn in list(self.connections):
                    start = since.get(conn.label or "")
                    if start is not None and now - start >= limit:
                        assert isinstance(conn, DicomConnection)
                        if not conn.releasing:  # a release under way ends it anyway
                            conn.cut(f"drain limit of {limit:g} s reached")
        finally:
            if not self._closed or self.connections:
                self._schedule_drain_check()

    def _finished(self) -> None:
        super()._finished()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None


class DicomConnection(_Connection):
    """One association: reading its request, connecting (tcp.py), relaying, ending."""

    __slots__ = (
        "_linger_timer",
        "_rq_timer",
        "ae_stats",
        "allowed",
        "cut_reason",
        "lingering",
        "request",
        "rq",
        "rq_buf",
        "rq_total",
        "started",
        "sticky_key",
    )

    def __init__(self, listener: TcpListener, client: socket.socket, client_ip: str) -> None:
        super().__init__(listener, client, client_ip)
        self.rq_buf = bytearray()
        self.rq_total = 0
        self.rq: bytes = b""
        self.request: AssociateRequest | None = None
        self.allowed: tuple[str, ...] = ()
        self.sticky_key = client_ip
        self.ae_stats: ServerStats | None = None
        self.started = 0.0
        self.cut_reason = ""
        self.lingering = False
        self._rq_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        rq = self.request
        who = f"{rq.calling_ae}->{rq.called_ae} " if rq is not None else ""
        return f"<dicom {who}{self.client_ip} -> {self.label}>"

    @property
    def releasing(self) -> bool:
        """The client has sent its A-RELEASE-RQ: the association is ending by itself."""
        up = self.up
        return isinstance(up, DicomPump | DicomCopyPump) and up.tracker.releases > 0

    @property
    def dicom(self) -> PlanDicom:
        return self.runtime.service.dicom or _DEFAULTS

    # --- the request -----------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.client.setblocking(False)
            if not _INHERITS_OPTIONS:
                _set_options(self.client)
            self.loop.add_reader(self.client.fileno(), self._read_request)
            self._rq_timer = self.loop.call_later(self.dicom.request_timeout, self._late)
        except Exception as exc:
            self.fail(exc)

    def _stop_reading_request(self) -> None:
        if self._rq_timer is not None:
            self._rq_timer.cancel()
            self._rq_timer = None
            self.loop.remove_reader(self.client.fileno())

    def _read_request(self) -> None:
        """Read no byte past the request: the header first, then exactly the rest."""
        if self.closed:
            return
        try:
            want = (self.rq_total or HEADER) - len(self.rq_buf)
            data = self.client.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_reading_request()
            self.fail(exc)
            return
        try:
            if not data:
                got = len(self.rq_buf)
                raise AssociateRqError(
                    "truncated",
                    f"the client closed after {got} bytes of its A-ASSOCIATE-RQ"
                    + (f" (of {self.rq_total})" if self.rq_total else ""),
                    ABORT_INVALID_PARAMETER,
                )
            self.rq_buf += data
            if not self.rq_total:
                self.rq_total = rq_length(self.rq_buf, self.dicom.max_request)
            if not self.rq_total or len(self.rq_buf) < self.rq_total:
                return  # more of the header, or the body: exactly its declared length
            self._stop_reading_request()
            rq = parse_associate_rq(bytes(self.rq_buf), self.dicom.max_request, contexts=False)
        except AssociateRqError as exc:
            self.refuse(exc.answer, exc.kind, str(exc))
            return
        self.rq = bytes(self.rq_buf)
        self.rq_buf = bytearray()
        self._route(rq)

    def _late(self) -> None:
        self._rq_timer = None
        self.loop.remove_reader(self.client.fileno())
        got = len(self.rq_buf)
        message = (
            f"no whole A-ASSOCIATE-RQ within dicom.request_timeout "
            f"({self.dicom.request_timeout:g} s; {got} bytes came)"
        )
        self.refuse(ABORT_NOT_SPECIFIED, "timeout", message)

    def _route(self, rq: AssociateRequest) -> None:
        self.request = rq
        self.ae_stats = self.runtime.calling_ae_stats(rq.calling_ae)
        allowed = route(self.dicom, rq)
        if isinstance(allowed, Reject):
            self.refuse(allowed, "unknown-called-ae", f"called AE {rq.called_ae!r} has no route")
            return
        self.allowed = allowed
        if self.runtime.service.persistence.kind == "calling-ae":
            self.sticky_key = rq.calling_ae
        try:
            self._next()  # tcp.py: pick, connect (with retries), then _relay()
        except Exception as exc:
            self.fail(exc)

    # --- choosing (tcp.py's connect loop calls these) ---------------------------------------

    def _target(self) -> tuple[str, str, int] | None:
        runtime = self.runtime
        port = self.listener.vip_port
        if len(self.tried) < min(MAX_TRIES, len(runtime.service.real_servers)):
            rs = runtime.pick(self.sticky_key, self.tried, allowed=self.allowed)
            if rs is not None:
                return rs.label, rs.address, rs.port or port
        # No fallback ("sorry") server for DICOM: a modality understands an
        # A-ASSOCIATE-RJ, and an archive it did not call would take its images.
        rq = self.request
        what = f"{rq.calling_ae} -> {rq.called_ae}" if rq is not None else self.client_ip
        tried = f" (tried {', '.join(self.tried)})" if self.tried else ""
        self.refuse(REJECT_NO_SERVER, "no-server", f"no real server for {what}{tried}")
        return None  # tcp.py then closes, which refuse() has done already

    def _unplace(self) -> None:
        label = self.label
        if label is None:
            return
        self.label = None
        self.runtime.closed(label, self)
        if label != FALLBACK:
            self.runtime.release(self.sticky_key, label)

    # --- relaying --------------------------------------------------------------------------

    def _relay(self) -> None:
        assert self.server is not None and self.stats is not None
        kind = DicomPump if self.listener.use_splice else DicomCopyPump
        self.up = up = kind(self, self.client, self.server, self.stats, True)
        self.down = down = kind(self, self.server, self.client, self.stats, False)
        up.peer, down.peer = down, up
        up.ae_stats = down.ae_stats = self.ae_stats
        pipes = self.listener._pipes
        up.open(pipes)
        down.open(pipes)
        # The request as read, or with the called AE of the server it went to (the one
        # connected now: an earlier attempt on another server left the bytes as they were).
        placed = self.runtime.server(self.label or "")
        rq = self.rq
        if placed is not None and placed.ae_title is not None:
            rq = rewrite_called_ae(rq, placed.ae_title)
        up.preload(rq)
        self.rq = b""
        self.started = time.monotonic()
        for stats in (self.stats, self.ae_stats):
            if stats is not None:
                stats.associations += 1
                stats.assoc_active += 1
        # The request goes out first, then the client is read. On the next loop turn: tcp.py
        # removes its connect writer on this server fd right after _relay() returns.
        self.loop.call_soon(up.run)
        down.wait_source()

    def cut(self, reason: str) -> None:
        """End the association with A-ABORT to both sides, each at its next PDU boundary
        (halt, a removed server, the drain cap, idle); a reset if that takes CUT_GRACE."""
        if self.closed:
            return
        up, down = self.up, self.down
        if up is None or down is None:
            self.refuse(ABORT_NOT_SPECIFIED, "cut", reason)  # not relaying yet
            return
        assert isinstance(up, DicomPump | DicomCopyPump)
        assert isinstance(down, DicomPump | DicomCopyPump)
        if self.cut_reason:
            return
        self.cut_reason = reason
        log.info("ending %r with A-ABORT: %s", self, reason)
        service, label = self.runtime.service.label, self.label or ""
        notice(
            f"association ended with A-ABORT: {reason}",
            service,
            label,
            key=f"dicom-cut/{service}/{label}",
        )
        up.cut()
        down.cut()
        self._linger_timer = self.loop.call_later(CUT_GRACE, self._close, True)

    def abort(self, reason: str = "") -> None:
        """Halt, removal, idle timeout, shutdown: an A-ABORT at a PDU boundary rather than a
        reset; `reason` (runtime.HALTED, "idle for 900 s", ...) is what the event says."""
        self.cut(reason or "reason not given")

    # --- refusing --------------------------------------------------------------------------

    def refuse(self, answer: Reject | Abort, kind: str, message: str) -> None:
        """Answer the client (A-ASSOCIATE-RJ or A-ABORT), report it, and close: what the
        client still sends meanwhile is read and dropped for a moment (LINGER), so that its
        kernel does not answer our close with a reset before it has read the answer."""
        if self.closed:
            return
        self._stop_reading_request()
        report_refusal(self.runtime, self.ae_stats, answer, kind, message, self.client_ip)
        with contextlib.suppress(OSError):
            self.client.send(answer.pdu())
        self._stop_connecting()
        self._linger()

    def direction_done(self) -> None:
        up, down = self.up, self.down
        if self.cut_reason and up is not None and down is not None and up.done and down.done:
            # Both A-ABORTs are out. The client may still be writing a data set and reads
            # the A-ABORT only after it: keep reading its bytes (dropped) until it closes, or
            # it would get a reset (EPIPE) instead of the abort.
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
            if self.server is not None:
                with contextlib.suppress(OSError):  # the server has its A-ABORT: FIN now
                    self.server.shutdown(socket.SHUT_WR)
            self._linger(CUT_GRACE, CUT_LINGER_BYTES)
            return
        super().direction_done()

    def _linger(self, seconds: float = LINGER, limit: int = LINGER_BYTES) -> None:
        """Half-close towards the client, read and drop until its EOF (bounded), then close."""
        self.closed = True  # from now on nothing is relayed; _finish_linger releases all
        self.lingering = True
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)
        fd = self.client.fileno()
        budget = [limit]

        def drop() -> None:
            try:
                while budget[0] > 0:
                    k = self.client.recv_into(_SINK)
                    if not k:
                        break
                    budget[0] -= k
            except (BlockingIOError, InterruptedError):
                if budget[0] > 0:
                    return
            except OSError:
                pass
            self._finish_linger()

        try:
            self.loop.add_reader(fd, drop)
        except Exception:
            self._finish_linger()
            return
        self._linger_timer = self.loop.call_later(seconds, self._finish_linger)

    def _finish_linger(self) -> None:
        if not self.lingering:
            return
        self.lingering = False
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.client.fileno())
        self.closed = False  # let _close() run its one teardown
        self._close(reset=False)

    # --- the end ---------------------------------------------------------------------------

    def _close(self, reset: bool) -> None:
        if self.closed:
            return
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._rq_timer is not None:
            self._stop_reading_request()
        self._account_end()
        super()._close(reset)

    def _account_end(self) -> None:
        up, down = self.up, self.down
        if not self.started or not isinstance(up, DicomPump | DicomCopyPump):
            return
        assert isinstance(down, DicomPump | DicomCopyPump)
        seconds = time.monotonic() - self.started
        self.started = 0.0
        rejected = down.tracker.first == A_ASSOCIATE_RJ
        aborted = bool(self.cut_reason) or up.tracker.aborts > 0 or down.tracker.aborts > 0
        for stats in (self.stats, self.ae_stats):
            if stats is None:
                continue
            stats.assoc_active -= 1
            stats.assoc_seconds += seconds
            stats.assoc_rejected += rejected
            stats.assoc_aborted += aborted
        if self.ae_stats is not None:
            self.ae_stats.bytes_in += up.total
            self.ae_stats.bytes_out += down.total
