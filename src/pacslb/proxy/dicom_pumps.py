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
import struct
from collections.abc import Callable

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
# A peek takes up to PEEK bytes: the header, and for a small PDU (a DIMSE response) the whole
# of it, which says whether more follows. One buffer: one loop thread uses it.
PEEK = 256
_HEAD = bytearray(PEEK)
_LENGTH = struct.Struct(">I").unpack_from  # a PDU's length field, at offset 2 of its header

# The hot loop in C where it is built (_pdufast.c: whole P-DATA-TF PDUs, nothing else);
# without it, the same loop runs in Python below. PACSLB_PDU_PYTHON=1 forces Python (tests).
_relay: Callable[[int, int, int, int], tuple[int, int, int, int]] | None = None
_STOP_DRY, _STOP_EOF, _STOP_HEADER, _STOP_LIMIT = 0, 1, 2, 3
if not os.environ.get("PACSLB_PDU_PYTHON"):
    try:
        from pacslb.proxy import _pdufast
    except ImportError:
        pass
    else:
        if (_pdufast.PEEK, _pdufast.CHUNK) != (PEEK, CHUNK):
            raise ImportError("pacslb.proxy._pdufast was built with other limits")
        _relay = _pdufast.relay
        _STOP_DRY, _STOP_EOF = _pdufast.STOP_DRY, _pdufast.STOP_EOF
        _STOP_HEADER, _STOP_LIMIT = _pdufast.STOP_HEADER, _pdufast.STOP_LIMIT
COMPILED = _relay is not None


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
        """Move whole PDUs until the source runs dry or the destination is full.

        The hot loop of a C-STORE (one turn per 16 KiB P-DATA-TF PDU with dcmtk's default
        maximum length): the tracker's state is kept in locals and written back once per
        call (`_sync`), P-DATA-TF headers are counted inline, other PDUs go to the tracker."""
        if self.conn.closed:
            return
        splice = os.splice
        fast = _relay
        tracker = self.tracker
        peek = self.src.recv_into
        src_fd, pipe_w = self.src_fd, self.pipe_w
        need = tracker.need
        p_data = 0
        window = 0  # bytes known to be in the socket (from the last peek), 0: unknown
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
                    self._sync(need, p_data)
                    self.pending = 0
                    self.account(moved)
                    self.wait_source()
                    return
                if fast is not None and not self.cutting and not tracker.partial:
                    # Whole P-DATA-TF PDUs in C, until anything else needs a decision.
                    got, need, seen, stop = fast(src_fd, pipe_w, need, BATCH - n)
                    n += got
                    p_data += seen
                    if stop == _STOP_LIMIT:
                        continue
                    if stop == _STOP_DRY:
                        dry = True
                        continue
                    if stop == _STOP_EOF:
                        self.eof = True
                        continue
                    if stop < 0:
                        raise OSError(-stop, os.strerror(-stop))
                    # _STOP_HEADER: at a boundary, a header for the Python below
                if not need:
                    if self.cutting and not tracker.partial:
                        n += os.write(pipe_w, ABORT)
                        self.eof = True
                        continue
                    if tracker.partial:
                        if n:  # taken bytes need an empty pipe (as below)
                            dry = True
                            continue
                        got = self._rest_of_header()
                        if got < 0:
                            self.eof = True
                            continue
                        n += got
                        need = tracker.need
                        dry = not need
                        continue
                    try:
                        got = peek(_HEAD, PEEK, _PEEK)
                    except (BlockingIOError, InterruptedError):
                        dry = True
                        continue
                    # Fewer bytes than asked: that is all the socket holds now, so once they
                    # are moved it is empty and no read need fail to say so (a C-STORE-RSP,
                    # a C-ECHO: the whole PDU is seen in this one peek).
                    window = got if got < PEEK else 0
                    if got < HEADER:
                        if not got:
                            self.eof = True
                            continue
                        if n:
                            # Bytes taken out of the socket must go into the pipe at once,
                            # which only an empty pipe promises (one of 64 KiB, or one whose
                            # slots small segments took, is full below BATCH): write on what
                            # it holds first; the socket, still readable, wakes us again.
                            dry = True
                            continue
                        # A header split across segments: take its bytes now (a peek would
                        # see them again at every wake-up) and pass them on in order.
                        piece = self.src.recv(got)
                        n += os.write(pipe_w, piece)
                        tracker.partial = piece
                        dry = True
                        continue
                    if _HEAD[0] == P_DATA_TF and tracker.pdus:
                        p_data += 1
                        need = HEADER + _LENGTH(_HEAD, 2)[0]
                    else:  # the first PDU, or a rare one (release, abort, unknown)
                        self._sync(0, p_data)
                        p_data = 0
                        if _HEAD[0] == P_DATA_TF:
                            self._count(1)
                        need = tracker.header(_HEAD)
                want = need if need < CHUNK else CHUNK
                try:
                    k = splice(src_fd, pipe_w, want, None, None, _SPLICE_FLAGS)
                except (BlockingIOError, InterruptedError):
                    dry = True
                    continue
                if not k:
                    self.eof = True
                    continue
                need -= k
                n += k
                dry = k < want
                if window:
                    window -= k
                    dry = dry or window <= 0
        except BlockingIOError:  # the destination is full (every read handles its own)
            self._sync(need, p_data)
            if n and not self.eof:
                n += self.fill()
            self.pending = n
            self.account(moved)
            self.wait_destination()
            return
        except Exception as exc:  # one connection's failure stays its own
            self._sync(need, p_data)
            self.account(moved)
            self.conn.fail(exc, server=(n > 0) == self.inbound)
            return
        self._sync(need, p_data)
        self.pending = 0
        self.account(moved)
        self.finish()

    def _sync(self, need: int, p_data: int) -> None:
        """Write the hot loop's locals back: where the PDU ends, P-DATA-TF PDUs seen."""
        tracker = self.tracker
        tracker.need = need
        if p_data:
            tracker.pdus += p_data
            tracker.p_data += p_data
            tracker.last = P_DATA_TF
            self._count(p_data)

    def _count(self, p_data: int) -> None:
        if p_data:
            self.stats.pdata_pdus += p_data
            if self.ae_stats is not None:
                self.ae_stats.pdata_pdus += p_data

    def _rest_of_header(self) -> int:
        """The rest of a header split across segments, taken (not peeked) and put in the pipe
        behind its first bytes: the bytes added, 0 if none came yet, -1 at EOF."""
        tracker = self.tracker
        try:
            piece = self.src.recv(HEADER - len(tracker.partial))
        except (BlockingIOError, InterruptedError):
            return 0
        if not piece:
            return -1
        written = os.write(self.pipe_w, piece)
        head = tracker.partial + piece
        if len(head) < HEADER:
            tracker.partial = head
            return written
        tracker.partial = b""
        if head[0] == P_DATA_TF:
            self._count(1)
        tracker.need = tracker.header(head) - HEADER
        return written

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
