"""pacslb.core.http_response: upstream responses and the heads clients get, on bytes."""

from __future__ import annotations

import pytest

from pacslb.core.http import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Reject,
    Response,
    parse_request,
    set_cookie_fields,
)
from pacslb.core.http_response import (
    client_response_head,
    parse_response,
    short_response,
)


def response(head: bytes, head_request: bool = False, cookie: bytes | None = None) -> Response:
    resp = parse_response(head, head_request, cookie)
    assert isinstance(resp, Response), resp
    return resp


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
