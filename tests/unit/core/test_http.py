"""pacslb.core.http: the request rules of research/http-proxy.md, on bytes (no sockets)."""

from __future__ import annotations

import pytest

from pacslb.core.http import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    Reject,
    Request,
    check_request,
    forwarded_fields,
    parse_request,
    set_cookie_fields,
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
