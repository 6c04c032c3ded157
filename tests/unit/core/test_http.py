"""pacslb.core.http: the HTTP/1.1 rules of research/http-proxy.md, on bytes (no sockets)."""

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
    BodyReader,
    ChunkedDecoder,
    IdlePool,
    Reject,
    Request,
    Response,
    SniTable,
    check_request,
    client_response_head,
    forwarded_fields,
    head_overflow,
    parse_request,
    parse_response,
    rechunk,
    set_cookie_fields,
    short_response,
    split_cookie,
    upstream_request_head,
)


def request(*lines: str, cookie: bytes | None = None) -> Request:
    req = parse_request("\r\n".join(lines).encode("latin-1"), cookie)
    assert isinstance(req, Request), req
    return req


def rejected(*lines: str) -> int:
    req = parse_request("\r\n".join(lines).encode("latin-1"))
    assert isinstance(req, Reject), req
    return req.status


def response(head: bytes, head_request: bool = False, cookie: bytes | None = None) -> Response:
    resp = parse_response(head, head_request, cookie)
    assert isinstance(resp, Response), resp
    return resp


# --- requests ----------------------------------------------------------------------------


def test_a_plain_request_is_forwarded_verbatim() -> None:
    req = request("GET /cis/index.html HTTP/1.1", "Host: vip", "Accept: */*", "X-Odd-Case: v")
    assert (req.method, req.version, req.framing, req.keep_alive) == (b"GET", 11, NO_BODY, True)
    assert req.line == b"GET /cis/index.html HTTP/1.1"
    assert req.headers == b"Host: vip\r\nAccept: */*\r\nX-Odd-Case: v\r\n"
    head = upstream_request_head(req, forwarded_fields("10.1.2.3", https=False))
    assert head == (
        b"GET /cis/index.html HTTP/1.1\r\nHost: vip\r\nAccept: */*\r\nX-Odd-Case: v\r\n"
        b"X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\n\r\n"
    )


def test_hop_by_hop_fields_are_removed() -> None:
    req = request(
        "GET / HTTP/1.1",
        "Host: vip",
        "Connection: keep-alive, X-Private",
        "X-Private: 1",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-T",
        "Upgrade: h2c",
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Proto: https",
        "X-End: 1",
    )
    assert req.headers == b"Host: vip\r\nX-End: 1\r\n"
    assert req.upgrade is None  # Upgrade without Connection: upgrade is not a request to switch


def test_connection_semantics() -> None:
    assert not request("GET / HTTP/1.1", "Host: a", "Connection: close").keep_alive
    assert not request("GET / HTTP/1.0").keep_alive
    assert request("GET / HTTP/1.0", "Connection: Keep-Alive").keep_alive
    ws = request("GET /ws HTTP/1.1", "Host: a", "Connection: Upgrade", "Upgrade: websocket")
    assert ws.upgrade == b"websocket"
    head = upstream_request_head(ws, b"")
    assert head.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    old = upstream_request_head(request("GET / HTTP/1.0"), b"")
    assert old == b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"  # poolable


def test_body_framing() -> None:
    assert request("POST / HTTP/1.1", "Host: a", "Content-Length: 12").framing == LENGTH
    assert request("POST / HTTP/1.1", "Host: a", "Content-Length: 0").framing == NO_BODY
    chunked = request("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: Chunked")
    assert chunked.framing == CHUNKED and chunked.headers == b"Host: a\r\n"
    assert upstream_request_head(chunked, b"").endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    twice = request("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Content-Length: 3")
    assert (twice.length, twice.headers) == (3, b"Host: a\r\nContent-Length: 3\r\n")
    assert request("POST / HTTP/1.1", "Host: a", "Expect: 100-continue").expect_continue


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (("POST / HTTP/1.1", "Host: a", "Content-Length: 5", "Transfer-Encoding: chunked"), 400),
        (("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip"), 400),
        (("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, identity"), 400),
        (("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked"), 400),
        (("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: xchunked"), 400),
        (("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: \tchunked"), 400),
        (("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked "), 400),
        (
            (
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: chunked",
            ),
            400,
        ),
        (("POST / HTTP/1.0", "Transfer-Encoding: chunked"), 400),
        (("POST / HTTP/1.1", "Host: a", "Content-Length: +5"), 400),
        (("POST / HTTP/1.1", "Host: a", "Content-Length: 5,6"), 400),
        (("POST / HTTP/1.1", "Host: a", "Content-Length:  5 "), 400),
        (("POST / HTTP/1.1", "Host: a", "Content-Length: 0x5"), 400),
        (("POST / HTTP/1.1", "Host: a", "Content-Length: "), 400),
        (("POST / HTTP/1.1", "Host: a", "Content-Length: 99999999999999999999"), 400),
        (("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Content-Length: 4"), 400),
        (("GET / HTTP/1.1", "Host: a", "X-A : b"), 400),
        (("GET / HTTP/1.1", "Host: a", "X-A: b", " c"), 400),
        (("GET / HTTP/1.1", "Host: a", "X-A: b", "\tc"), 400),
        (("GET / HTTP/1.1", "Host: a", "X(A): b"), 400),
        (("GET / HTTP/1.1", "Host: a", ": b"), 400),
        (("GET / HTTP/1.1", "Host: a", "no colon"), 400),
        (("GET / HTTP/1.1", "Host: a", "X-A: b\x00c"), 400),
        (("GET / HTTP/1.1", "Host: a", "X-A: b\rc"), 400),
        (("GET / HTTP/1.1", "Host: a", "X-A: b\nc"), 400),
        (("GET / HTTP/1.1", "Host: a", "X-A: b\x7fc"), 400),
        (("GET / HTTP/1.1",), 400),
        (("GET / HTTP/1.1", "Host: a", "Host: b"), 400),
        (("GET / HTTP/1.0", "Host: a", "Host: a"), 400),
        (("GET /", "Host: a"), 400),
        (("GET  / HTTP/1.1", "Host: a"), 400),
        (("GET / http/1.1", "Host: a"), 400),
        (("G(T / HTTP/1.1", "Host: a"), 400),
        (("GET x HTTP/1.1", "Host: a"), 400),
        (("GET / HTTP/2.0", "Host: a"), 505),
        (("CONNECT a:443 HTTP/1.1", "Host: a"), 405),
        ((f"GET /{'x' * 8200} HTTP/1.1", "Host: a"), 414),
        (("GET / HTTP/1.1", "Host: a", *(f"X-{i}: v" for i in range(100))), 431),
        (("GET / HTTP/1.1", "Host: a", *(f"X-{i}: {'v' * 1000}" for i in range(33))), 431),
    ],
)
def test_rejected(lines: tuple[str, ...], status: int) -> None:
    assert rejected(*lines) == status


def test_accepted_edges() -> None:
    request("GET / HTTP/1.0")  # HTTP/1.0 needs no Host
    request("OPTIONS * HTTP/1.1", "Host: a")
    request("GET http://vip/x HTTP/1.1", "Host: vip")  # absolute-form
    request("PROPFIND /dav HTTP/1.1", "Host: a")  # any token method
    request("GET / HTTP/1.1", "Host: a", "X-Obs-Text: caf\xe9", "X-Tab: a\tb")
    request("GET / HTTP/1.1", "Host: a", *(f"X-{i}: v" for i in range(99)))


def test_check_request_agrees_with_parse_request() -> None:
    ok = check_request(b"POST", b"/", b"1.1", [(b"Host", b"a"), (b"Content-Length", b"3")])
    assert isinstance(ok, Request) and ok.framing == LENGTH and ok.length == 3
    both = [(b"Host", b"a"), (b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")]
    assert check_request(b"POST", b"/", b"1.1", both) == Reject(
        400, "both Transfer-Encoding and Content-Length"
    )
    assert isinstance(check_request(b"GET", b"/", b"1.1", []), Reject)  # no Host


# --- cookies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "found", "rest"),
    [
        (b"a=1; SRV=abc; b=2", "abc", b"a=1; b=2"),
        (b"SRV=abc", "abc", b""),
        (b'SRV="abc";a=1', "abc", b"a=1"),
        (b"a=1; SRV=x; SRV=y", "x", b"a=1"),
        (b"XSRV=abc; a=1", None, b"XSRV=abc; a=1"),
        (b"a=SRV=abc", None, b"a=SRV=abc"),
        (b"a=1", None, b"a=1"),
    ],
)
def test_split_cookie(value: bytes, found: str | None, rest: bytes) -> None:
    assert split_cookie(value, b"SRV") == (found, rest)


def test_persistence_cookie_is_stripped_from_requests() -> None:
    req = request("GET / HTTP/1.1", "Host: a", "Cookie: a=1; SRV=abc; b=2", cookie=b"SRV")
    assert req.cookie == "abc" and req.headers == b"Host: a\r\nCookie: a=1; b=2\r\n"
    only = request("GET / HTTP/1.1", "Host: a", "Cookie: SRV=abc", cookie=b"SRV")
    assert only.cookie == "abc" and only.headers == b"Host: a\r\n"
    other = request("GET / HTTP/1.1", "Host: a", "Cookie: a=1", cookie=b"SRV")
    assert other.cookie is None and other.headers == b"Host: a\r\nCookie: a=1\r\n"
    untouched = request("GET / HTTP/1.1", "Host: a", "Cookie: SRV=abc")
    assert untouched.cookie is None and b"SRV=abc" in untouched.headers


def test_set_cookie_fields() -> None:
    assert set_cookie_fields("SRV", "0a1b", secure=False, max_age=None) == (
        b"Set-Cookie: SRV=0a1b; Path=/; HttpOnly\r\nCache-Control: private\r\n"
    )
    assert set_cookie_fields("SRV", "0a1b", secure=True, max_age=600) == (
        b"Set-Cookie: SRV=0a1b; Path=/; HttpOnly; Secure; Max-Age=600\r\nCache-Control: private\r\n"
    )


def test_forwarded_fields() -> None:
    assert forwarded_fields("2001:db8::1", https=True) == (
        b"X-Forwarded-For: 2001:db8::1\r\nX-Forwarded-Proto: https\r\n"
    )


# --- responses ---------------------------------------------------------------------------

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 6\r\n"
    b'Connection: keep-alive\r\nETag: "x"'
)


def test_response_hop_by_hop_fields_are_removed() -> None:
    resp = response(NGINX)
    assert (resp.status, resp.reason, resp.framing, resp.length) == (200, b"200 OK", LENGTH, 6)
    assert resp.keep_alive
    assert resp.headers == (
        b'Server: nginx\r\nContent-Type: text/html\r\nContent-Length: 6\r\nETag: "x"\r\n'
    )
    named = response(
        b"HTTP/1.1 200 OK\r\nConnection: X-Private, close\r\nX-Private: 1\r\nKeep-Alive: t=5\r\n"
        b"Proxy-Connection: x\r\nTrailer: X\r\nUpgrade: h2c\r\nTE: x\r\nContent-Length: 0"
    )
    assert named.headers == b"Content-Length: 0\r\n" and not named.keep_alive
    bare = response(b"HTTP/1.1 204 No Content")
    assert bare.headers == b"" and bare.reason == b"204 No Content"
    assert response(b"HTTP/1.1 200\r\nContent-Length: 0").reason == b"200"


def test_connection_cannot_remove_framing_fields() -> None:
    """`Connection: content-length` must not strip the length: in a request the body would
    reach the server as a smuggled second request; in a response the client would be left with
    a kept-alive response of no length."""
    for field in (b"content-length", b"Content-Length, x-foo", b"host", b"transfer-encoding"):
        smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nConnection: " + field
        assert parse_request(smuggle, b"C") == Reject(400, "Connection names a framing field")
    resp = response(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: content-length")
    assert resp.framing == LENGTH and b"Content-Length: 6" in resp.headers


def test_response_framing() -> None:
    assert response(NGINX, head_request=True).framing == NO_BODY
    for status in (b"100 Continue", b"103 Early Hints", b"204 No Content", b"304 Not Modified"):
        assert response(b"HTTP/1.1 " + status + b"\r\nContent-Length: 12").framing == NO_BODY
    chunked = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5")
    assert chunked.framing == CHUNKED and chunked.headers == b"" and not chunked.keep_alive
    until_close = response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain")
    assert until_close.framing == UNTIL_CLOSE and not until_close.keep_alive
    old = response(b"HTTP/1.0 200 OK\r\nContent-Length: 1")
    assert old.version == 10 and not old.keep_alive
    assert response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive").keep_alive
    twice = response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\ncontent-length: 2")
    assert twice.headers == b"Content-Length: 2\r\nX: y\r\n"
    switched = response(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade"
    )
    assert switched.upgrade == b"websocket" and switched.headers == b""


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 1",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 1",
        b"HTTP/1.1 200 OK\r\nX: a\x00b",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/2 200 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 Odd",
        b"NOT HTTP",
    ],
)
def test_bad_responses_are_502(head: bytes) -> None:
    assert parse_response(head) == Reject(502, parse_response(head).reason)  # type: ignore[union-attr]
    assert isinstance(parse_response(head), Reject)


def test_lenient_names_pass_but_framing_is_strict() -> None:
    odd = response(b"HTTP/1.1 200 OK\r\nX(odd): 1\r\nContent-Length: 0")
    assert odd.headers == b"X(odd): 1\r\nContent-Length: 0\r\n"
    # RFC 9112 §5.1: whitespace before the colon of a response field is removed, and the
    # field read as the client will read it
    spaced = response(b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length\t: 3")
    assert spaced.headers == b"X-A: 1\r\nContent-Length: 3\r\n" and spaced.length == 3
    value = response(b"HTTP/1.1 200 OK\r\nX-A: time : 5\r\nContent-Length: 0")
    assert value.headers == b"X-A: time : 5\r\nContent-Length: 0\r\n"


def test_servers_persistence_cookie_is_removed() -> None:
    head = b"HTTP/1.1 200 OK\r\nSet-Cookie: SRV=forged\r\nSet-Cookie: app=1\r\nContent-Length: 0"
    assert response(head, cookie=b"SRV").headers == b"Set-Cookie: app=1\r\nContent-Length: 0\r\n"
    assert b"SRV=forged" in response(head).headers


def test_client_response_head() -> None:
    cookie = set_cookie_fields("SRV", "ab", secure=False, max_age=None)
    head, rechunk_body, keep = client_response_head(response(NGINX), 11, True, cookie)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n") and not rechunk_body and keep
    assert head.endswith(b'ETag: "x"\r\n' + cookie + b"\r\n")

    chunked = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")
    head, rechunk_body, keep = client_response_head(chunked, 11, True)
    assert (
        head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" and rechunk_body and keep
    )
    head, rechunk_body, keep = client_response_head(chunked, 10, True)  # no chunked for 1.0
    assert head == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" and not rechunk_body and not keep

    head, _, keep = client_response_head(response(NGINX), 10, True)
    assert head.endswith(b"Connection: keep-alive\r\n\r\n") and keep
    head, _, keep = client_response_head(response(b"HTTP/1.1 200 OK"), 11, True)
    assert head == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" and not keep
    head, _, keep = client_response_head(response(NGINX), 11, False)
    assert head.endswith(b"Connection: close\r\n\r\n") and not keep

    interim = client_response_head(response(b"HTTP/1.1 100 Continue"), 11, True, cookie)[0]
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # no cookie on a 1xx
    switched = response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX: 1")
    assert client_response_head(switched, 11, True)[0] == (
        b"HTTP/1.1 101 Switching Protocols\r\nX: 1\r\nConnection: upgrade\r\nUpgrade: websocket"
        b"\r\n\r\n"
    )


def test_short_responses() -> None:
    for status in (400, 408, 414, 431, 502, 503, 504):
        raw = short_response(status)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert b"Connection: close" in head and b"Content-Length: %d" % len(body) in head


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


def test_sni_table() -> None:
    table = SniTable([["pacs.example.org"], ["*.example.org", "viewer.example.net"], ["Other."]])
    assert table.choose("pacs.example.org") == 0
    assert table.choose("ris.example.org") == 1 and table.choose("VIEWER.example.net.") == 1
    assert table.choose("other") == 2
    assert table.choose("a.b.example.org") is None  # a wildcard is one label
    assert table.choose(None) is None and table.choose("unknown.test") is None


def test_idle_pool() -> None:
    pool: IdlePool[str, str] = IdlePool(max_idle=2, timeout=30.0)
    assert pool.put("A", "a1", now=0.0) and pool.put("A", "a2", now=10.0)
    assert not pool.put("A", "a3", now=11.0)  # full: the caller closes it
    assert pool.get("A") == "a2"  # last in, first out
    assert pool.put("A", "a2", now=20.0) and pool.put("B", "b1", now=20.0)
    pool.discard("A", "a2")
    assert pool.expire(now=35.0) == ["a1"]  # idle for 35 s > 30 s
    assert pool.get("A") is None
    assert pool.expire(now=36.0, gone=lambda key: key == "B") == ["b1"]
    assert pool.put("C", "c1", now=40.0) and pool.clear() == ["c1"] and pool.get("C") is None
