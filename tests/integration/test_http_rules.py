"""Every rule of research/http-proxy.md as raw bytes on a socket, to pacslb and to HAProxy.

The same bytes go to pacslb's l7-http listener and to HAProxy 2.6 `mode http`, each in front of
its own EchoBackend (which answers with the request head it received, so that what reached the
server can be checked). pacslb's outcome is asserted; HAProxy's actual outcome is asserted too,
and where it differs the rule says why (usually: HAProxy is lenient for compatibility).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.integration._http_proxy_runner import (
    Client,
    EchoBackend,
    Proxy,
    ProxyThread,
    Received,
    Response,
    haproxy,
    service,
)

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy"),
]

SAME = -1  # HAProxy's outcome is pacslb's
CLOSED = 0  # no response: the connection was closed


@dataclass
class Outcome:
    responses: list[Response]
    closed: bool
    received: list[Received]  # what the backend got
    dropped: int = 0  # requests the backend dropped by closing (the close race)

    @property
    def status(self) -> int:
        return self.responses[0].status if self.responses else CLOSED

    def __repr__(self) -> str:
        shown = [(r.status, r.head[:300], r.body[:120]) for r in self.responses]
        got = [(r.head[:300], r.body[:60]) for r in self.received]
        return f"Outcome(responses={shown}, closed={self.closed}, received={got})"


@dataclass(frozen=True)
class Rule:
    id: str
    raw: bytes
    pacslb: int  # status of the first response, or CLOSED
    haproxy: int = SAME
    why: str = ""  # why HAProxy's outcome differs
    closes: bool | None = None  # whether pacslb closes the connection after (None: not checked)
    check: Callable[[Outcome], None] | None = None  # more about pacslb's outcome
    haproxy_check: Callable[[Outcome], None] | None = None
    count: int = 1  # responses to read
    head_request: bool = False
    play: Callable[[Client], list[Response]] | None = field(default=None)  # a custom exchange
    fresh: bool = False  # needs backends with no idle connection from earlier rules
    watch_close: bool = False  # the checks look at whether the connection closed


def _req(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


POST = "POST /p HTTP/1.1"
HOST = "Host: a"


def _nothing_forwarded(o: Outcome) -> None:
    assert o.received == [], "a rejected request must never reach the server"


def _one_cl(o: Outcome) -> None:
    assert o.received[0].header("content-length") == ["3"] and o.received[0].body == b"abc"


def _two_requests(o: Outcome) -> None:
    assert [r.status for r in o.responses] == [200, 200]
    assert [r.head.split(b" ")[1] for r in o.received] == [b"/a", b"/b"]
    assert o.received[0].body == b""


def _no_hop_by_hop(o: Outcome) -> None:
    (r,) = o.received
    for name in ("connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
        assert r.header(name) in ([], ["keep-alive"] if name == "connection" else []), name
    assert r.header("x-private") == []  # named by Connection: hop-by-hop too
    assert r.header("x-end-to-end") == ["kept"]


def _haproxy_hop_by_hop(o: Outcome) -> None:
    (r,) = o.received
    assert r.header("connection") == ["X-Private"] and r.header("x-private") == ["secret"]
    assert r.header("keep-alive") == ["timeout=5"] and r.header("te") == ["trailers"]
    assert r.header("x-end-to-end") == ["kept"]


def _unfolded(o: Outcome) -> None:
    (r,) = o.received
    assert r.header("x-a") == ["b   c"]


def _xff_replaced(o: Outcome) -> None:
    (r,) = o.received
    assert r.header("x-forwarded-for") == ["127.0.0.1"]
    assert r.header("x-forwarded-proto") == ["http"]


def _xff_appended(o: Outcome) -> None:
    (r,) = o.received
    # `option forwardfor` adds a field and keeps the client's: a spoofed address survives
    # (HAProxy's `if-none` or an explicit del-header is needed to replace it).
    assert r.header("x-forwarded-for") == ["6.6.6.6", "127.0.0.1"]
    assert r.header("x-forwarded-proto") == ["https"]


def _no_body_then_next(o: Outcome) -> None:
    assert [r.status for r in o.responses][1:] == [200]
    assert o.responses[0].body == b""


def _hop_response(o: Outcome) -> None:
    (r,) = o.responses
    for name in ("x-private", "keep-alive", "proxy-connection", "trailer", "upgrade"):
        assert r.header(name) == [], name
    assert r.header("x-kept") == ["yes"] and r.body == b"ok"


def _haproxy_hop_response(o: Outcome) -> None:
    (r,) = o.responses
    assert r.header("x-private") == ["secret"] and r.header("keep-alive") == ["timeout=5"]
    assert r.header("upgrade") == ["h2c"] and r.header("x-kept") == ["yes"]


def _until_close(o: Outcome) -> None:
    (r,) = o.responses
    assert r.body.startswith(b"backend conn=") and o.closed


def _no_chunked_for_10(o: Outcome) -> None:
    (r,) = o.responses
    assert r.header("transfer-encoding") == [] and r.body == b"hello world" and o.closed


def _chunked_to_10(o: Outcome) -> None:
    (r,) = o.responses
    assert r.header("transfer-encoding") == ["chunked"] and r.body == b"hello world"


def _rechunked(o: Outcome) -> None:
    (r,) = o.responses
    assert r.header("transfer-encoding") == ["chunked"] and r.body == b"hello world"


def _pipelined(o: Outcome) -> None:
    assert [r.status for r in o.responses] == [200, 200, 200]
    assert [r.body.split(b"\n")[1].split(b" ")[1] for r in o.responses] == [b"/1", b"/2", b"/3"]


def _expect_100(client: Client) -> list[Response]:
    client.send(_req(POST, HOST, "Content-Length: 5", "Expect: 100-continue"))
    first = client.response()
    assert first is not None
    client.send(b"hello")
    final = client.response()
    return [first] + ([final] if final else [])


def _continued(o: Outcome) -> None:
    assert [r.status for r in o.responses] == [100, 200]
    assert o.responses[1].body.endswith(b"hello")


def _websocket(client: Client) -> list[Response]:
    client.send(
        _req(
            "GET /ws HTTP/1.1",
            HOST,
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        )
    )
    resp = client.response()
    assert resp is not None and resp.status == 101
    client.send(b"\x81\x04ping")
    deadline = time.monotonic() + 5
    while len(client.buf) < 6 and time.monotonic() < deadline:
        client._more()
    return [resp, Response(0, b"", client.buf)]


def _tunnel(o: Outcome) -> None:
    assert o.responses[1].body == b"\x81\x04ping"
    assert o.responses[0].header("upgrade") == ["websocket"]


def _close_race(method: str, body: bytes) -> Callable[[Client], list[Response]]:
    def play(client: Client) -> list[Response]:
        length = f"Content-Length: {len(body)}"
        client.send(_req(f"{method} /once HTTP/1.1", HOST, length, body=body))
        first = client.response()
        time.sleep(0.05)
        client.send(_req(f"{method} /again HTTP/1.1", HOST, length, body=body))
        second = client.response()
        return [r for r in (first, second) if r is not None]

    return play


def _conn(r: Response) -> bytes:
    return r.body.split(b"\n")[0]


def _retried(o: Outcome) -> None:
    # the server closed the reused connection on the second request: it went again elsewhere
    assert [r.status for r in o.responses] == [200, 200] and o.dropped == 1
    assert _conn(o.responses[0]) != _conn(o.responses[1])


def _close_passed_on(o: Outcome) -> None:
    # HAProxy keeps the server connection with the client's session and passes its close on:
    # no answer to the second request; the client (a browser) must retry it itself.
    assert [r.status for r in o.responses] == [200] and o.closed and o.dropped == 1


def _not_retried(o: Outcome) -> None:
    assert [r.status for r in o.responses] == [200, 502] and o.dropped == 1


def _partial_chunked(client: Client) -> list[Response]:
    client.send(_req(POST, HOST, "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n"))
    client.sock.shutdown(1)  # SHUT_WR: the last chunk never comes
    resp = client.response()
    return [resp] if resp else []


def _never_complete(o: Outcome) -> None:
    assert o.status in (CLOSED, 400) and o.received == []


def _cookie_inserted(o: Outcome) -> None:
    (r,) = o.responses
    (cookie,) = r.header("set-cookie")
    name, _, rest = cookie.partition("=")
    value, _, attrs = rest.partition(";")
    assert name == "PACSLB_SERVER" and value and value != "A"  # opaque, not the label
    assert attrs.strip() == "Path=/; HttpOnly"
    assert r.header("cache-control") == ["private"]


def _haproxy_cookie(o: Outcome) -> None:
    (r,) = o.responses
    # HAProxy names the server by its configured cookie value (`s1`) and writes `path=/`
    # lowercase; `nocache` adds `Cache-control: private` the same way.
    assert r.header("set-cookie") == ["PACSLB_SERVER=s1; path=/; HttpOnly"]
    assert r.header("cache-control") == []


def _server_cookie_replaced(o: Outcome) -> None:
    (r,) = o.responses
    cookies = r.header("set-cookie")
    assert "app=1; Path=/" in cookies and not any("forged" in c for c in cookies)


def _haproxy_server_cookie(o: Outcome) -> None:
    (r,) = o.responses
    cookies = r.header("set-cookie")
    assert "app=1; Path=/" in cookies and not any("forged" in c for c in cookies)


LONG = "x" * 9000
RULES = [
    # --- framing (RFC 9112 §6) -----------------------------------------------------------
    Rule(
        "cl-and-te",
        _req(POST, HOST, "Content-Length: 5", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        haproxy=200,
        why="HAProxy frames by TE and drops the CL, as RFC 9112 §6.1 allows",
        closes=True,
        check=_nothing_forwarded,
    ),
    *(
        Rule(
            f"te-{name}",
            _req(POST, HOST, f"Transfer-Encoding:{value}", body=b"0\r\n\r\n"),
            400,
            closes=True,
            check=_nothing_forwarded,
            **kw,
        )
        for name, value, kw in [
            ("gzip", " gzip", {}),
            ("chunked-identity", " chunked, identity", {}),
            ("xchunked", " xchunked", {}),
            (
                "tab-chunked",
                " \tchunked",
                {"haproxy": 200, "why": "HAProxy trims OWS (RFC 9110 §5.5 allows it)"},
            ),
            ("chunked-trailing-space", " chunked ", {"haproxy": 200, "why": "HAProxy trims OWS"}),
            (
                "gzip-chunked",
                " gzip, chunked",
                {"haproxy": 422, "why": "HAProxy refuses any coding but chunked with 422"},
            ),
        ]
    ),
    Rule(
        "te-twice",
        _req(
            POST,
            HOST,
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
        haproxy=400,
        closes=True,
        check=_nothing_forwarded,
    ),
    *(
        Rule(
            f"cl-{name}",
            _req(POST, HOST, f"Content-Length:{value}", body=b"abcdef"),
            400,
            closes=True,
            check=_nothing_forwarded,
            **kw,
        )
        for name, value, kw in [
            ("plus", " +5", {}),
            ("list-differs", " 5,6", {}),
            ("spaces", "  5 ", {"haproxy": 200, "why": "HAProxy trims OWS around the value"}),
            ("hex", " 0x5", {}),
            ("empty", " ", {}),
        ]
    ),
    Rule(
        "cl-conflict",
        _req(POST, HOST, "Content-Length: 3", "Content-Length: 4", body=b"abcd"),
        400,
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "cl-identical-twice",
        _req(POST, HOST, "Content-Length: 3", "Content-Length: 3", body=b"abc"),
        200,
        check=_one_cl,
        haproxy_check=_one_cl,
    ),
    *(
        Rule(
            f"chunk-{name}",
            _req(POST, HOST, "Transfer-Encoding: chunked", body=body),
            400,
            closes=True,
            **kw,
        )
        for name, body, kw in [
            ("size-not-hex", b"zz\r\nabc\r\n0\r\n\r\n", {}),
            ("size-overflow", b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n", {}),
            (
                "size-bare-lf",
                b"3\nabc\r\n0\r\n\r\n",
                {"haproxy": 200, "why": "HAProxy accepts a bare LF after the chunk size"},
            ),
            ("data-longer-than-size", b"3\r\nabcd\r\n0\r\n\r\n", {}),
        ]
    ),
    Rule(
        "chunk-last-missing",
        b"",
        CLOSED,
        play=_partial_chunked,
        check=_never_complete,
    ),
    Rule(
        "no-length-means-no-body",
        _req("POST /a HTTP/1.1", HOST) + _req("GET /b HTTP/1.1", HOST),
        200,
        count=2,
        check=_two_requests,
        haproxy_check=_two_requests,
    ),
    Rule(
        "http10-with-te",
        _req("POST /p HTTP/1.0", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        haproxy=200,
        why="HAProxy accepts chunked from an HTTP/1.0 client",
        closes=True,
        check=_nothing_forwarded,
    ),
    # --- header fields (RFC 9110 §5, RFC 9112 §3.2, §5) ----------------------------------------
    Rule(
        "space-before-colon",
        _req("GET / HTTP/1.1", HOST, "X-A : b"),
        400,
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "obs-fold",
        _req("GET / HTTP/1.1", HOST, "X-A: b", " c"),
        400,
        closes=True,
        check=_nothing_forwarded,
        haproxy=200,
        haproxy_check=_unfolded,
        why="HAProxy replaces obs-fold with spaces: the other choice RFC 9112 §5.2 allows",
    ),
    Rule(
        "name-not-token",
        _req("GET / HTTP/1.1", HOST, "X(A): b"),
        400,
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "nul-in-value",
        _req("GET / HTTP/1.1", HOST, "X-A: b\x00c"),
        400,
        closes=True,
        check=_nothing_forwarded,
        haproxy=200,
        why="HAProxy 2.6 forwards the NUL (RFC 9110 §5.5: reject or replace it)",
    ),
    Rule(
        "bare-cr-in-value",
        _req("GET / HTTP/1.1", HOST, "X-A: b\rc"),
        400,
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "bare-lf-line-ends",
        b"GET / HTTP/1.1\nHost: a\nX-A: b\n\n",
        400,
        haproxy=200,
        why="HAProxy accepts bare LF line ends (RFC 9112 §2.2 allows a recipient to)",
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "host-missing",
        _req("GET / HTTP/1.1", "X-A: b"),
        400,
        closes=True,
        check=_nothing_forwarded,
        haproxy=200,
        why="HAProxy forwards an HTTP/1.1 request without Host (RFC 9112 §3.2: MUST 400)",
    ),
    Rule(
        "host-twice",
        _req("GET / HTTP/1.1", "Host: a", "Host: b"),
        400,
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule("http10-without-host", _req("GET / HTTP/1.0"), 200),
    Rule(
        "request-line-too-long",
        _req(f"GET /{LONG} HTTP/1.1", HOST),
        414,
        haproxy=200,
        why="9 KiB fits HAProxy's 16 KiB buffer (tune.bufsize); past it HAProxy says 400",
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "header-section-too-large",
        _req("GET / HTTP/1.1", HOST, *(f"X-F{i}: {'v' * 1000}" for i in range(40))),
        431,
        haproxy=400,
        why="HAProxy's 16 KiB buffer overflows: 400",
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "too-many-fields",
        _req("GET / HTTP/1.1", HOST, *(f"X-F{i}: v" for i in range(101))),
        431,
        haproxy=400,
        why="HAProxy's limit is tune.http.maxhdr = 101 fields; it answers 400, not 431",
        closes=True,
        check=_nothing_forwarded,
    ),
    Rule(
        "hop-by-hop-removed",
        _req(
            "GET / HTTP/1.1",
            HOST,
            "Connection: keep-alive, X-Private",
            "X-Private: secret",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Trailer: X-T",
            "Upgrade: h2c",
            "X-End-To-End: kept",
        ),
        200,
        check=_no_hop_by_hop,
        haproxy_check=_haproxy_hop_by_hop,
        why="HAProxy drops only Connection's keep-alive/close tokens, forwards every other field",
    ),
    Rule(
        "x-forwarded-for-replaced",
        _req("GET / HTTP/1.1", HOST, "X-Forwarded-For: 6.6.6.6", "X-Forwarded-Proto: https"),
        200,
        check=_xff_replaced,
        haproxy_check=_xff_appended,
        why="`option forwardfor` appends (a spoofed address survives); XFP passes through",
    ),
    Rule(
        "connect-method",
        _req("CONNECT a:443 HTTP/1.1", "Host: a:443"),
        405,
        haproxy=200,
        why="HAProxy forwards CONNECT to the server",
        closes=True,
        check=_nothing_forwarded,
    ),
    # --- responses -------------------------------------------------------------------------
    *(
        Rule(
            f"no-body-{name}",
            _req(f"{method} {path} HTTP/1.1", HOST) + _req("GET / HTTP/1.1", HOST),
            status,
            count=2,
            head_request=method == "HEAD",
            check=_no_body_then_next,
            haproxy_check=_no_body_then_next,
        )
        for name, method, path, status in [
            ("head", "HEAD", "/", 200),
            ("204", "GET", "/204", 204),
            ("304", "GET", "/304", 304),
        ]
    ),
    Rule(
        "response-hop-by-hop",
        _req("GET /hop HTTP/1.1", HOST),
        200,
        check=_hop_response,
        haproxy_check=_haproxy_hop_response,
        why="HAProxy forwards the response's hop-by-hop fields (drops only keep-alive tokens)",
    ),
    Rule(
        "response-until-close",
        _req("GET /until-close HTTP/1.1", HOST),
        200,
        closes=True,
        watch_close=True,
        check=_until_close,
        haproxy_check=_until_close,
    ),
    Rule(
        "chunked-to-http10-client",
        _req("GET /chunked HTTP/1.0"),
        200,
        watch_close=True,
        check=_no_chunked_for_10,
        haproxy_check=_chunked_to_10,
        why="HAProxy 2.6 sends chunked to an HTTP/1.0 client (RFC 9112 §7.1: MUST NOT)",
    ),
    Rule(
        "chunked-rechunked",
        _req("GET /chunked HTTP/1.1", HOST),
        200,
        check=_rechunked,
        haproxy_check=_rechunked,
    ),
    # --- connections -----------------------------------------------------------------------
    Rule(
        "pipelined",
        b"".join(_req(f"GET /{i} HTTP/1.1", HOST) for i in (1, 2, 3)),
        200,
        count=3,
        check=_pipelined,
        haproxy_check=_pipelined,
    ),
    Rule(
        "expect-100-continue",
        b"",
        100,
        play=_expect_100,
        check=_continued,
        haproxy_check=_continued,
    ),
    Rule("websocket-upgrade", b"", 101, play=_websocket, check=_tunnel, haproxy_check=_tunnel),
    Rule(
        "close-race-get-retried",
        b"",
        200,
        play=_close_race("GET", b""),
        fresh=True,
        watch_close=True,
        check=_retried,
        haproxy_check=_close_passed_on,
        why="HAProxy closes the client connection without an answer (the browser retries)",
    ),
    Rule(
        "close-race-post-not-retried",
        b"",
        200,
        play=_close_race("POST", b"data"),
        fresh=True,
        watch_close=True,
        check=_not_retried,
        haproxy_check=_close_passed_on,
        why="HAProxy closes the client connection without an answer",
    ),
    # --- cookie persistence (HAProxy: cookie PACSLB_SERVER insert indirect nocache httponly) ----
    Rule(
        "cookie-inserted",
        _req("GET / HTTP/1.1", HOST),
        200,
        check=_cookie_inserted,
        haproxy_check=_haproxy_cookie,
        why="HAProxy writes `path=/`, adds Cache-control only to responses it deems cacheable",
    ),
    Rule(
        "server-cookie-of-that-name-removed",
        _req("GET /setcookie HTTP/1.1", HOST),
        200,
        check=_server_cookie_replaced,
        haproxy_check=_haproxy_server_cookie,
    ),
]


COOKIE = "  cookie PACSLB_SERVER insert indirect nocache httponly\n"


@contextlib.contextmanager
def setup(tmp: Path) -> Iterator[tuple[Proxy, EchoBackend, int, EchoBackend]]:
    """pacslb (127.0.0.61) and HAProxy (127.0.0.62), each in front of its own EchoBackend,
    both inserting the persistence cookie PACSLB_SERVER."""
    ours, theirs = EchoBackend(), EchoBackend()
    thread = ProxyThread()
    try:
        svc = service(
            [("A", "127.0.0.1", ours.port)],
            timeouts={"http_request": 2, "connect": 2, "idle": 5},
            persistence={"type": "http-cookie"},
        )
        proxy = thread.listen(svc, host="127.0.0.61")
        with haproxy(tmp, theirs.port, extra=COOKIE, host="127.0.0.62") as port:
            yield proxy, ours, port, theirs
    finally:
        thread.close()
        ours.close()
        theirs.close()


@pytest.fixture(scope="module")
def peers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Proxy, EchoBackend, int, EchoBackend]]:
    with setup(tmp_path_factory.mktemp("rules")) as started:
        yield started


def run(rule: Rule, host: str, port: int, backend: EchoBackend) -> Outcome:
    backend.received.clear()
    dropped = backend.dropped
    with Client(host, port) as client:
        if rule.play is not None:
            responses = rule.play(client)
        else:
            client.send(rule.raw)
            responses = []
            for i in range(rule.count):
                resp = client.response(head_request=rule.head_request and i == 0)
                if resp is None:
                    break
                responses.append(resp)
        watch = rule.closes is not None or rule.watch_close
        closed = client.closed(0.5) if watch else False
    return Outcome(responses, closed, list(backend.received), backend.dropped - dropped)


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_rule(
    rule: Rule, peers: tuple[Proxy, EchoBackend, int, EchoBackend], tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        if rule.fresh:
            peers = stack.enter_context(setup(tmp_path))
        proxy, ours, haproxy_port, theirs = peers
        mine = run(rule, proxy.host, proxy.port, ours)
        other = run(rule, "127.0.0.62", haproxy_port, theirs)

    assert mine.status == rule.pacslb, mine
    if rule.closes is not None:
        assert mine.closed == rule.closes, "pacslb must close after a framing error"
    if rule.check is not None:
        rule.check(mine)

    expected = rule.pacslb if rule.haproxy == SAME else rule.haproxy
    assert other.status == expected, f"HAProxy: {other}"
    if rule.haproxy_check is not None:
        rule.haproxy_check(other)
