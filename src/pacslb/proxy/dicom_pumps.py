"""One direction of an l7-dicom association: tcp.py's pump, PDU by PDU.

`DicomPump` splices as tcp._Pump does, but never past the end of the current PDU: at each
boundary it peeks the next 6-byte header (recv MSG_PEEK, so the header still goes through the
pipe with its body) and hands it to a PduTracker. Whole PDUs are gathered in the pipe up to
BATCH bytes before they are written on, so a C-STORE's 16 KiB P-DATA-TF PDUs cost one peek
and one splice in each, and one splice out per BATCH. `cut()` makes the pump put an A-ABORT
after the last whole PDU and then end the direction as if the source had closed.

`DicomCopyPump` is the same on the recv/send path (no splice): it sees the bytes it holds.
"""

from __future__ import annotations

import contextlib
import os
import socket

from pacslb.core.dicom import P_DATA_TF
from pacslb.core.dicom_assoc import HEADER, PduTracker, abort_pdu
from pacslb.proxy.runtime import ServerStats
from pacslb.proxy.tcp import _SPLICE_FLAGS, CHUNK, COPY_CHUNK, _CopyPump, _Pump

__all__ = ["ABORT", "BATCH", "DicomCopyPump", "DicomPump"]

BATCH = 1 << 18  # bytes of whole PDUs gathered in the pipe before they are written on
# The proxy ends an association as DICOM UL service-provider (PS3.8 §9.3.8 Table 9-26: source
# 2, reason 0 reason-not-specified): a halt or a drain cap is no protocol fault of either peer.
ABORT = abort_pdu(source=2, reason=0)
_PEEK = socket.MSG_PEEK
_HEAD = bytearray(HEADER)  # where headers are peeked into (one loop thread: one buffer)


def _saw(pump: DicomPump, head: bytes | bytearray) -> int:
    """A header at a boundary: tracked and counted; the PDU's total length."""
    total = pump.tracker.header(head)
    if head[0] == P_DATA_TF:
        pump.stats.pdata_pdus += 1
        if pump.ae_stats is not None:
            pump.ae_stats.pdata_pdus += 1
    return total


class DicomPump(_Pump):
    __slots__ = ("ae_stats", "cutting", "tracker")

    def __init__(
        self,
        conn: object,
        src: socket.socket,
        dst: socket.socket,
        stats: ServerStats,
        inbound: bool,
    ) -> None:
        super().__init__(conn, src, dst, stats, inbound)  # type: ignore[arg-type]
        self.tracker = PduTracker()
        self.cutting = False
        self.ae_stats: ServerStats | None = None

    def preload(self, data: bytes) -> None:
        """The request read before the server was chosen: the first bytes to the server.
        Sent at once where the fresh socket takes it, the rest through the pipe."""
        self.tracker.feed(data)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            sent = self.dst.send(data)
        rest = data[sent:]
        while rest:
            k = os.write(self.pipe_w, rest)  # the pipe (1 MiB, or 64 KiB) holds max_request
            self.pending += k
            rest = rest[k:]
        self.account(sent)

    def cut(self) -> None:
        """End this direction at the next PDU boundary with an A-ABORT to its destination."""
        if self.done or self.eof or self.cutting:
            return
        self.cutting = True
        self.loop.call_soon(self.run)

    def run(self) -> None:
        """Move whole PDUs until the source runs dry or the destination is full."""
        if self.conn.closed:
            return
        splice = os.splice
        tracker = self.tracker
        src, src_fd, pipe_w = self.src, self.src_fd, self.pipe_w
        n = self.pending
        moved = 0
        dry = False
        try:
            while True:
                if n and (dry or self.eof or n >= BATCH):
                    k = splice(self.pipe_r, self.dst_fd, n, None, None, _SPLICE_FLAGS)
                    n -= k
                    moved += k
                    continue
                if self.eof:
                    break
                if dry:
                    self.pending = 0
                    self.account(moved)
                    self.wait_source()
                    return
                need = tracker.need
                if not need:
                    if self.cutting and not tracker.partial:
                        n += os.write(pipe_w, ABORT)
                        self.eof = True
                        continue
                    partial = tracker.partial
                    want = HEADER - len(partial)
                    try:
                        got = src.recv_into(_HEAD, want, _PEEK)
                    except (BlockingIOError, InterruptedError):
                        dry = True
                        continue
                    if not got:
                        self.eof = True
                        continue
                    if got < want:
                        # A header split across segments: take its bytes now (a peek would
                        # see them again at every wake-up) and pass them on in order.
                        piece = src.recv(got)
                        n += os.write(pipe_w, piece)
                        tracker.partial = partial + piece
                        dry = True
                        continue
                    if partial:
                        tracker.partial = b""
                        need = _saw(self, partial + _HEAD[:want]) - len(partial)
                    else:
                        need = _saw(self, _HEAD)
                    tracker.need = need
                want = need if need < CHUNK else CHUNK
                try:
                    k = splice(src_fd, pipe_w, want, None, None, _SPLICE_FLAGS)
                except (BlockingIOError, InterruptedError):
                    dry = True
                    continue
                if not k:
                    self.eof = True
                    continue
                tracker.need = need - k
                n += k
                dry = k < want
        except BlockingIOError:  # the destination is full (every read handles its own)
            if n and not self.eof:
                n += self.fill()
            self.pending = n
            self.account(moved)
            self.wait_destination()
            return
        except Exception as exc:  # one connection's failure stays its own
            self.account(moved)
            self.conn.fail(exc, server=(n > 0) == self.inbound)
            return
        self.pending = 0
        self.account(moved)
        self.finish()

    def fill(self) -> int:
        """The destination is full: take more of the current PDU into the pipe meanwhile."""
        need = self.tracker.need
        if not need or self.cutting:
            return 0
        try:
            k = os.splice(self.src_fd, self.pipe_w, min(need, CHUNK), None, None, _SPLICE_FLAGS)
        except OSError:
            return 0
        if not k:
            self.eof = True
        self.tracker.need -= k
        return k


class DicomCopyPump(_CopyPump):
    """The recv/send path: reads are limited to the current PDU only while cutting."""

    __slots__ = ("ae_stats", "cutting", "tracker")

    def __init__(
        self,
        conn: object,
        src: socket.socket,
        dst: socket.socket,
        stats: ServerStats,
        inbound: bool,
    ) -> None:
        super().__init__(conn, src, dst, stats, inbound)  # type: ignore[arg-type]
        self.tracker = PduTracker()
        self.cutting = False
        self.ae_stats: ServerStats | None = None

    def preload(self, data: bytes) -> None:
        self.tracker.feed(data)
        if len(data) > len(self.buf):
            self.buf = bytearray(len(data))
            self.view = memoryview(self.buf)
        self.buf[: len(data)] = data
        self.offset, self.pending = 0, len(data)

    def cut(self) -> None:
        if self.done or self.eof or self.cutting:
            return
        self.cutting = True
        self.loop.call_soon(self.run)

    def run(self) -> None:
        if self.conn.closed:
            return
        n = self.pending
        off = self.offset
        moved = 0
        tracker = self.tracker
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
                if self.cutting and tracker.at_boundary:
                    self.buf[: len(ABORT)] = ABORT
                    n, off = len(ABORT), 0
                    self.eof = True
                    continue
                # While cutting, read no further than the current PDU's end.
                limit = COPY_CHUNK
                if self.cutting:
                    limit = min(limit, tracker.need or HEADER - len(tracker.partial))
                k = self.src.recv_into(self.buf, limit)
                if not k:
                    self.eof = True
                    continue
                p_data = tracker.feed(self.view[:k])
                if p_data:
                    self.stats.pdata_pdus += p_data
                    if self.ae_stats is not None:
                        self.ae_stats.pdata_pdus += p_data
                n, off = k, 0
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
