"""pacslb.core._headfast, the C fast path of the head parsers, against the Python parsers.

The C code may decline any head (the Python parser then decides), but a head it answers must
get exactly the Request or Response the Python parser returns. Checked on the heads real peers
send (which it must answer, or the proxy is slow), on every one-byte change of them (every
position, a set of bytes that matter to HTTP), and on heads generated from a grammar of the
fields and values that decide framing and forwarding."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacslb.core import _headfast, heads
from pacslb.core.http import parse_request
from pacslb.core.http_response import parse_response

COOKIE = b"PACSLB_SERVER"

REQUESTS = [
    b"GET /1k HTTP/1.1\r\nHost: 127.0.0.21:8080",  # wrk
    b"GET /wpp/srvpacs.asp HTTP/1.1\r\nHost: 127.0.0.31\r\nUser-Agent: curl/7.88.1\r\nAccept: */*",
    b"GET / HTTP/1.0",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: a",
    b"HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close",
    b"POST /api/studies HTTP/1.1\r\nHost: pacs\r\nContent-Type: application/json\r\n"
    b"Content-Length: 17\r\nExpect: 100-continue",
    b"PUT /x HTTP/1.1\r\nhost: a\r\ncontent-length:  0\r\nX-Forwarded-For: 10.0.0.1\r\n"
    b"X-Forwarded-Proto: https\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x\r\n"
    b"Proxy-Connection: keep-alive",
    b"GET /wpp/index.html HTTP/1.1\r\nHost: pacs.example.org\r\nConnection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="120"\r\nsec-ch-ua-mobile: ?0\r\nUpgrade-Insecure-Requests: 1\r\n'
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml;q=0.9\r\nSec-Fetch-Site: none\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-GB,en;q=0.9\r\n"
    b"Cookie: ASP.NET_SessionId=abc; theme=dark",
    b"DELETE /a?b=c HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close",
    # a browser with the persistence cookie (taken out), alone or among others
    b"GET /wpp/a.js HTTP/1.1\r\nHost: pacs\r\nCookie: PACSLB_SERVER=rs1\r\nAccept: */*",
    b'GET /wpp/a.js HTTP/1.1\r\nHost: pacs\r\nCookie: theme=dark; PACSLB_SERVER="rs2";'
    b" ASP.NET_SessionId=abc\r\nAccept: */*",
    b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nX-Custom: caf\xc3\xa9 \t value",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 07:30:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b'Last-Modified: Sun, 06 Dec 2026 07:00:00 GMT\r\nConnection: keep-alive\r\nETag: "a-400"\r\n'
    b"Accept-Ranges: bytes",
    b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Server: Microsoft-IIS/10.0\r\nX-AspNet-Version: 4.0.30319\r\nSet-Cookie: ASP.NET_SessionId=x;"
    b" path=/; HttpOnly\r\nX-Powered-By: ASP.NET\r\nDate: Sun, 06 Dec 2026 07:30:00 GMT\r\n"
    b"Content-Length: 10",
    b"HTTP/1.1 200 OK\r\nDate: x\r\nServer: Apache/2.4\r\nUpgrade: h2,h2c\r\n"
    b"Connection: Upgrade, Keep-Alive\r\nKeep-Alive: timeout=5, max=100\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Type: text/html",
    b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nContent-Length: 99",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 100 Continue",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5",
    b"HTTP/1.1 404\r\nContent-Length: 0\r\nConnection: close",
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 3\r\n"
    b"Set-Cookie: other=1",
]

# Bytes that matter to HTTP framing and field syntax, and a few that do not.
BYTES = [b"\r", b"\n", b" ", b"\t", b":", b",", b";", b"=", b"\x00", b"\x7f", b"\x80", b"0", b"a"]


def _same(fast: object, slow: object) -> None:
    assert fast == slow
    assert type(fast) is type(slow)


def check_request(head: bytes, cookie: bytes | None = None) -> bool:
    """Whether the fast path answered; fails if it answered differently."""
    slow = parse_request(head, cookie)
    fast = _headfast.try_request(head, cookie)
    _same(heads.parse_request(head, cookie), slow)
    if fast is None:
        return False
    _same(fast, slow)
    return True


def check_response(head: bytes, head_request: bool = False, cookie: bytes | None = None) -> bool:
    slow = parse_response(head, head_request, cookie)
    fast = _headfast.try_response(head, head_request, cookie)
    _same(heads.parse_response(head, head_request, cookie), slow)
    if fast is None:
        return False
    _same(fast, slow)
    return True


def mutations(head: bytes) -> list[bytes]:
    """Every one-byte replacement, insertion and deletion, with the bytes of BYTES."""
    out = []
    for i in range(len(head) + 1):
        for b in BYTES:
            out.append(head[:i] + b + head[i + 1 :])
            out.append(head[:i] + b + head[i:])
        out.append(head[:i] + head[i + 1 :])
    return out


def test_the_extension_is_built() -> None:
    # `make test` builds it (pip install -e); without it the proxy runs the Python parsers.
    assert heads.COMPILED
    assert heads.parse_request is _headfast.parse_request


@pytest.mark.parametrize("head", REQUESTS)
@pytest.mark.parametrize("cookie", [None, COOKIE])
def test_usual_requests_take_the_fast_path(head: bytes, cookie: bytes | None) -> None:
    assert check_request(head, cookie), "declined"


@pytest.mark.parametrize("head", RESPONSES)
@pytest.mark.parametrize(("head_request", "cookie"), [(False, None), (True, COOKIE)])
def test_usual_responses_take_the_fast_path(
    head: bytes, head_request: bool, cookie: bytes | None
) -> None:
    assert check_response(head, head_request, cookie), "declined"


@pytest.mark.parametrize("head", REQUESTS)
def test_every_one_byte_change_of_a_request(head: bytes) -> None:
    answered = sum(check_request(m, COOKIE) for m in mutations(head))
    assert answered > 0  # the comparisons above ran on answers, not only on declines


@pytest.mark.parametrize("head", RESPONSES)
def test_every_one_byte_change_of_a_response(head: bytes) -> None:
    answered = sum(check_response(m, False, COOKIE) for m in mutations(head))
    assert answered > 0


def test_declined_heads_go_to_the_python_parser() -> None:
    # What the fast path leaves alone: the persistence cookie in two lines, chunked requests,
    # upgrades, a Connection naming a field, whitespace before a colon, obs-fold, odd methods.
    declined_requests = [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie: PACSLB_SERVER=rs1\r\nCookie: PACSLB_SERVER=x",
            COOKIE,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked", None),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket", None),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: 1", None),
        (b"GET / HTTP/1.1\r\nHost : a", None),
        (b"GET / HTTP/1.1\r\nHost: a\r\n b", None),
        (b"PROPFIND / HTTP/1.1\r\nHost: a", None),
        (b"GET / HTTP/1.1", None),  # no Host: 400
    ]
    for head, cookie in declined_requests:
        assert _headfast.try_request(head, cookie) is None, head
        _same(heads.parse_request(head, cookie), parse_request(head, cookie))
    declined_responses = [
        (b"HTTP/1.1 200 OK\r\nSet-Cookie: PACSLB_SERVER=evil\r\nContent-Length: 0", COOKIE),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1", None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5", None),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip", None),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n\tb", None),
        (b"HTTP/2 200 OK", None),
    ]
    for head, cookie in declined_responses:
        assert _headfast.try_response(head, False, cookie) is None, head
        _same(heads.parse_response(head, False, cookie), parse_response(head, False, cookie))


def test_other_argument_types_are_the_python_parsers_to_judge() -> None:
    # Anything but bytes (and bytes or None for the cookie name) is declined and passed on as
    # it came: the Python parser answers, or raises what it raises.
    head = REQUESTS[0]
    assert _headfast.try_request(bytearray(head)) is None
    with pytest.raises(TypeError, match="unhashable"):  # from parse_request's method lookup
        heads.parse_request(bytearray(head), None)  # type: ignore[arg-type]
    assert _headfast.try_request(head, "PACSLB_SERVER") is None  # type: ignore[arg-type]
    _same(heads.parse_request(head, "PACSLB_SERVER"), parse_request(head, "PACSLB_SERVER"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        heads.parse_request(head, None, None)  # type: ignore[call-arg]


# --- generated heads ----------------------------------------------------------------------

NAMES = [
    "Host", "host", "HOST", "Content-Length", "content-length", "Transfer-Encoding",
    "Connection", "connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade",
    "X-Forwarded-For", "x-forwarded-proto", "Cookie", "Set-Cookie", "Expect", "Accept",
    "User-Agent", "X-Custom", "Host ", "Content-Length\t", " Host", "Ho st", "", "X\x80",
    "Content-Lengthx", "Connectio", "Hostt",
]  # fmt: skip
VALUES = [
    "a", "", " ", "0", "5", " 5", "5 ", "\t5", "+5", "-1", "05", "5,5", "99999999999999999999",
    "chunked", " chunked", "Chunked", "chunked, gzip", "gzip", "keep-alive", " close",
    "Close", "keep-alive, close", "upgrade", "x-custom", "host", "content-length", ",",
    "100-continue", " 100-Continue ", "PACSLB_SERVER=rs1", "a=1; PACSLB_SERVER=rs2",
    "PACSLB_SERVER", "websocket", "h2c", "caf\xe9", "a\tb", "a :b",
    ' PACSLB_SERVER = "rs1" ; ;b=2;;', "PACSLB_SERVER=; a", "xPACSLB_SERVER=1; PACSLB_SERVERx=2",
    "a=1;PACSLB_SERVER=rs1;PACSLB_SERVER=rs2", "PACSLB_SERVER=a=b", '""PACSLB_SERVER="""',
    "PACSLB_SERVER=\xe9t\xe9; \t c=3", "PACSLB_SERVER", "a; PACSLB_SERVER",
]  # fmt: skip
REQUEST_LINES = [
    "GET / HTTP/1.1", "GET /x?y HTTP/1.0", "POST /p HTTP/1.1", "HEAD / HTTP/1.1",
    "GET  / HTTP/1.1", "GET / HTTP/1.2", "GET / HTTP/2.0", "get / HTTP/1.1", "GET x HTTP/1.1",
    "GET http://a/ HTTP/1.1", "CONNECT a:443 HTTP/1.1", "PATCH /p HTTP/1.1", "GET / HTTP/1.1 ",
]  # fmt: skip
STATUS_LINES = [
    "HTTP/1.1 200 OK", "HTTP/1.0 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 304 x",
    "HTTP/1.1 101 Switching", "HTTP/1.1 100 Continue", "HTTP/1.1 404", "HTTP/1.1 099 x",
    "HTTP/1.1 2000 x", "HTTP/1.1 20", "HTTP/1.2 200 OK", "HTTP/1.1  200", "HTTP/1.1 500 a :b",
]  # fmt: skip

fields = st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES), st.sampled_from([":", ": ", ":  "])),
    max_size=8,
)


def _head(first: str, lines: list[tuple[str, str, str]]) -> bytes:
    return "\r\n".join([first, *(n + sep + v for n, v, sep in lines)]).encode("latin-1")


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(REQUEST_LINES), fields, st.sampled_from([None, COOKIE]))
def test_generated_requests(first: str, lines: list[tuple[str, str, str]], cookie: bytes | None):
    check_request(_head(first, lines), cookie)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(STATUS_LINES), fields, st.booleans(), st.sampled_from([None, COOKIE]))
def test_generated_responses(
    first: str, lines: list[tuple[str, str, str]], head_request: bool, cookie: bytes | None
) -> None:
    check_response(_head(first, lines), head_request, cookie)


def test_the_grammar_reaches_both_paths() -> None:
    # The generated heads above are worth something only if the fast path answers many of
    # them: count over a fixed sample of the same grammar.
    answered = declined = 0
    for first, (name, value) in itertools.product(
        REQUEST_LINES[:4], itertools.product(NAMES, VALUES)
    ):
        if check_request(_head(first, [(name, value, ": "), ("Host", "a", ": ")]), COOKIE):
            answered += 1
        else:
            declined += 1
    assert answered > 500 and declined > 500, (answered, declined)


def test_random_edits_of_real_heads() -> None:
    # Several edits at once, pieces of other heads spliced in, lines past the limits (a
    # 40,000-byte run passes MAX_HEADER_SECTION, 5,000 the Cookie line the C path rewrites).
    # The same loop ran 3.8 million heads against a build with AddressSanitizer and
    # UndefinedBehaviorSanitizer, without a report.
    rnd = random.Random(5)
    seeds = REQUESTS + RESPONSES
    alphabet = b'\r\n \t:;,="\x00\x7f\x80\xffaAzZ09-/HTTP1.Cookie PACSLB_SERVER'
    answered = 0
    for _ in range(20_000):
        head = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 8)):
            op, i = rnd.random(), rnd.randint(0, len(head))
            if op < 0.4:
                head[i:i] = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6)))
            elif op < 0.7:
                del head[i : i + rnd.randint(1, 10)]
            elif op < 0.85:
                other = rnd.choice(seeds)
                j = rnd.randint(0, len(other))
                head[i:i] = other[j : j + rnd.randint(1, 60)]
            else:
                head[i:i] = b"a" * rnd.choice([100, 4096, 5000, 9000, 40000])
        cookie = rnd.choice([None, COOKIE, b"", b"x"])
        answered += check_request(bytes(head), cookie)
        answered += check_response(bytes(head), rnd.random() < 0.3, cookie)
    assert answered > 1000, answered


def test_many_calls_do_not_leak() -> None:
    # Reference counting by hand is where C extensions leak: a million parses, flat memory.
    import resource

    def rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    for _ in range(100_000):
        _headfast.parse_request(REQUESTS[7], COOKIE)
        _headfast.parse_response(RESPONSES[2], False, COOKIE)
    before = rss()
    for _ in range(1_000_000):
        _headfast.parse_request(REQUESTS[7], COOKIE)
        _headfast.parse_response(RESPONSES[2], False, COOKIE)
    assert rss() - before < 4096  # KiB: a leak of one object a call would be ~100 MB
