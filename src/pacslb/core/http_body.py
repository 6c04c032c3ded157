"""HTTP/1.1 message bodies for the l7-http proxy, without I/O: where a body ends (length,
chunked, until close), strict chunked decoding (RFC 9112 §7.1), re-chunking, head limits."""

from __future__ import annotations

from collections.abc import Sequence

from pacslb.core.http import (
    CHUNKED,
    HEX,
    LENGTH,
    MAX_CHUNK_LINE,
    MAX_HEADER_SECTION,
    MAX_REQUEST_LINE,
    MAX_TRAILERS,
    NO_BODY,
    OWS,
    TCHAR,
    VISIBLE,
)


def rechunk(pieces: Sequence[bytes | memoryview], last: bool = False) -> bytes:
    """Data pieces -> chunked coding (and the last-chunk when the body ends), one bytes object
    so that the transport sees one write."""
    out: list[bytes | memoryview] = []
    for p in pieces:
        size = len(p)
        if size:
            out += (b"%x\r\n" % size, p, b"\r\n")
    if last:
        out.append(b"0\r\n\r\n")
    return b"".join(out)


# ChunkedDecoder states
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE, _ERROR = range(6)


class ChunkedDecoder:
    """A strict chunked transfer-coding decoder (RFC 9112 §7.1).

    feed(data) -> (data pieces, bytes of `data` consumed). All of `data` is consumed unless
    the body ended inside it (then `done`, and the rest belongs to the next message) or the
    coding is broken (then consumed == -1 and `error` says why: a size that is not hex or too
    long, a line ending in a bare LF, chunk data longer than its size, oversized trailers). A
    body that ends before its last chunk is never complete. Extensions and trailers are
    dropped: the proxy re-chunks what it forwards.
    """

    __slots__ = ("_left", "_line", "_state", "_trailers", "error")

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = b""
        self._trailers = 0
        self.error = ""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def _fail(self, why: str) -> tuple[list[bytes | memoryview], int]:
        self._state = _ERROR
        self.error = why
        return [], -1

    def feed(self, data: bytes) -> tuple[list[bytes | memoryview], int]:
        out: list[bytes | memoryview] = []
        pos = 0
        end = len(data)
        view: memoryview | None = None
        if self._state >= _DONE:
            return out, (0 if self._state == _DONE else -1)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                if take == end:
                    out.append(data)
                else:
                    if view is None:
                        view = memoryview(data)
                    out.append(view[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = _DATA_END
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > MAX_CHUNK_LINE:
                    return self._fail("chunk line too long")
                break
            line = self._line + data[pos:nl] if self._line else data[pos:nl]
            self._line = b""
            pos = nl + 1
            if not line.endswith(b"\r"):
                return self._fail("bare LF in chunked coding")
            line = line[:-1]
            if len(line) > MAX_CHUNK_LINE or line.translate(None, VISIBLE):
                return self._fail("bad character or line length in chunked coding")
            if state == _DATA_END:
                if line:
                    return self._fail("chunk data longer than its size")
                self._state = _SIZE
            elif state == _SIZE:
                size, semi, _ext = line.partition(b";")
                if semi:
                    size = size.rstrip(OWS)  # BWS before a chunk extension
                digits = size.lstrip(b"0")
                if not size or len(digits) > 15 or size.translate(None, HEX):
                    return self._fail("chunk size is not a hex number of 1-15 digits")
                if digits:
                    self._left = int(digits, 16)
                    self._state = _DATA
                else:
                    self._state = _TRAILER
                    self._trailers = 0
            else:  # _TRAILER
                if not line:
                    self._state = _DONE
                    return out, pos
                self._trailers += len(line) + 2
                colon = line.find(b":")
                if (
                    self._trailers > MAX_TRAILERS
                    or colon <= 0
                    or line[:colon].translate(None, TCHAR)
                ):
                    return self._fail("malformed or oversized trailer section")
        return out, pos


class BodyReader:
    """A message body as it arrives: what to forward, and where the message ends.

    feed(data) -> (bytes to forward, bytes of `data` consumed). All of `data` is consumed
    unless the body ends inside it (`done`: the rest is the next message) or its chunked coding
    is broken (consumed == -1). A chunked body is forwarded re-chunked, or decoded for an
    HTTP/1.0 client (`rechunk=False`); an UNTIL_CLOSE body ends only with its connection.
    """

    __slots__ = ("_decoder", "_left", "_rechunk", "done")

    def __init__(self, framing: int, length: int = 0, rechunk: bool = True) -> None:
        self._left = length if framing == LENGTH else -1
        self._decoder = ChunkedDecoder() if framing == CHUNKED else None
        self._rechunk = rechunk
        self.done = framing == NO_BODY or (framing == LENGTH and length == 0)

    def feed(self, data: bytes) -> tuple[bytes, int]:
        left = self._left
        if left >= 0:
            n = len(data)
            if n < left:
                self._left = left - n
                return data, n
            self._left = 0
            self.done = True
            return (data if n == left else data[:left]), left
        decoder = self._decoder
        if decoder is None:
            return data, len(data)
        pieces, used = decoder.feed(data)
        if used < 0:
            return b"", -1
        self.done = decoder.done
        return (rechunk(pieces, self.done) if self._rechunk else b"".join(pieces)), used


def head_overflow(data: bytes) -> int:
    """A head still without its blank line: the status to answer now (414, 431, 400 for a bare
    LF, which would never end it), or 0 to wait for more."""
    if len(data) > MAX_REQUEST_LINE and data.find(b"\r\n", 0, MAX_REQUEST_LINE + 2) < 0:
        return 414
    if len(data) > MAX_REQUEST_LINE + MAX_HEADER_SECTION + 4:
        return 431
    return 400 if data.count(b"\n") != data.count(b"\r\n") else 0
