"""pacslb.core.http_body: chunked coding, body framing and head limits, on bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacslb.core.http import (
    CHUNKED,
    LENGTH,
    MAX_HEADER_SECTION,
    NO_BODY,
    UNTIL_CLOSE,
)
from pacslb.core.http_body import (
    BodyReader,
    ChunkedDecoder,
    head_overflow,
    rechunk,
)

# --- chunked coding ------------------------------------------------------------------------


def decode(*parts: bytes) -> tuple[bytes, bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = b""
    rest = b""
    for part in parts:
        pieces, used = decoder.feed(part)
        assert used >= 0, decoder.error
        out += b"".join(bytes(p) for p in pieces)
        if decoder.done:
            rest = part[used:]
    return out, rest, decoder


def test_chunked_decoding() -> None:
    body, rest, decoder = decode(b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT")
    assert (body, rest, decoder.done) == (b"hello world", b"NEXT", True)
    body, rest, decoder = decode(b"3 ;ext\r\nabc\r\n000\r\n\r\n")
    assert (body, decoder.done) == (b"abc", True)
    body, _, decoder = decode(b"5\r\nhel", b"lo\r\n")
    assert body == b"hello" and not decoder.done  # no last chunk: never complete
    assert decoder.feed(b"0\r\n\r\n") == ([], 5)


@pytest.mark.parametrize(
    "data",
    [
        b"zz\r\nabc\r\n",
        b"\r\n",
        b"fffffffffffffffff1\r\n",
        b"3\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\n0\r\n\r\n",
        b"3\r\nabcd\r\n",
        b"3 \r\nabc\r\n",
        b"-3\r\nabc\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        b"0\r\n X: folded\r\n\r\n",
        b"3;a\x00b\r\nabc\r\n",
        b"1" * 5000,
    ],
)
def test_chunked_errors(data: bytes) -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(data) == ([], -1) and decoder.error
    assert decoder.feed(b"0\r\n\r\n") == ([], -1)  # broken stays broken


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_chunked_round_trip_in_any_split(pieces: list[bytes], data: st.DataObject) -> None:
    encoded = rechunk(pieces, last=True) + b"AFTER"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=6)))
    parts = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    decoder = ChunkedDecoder()
    body = b""
    rest = b""
    for part in parts:
        if decoder.done:
            rest += part
            continue
        out, used = decoder.feed(part)
        assert used >= 0
        body += b"".join(bytes(p) for p in out)
        if decoder.done:
            rest += part[used:]
    assert decoder.done and body == b"".join(pieces) and rest == b"AFTER"


def test_rechunk() -> None:
    assert rechunk([b"abc", b"", memoryview(b"0123456789abcdef")]) == (
        b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n"
    )
    assert rechunk([], last=True) == b"0\r\n\r\n"


def test_body_reader() -> None:
    length = BodyReader(LENGTH, 5)
    assert length.feed(b"abc") == (b"abc", 3) and not length.done
    assert length.feed(b"deNEXT") == (b"de", 2) and length.done
    assert BodyReader(LENGTH, 0).done and BodyReader(NO_BODY).done

    chunked = BodyReader(CHUNKED)
    assert chunked.feed(b"5;x\r\nhello\r\n0\r\n\r\nNEXT") == (b"5\r\nhello\r\n0\r\n\r\n", 17)
    assert chunked.done
    decoded = BodyReader(CHUNKED, rechunk=False)  # for an HTTP/1.0 client
    assert decoded.feed(b"5\r\nhello\r\n") == (b"hello", 10) and not decoded.done
    assert BodyReader(CHUNKED).feed(b"zz\r\n") == (b"", -1)

    until_close = BodyReader(UNTIL_CLOSE)
    assert until_close.feed(b"anything") == (b"anything", 8) and not until_close.done


def test_head_overflow() -> None:
    assert head_overflow(b"GET / HTTP/1.1\r\nHost: a\r\n") == 0  # wait for more
    assert head_overflow(b"GET /" + b"x" * 9000) == 414
    assert head_overflow(b"GET / HTTP/1.1\r\n" + b"X: " + b"v" * MAX_HEADER_SECTION * 2) == 431
    assert head_overflow(b"GET / HTTP/1.1\nHost: a\n") == 400  # bare LF: it would never end
