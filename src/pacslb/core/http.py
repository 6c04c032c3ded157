"""HTTP/1.1 message rules for the l7-http proxy, without I/O (RFC 9110, RFC 9112).

The proxy shell (pacslb.proxy.http) isolates a message head (the bytes before the blank line)
and hands it here; these functions decide what a request or response means and what is
forwarded: reject (400/414/431/502), the body framing, the hop-by-hop fields to drop, the
persistence cookie, the X-Forwarded-* fields. Smuggling starts where two parsers disagree on
where a message ends, so nothing is lenient: every rule of research/http-proxy.md is checked on
the raw bytes here, whatever another parser would have accepted.

Hot path: one `split` of the head, one loop over its lines, C-level bytes methods for the
character checks (`translate`, `count`), one `join` to rebuild. Results are NamedTuples
(immutable, and cheap to build per request).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Final, Generic, NamedTuple, TypeVar

__all__ = [
    "CHUNKED",
    "IDEMPOTENT",
    "LENGTH",
    "MAX_FIELDS",
    "MAX_HEADER_SECTION",
    "MAX_REQUEST_LINE",
    "MAX_RESPONSE_HEAD",
    "NO_BODY",
    "UNTIL_CLOSE",
    "BodyReader",
    "ChunkedDecoder",
    "IdlePool",
    "Reject",
    "Request",
    "Response",
    "SniTable",
    "check_request",
    "client_response_head",
    "forwarded_fields",
    "head_overflow",
    "parse_request",
    "parse_response",
    "set_cookie_fields",
    "short_response",
    "split_cookie",
    "upstream_request_head",
]

MAX_REQUEST_LINE: Final = 8192  # longer: 414 (RFC 9112 §3)
MAX_HEADER_SECTION: Final = 32768  # field lines after the request line; larger: 431 (RFC 6585)
MAX_FIELDS: Final = 100  # more field lines: 431
MAX_RESPONSE_HEAD: Final = 65536  # a longer upstream head: 502
MAX_CHUNK_LINE: Final = 4096  # chunk-size line with extensions, and one trailer line
MAX_TRAILERS: Final = 32768

# Body framing (RFC 9112 §6.3)
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3  # responses only: the body runs to the connection's close

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX = b"0123456789abcdefABCDEF"
_OWS = b" \t"
# Bytes that may appear in a head besides CR and LF (which must come in CRLF pairs): no other
# CTL, and no DEL (RFC 9110 §5.5: CR, LF and NUL MUST be rejected; the rest are not VCHAR).
_VISIBLE = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])

# Field names that are valid tokens by construction: the token check is skipped for them.
_KNOWN_TEXT = (  # what browsers and HTTP libraries send
    "accept accept-encoding accept-language authorization cache-control content-type dnt "
    "if-match if-modified-since if-none-match if-range origin pragma priority range referer "
    "sec-ch-ua sec-ch-ua-mobile sec-ch-ua-platform sec-fetch-dest sec-fetch-mode "
    "sec-fetch-site sec-fetch-user sec-websocket-extensions sec-websocket-key "
    "sec-websocket-protocol sec-websocket-version upgrade-insecure-requests user-agent "
    "x-requested-with"
)
_KNOWN_NAMES = frozenset(_KNOWN_TEXT.encode().split())
_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"})

# What the head loops do with a field (anything else is forwarded untouched).
_HOST, _CL, _TE, _CONN, _HOP, _UPGRADE, _DROP, _COOKIE, _EXPECT = range(1, 10)
# Hop-by-hop fields (RFC 9110 §7.6.1) are never forwarded: the proxy writes its own framing and
# connection fields. X-Forwarded-For/-Proto are replaced, never trusted from a client.
_REQUEST_FIELDS: Final = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONN,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _DROP,
    b"x-forwarded-proto": _DROP,
    b"cookie": _COOKIE,
    b"expect": _EXPECT,
}
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host"})
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


class Reject(NamedTuple):
    """A message that must not be forwarded: the status to answer and why."""

    status: int
    reason: str


class Request(NamedTuple):
    method: bytes
    line: bytes  # the request line, forwarded as received
    version: int  # 10 | 11
    headers: bytes  # the field lines to forward, each ending in CRLF
    framing: int  # NO_BODY | LENGTH | CHUNKED
    length: int  # LENGTH: the body's size
    keep_alive: bool  # the client wants the connection kept after the response
    upgrade: bytes | None  # the protocol the client asks to switch to (Upgrade + Connection)
    expect_continue: bool
    cookie: str | None  # the persistence cookie's value


class Response(NamedTuple):
    status: int
    reason: bytes  # the status line after "HTTP/1.x ": b"200 OK"
    version: int  # 10 | 11
    headers: bytes  # the field lines to forward, each ending in CRLF
    framing: int  # NO_BODY | LENGTH | CHUNKED | UNTIL_CLOSE
    length: int
    keep_alive: bool  # the upstream connection may carry another request afterwards
    upgrade: bytes | None  # 101: the protocol switched to


def _tokens(value: bytes) -> list[bytes]:
    if b"," not in value:
        return [value.strip(_OWS).lower()]
    return [t.strip(_OWS).lower() for t in value.split(b",")]


def _drop_named(lines: list[bytes], names: Iterable[bytes]) -> list[bytes]:
    """Remove the fields a Connection header names: they are hop-by-hop too (RFC 9110 §7.6.1)."""
    drop = frozenset(names)
    return [ln for ln in lines if ln[: ln.find(b":")].lower() not in drop]


def _length(raw: bytes) -> int:
    """Content-Length: 1*DIGIT (RFC 9110 §8.6); -1 if anything else, including a sign, a list,
    trailing whitespace or a tab: such a value is never guessed at."""
    v = raw.lstrip(b" ")
    if not v.isdigit() or len(v) > 18:
        return -1
    return int(v)


def parse_request(head: bytes, cookie_name: bytes | None = None) -> Request | Reject:
    """A request head -> what to forward, or why not.

    `head` is the request line and the field lines, without the blank line that ends them.
    `cookie_name` is the persistence cookie (http-cookie services): its value is returned and
    the cookie itself stripped from what the real server sees (HAProxy `indirect`).
    """
    lines = head.split(b"\r\n")
    n = len(lines) - 1
    if len(head.translate(None, _VISIBLE)) != 2 * n:
        return Reject(400, "bare CR or LF, or a control character")
    line = lines[0]
    if len(line) > MAX_REQUEST_LINE:
        return Reject(414, "request line too long")
    if n > MAX_FIELDS or len(head) - len(line) > MAX_HEADER_SECTION:
        return Reject(431, "header section too large")
    parts = line.split(b" ")
    if len(parts) != 3:
        return Reject(400, "malformed request line")
    method, target, proto = parts
    if proto == b"HTTP/1.1":
        version = 11
    elif proto == b"HTTP/1.0":
        version = 10
    elif (
        len(proto) == 8
        and proto.startswith(b"HTTP/")
        and proto[5:6].isdigit()
        and proto[6:7] == b"."
        and proto[7:8].isdigit()
    ):
        return Reject(505, "HTTP version not supported")
    else:
        return Reject(400, "malformed HTTP version")
    if method not in _METHODS:
        if not method or method.translate(None, _TCHAR):
            return Reject(400, "method is not a token")
        if method == b"CONNECT":
            return Reject(405, "CONNECT is not served by a reverse proxy")
    if target[:1] != b"/":
        t = target[:8].lower()
        if not (t.startswith(b"http://") or t == b"https://" or (target == b"*")):
            return Reject(400, "malformed request target")

    hosts = 0
    length = -1
    te: bytes | None = None
    conn: list[bytes] = []
    upgrade: bytes | None = None
    expect = False
    cookie: str | None = None
    kept: list[bytes] = []
    changed = False
    fields = _REQUEST_FIELDS
    for i in range(1, n + 1):
        fl = lines[i]
        colon = fl.find(b":")
        if colon <= 0:
            return Reject(400, "field line without a name or a colon")
        name = fl[:colon]
        lname = name.lower()
        kind = fields.get(lname)
        if kind is None:
            # Space before the colon (RFC 9112 §5.1), obs-fold (§5.2: a line starting with SP or
            # HTAB): neither is a token -> 400.
            if lname not in _KNOWN_NAMES and name.translate(None, _TCHAR):
                return Reject(400, "malformed field line")
            kept.append(fl)
            continue
        raw = fl[colon + 1 :]
        if kind == _HOST:
            hosts += 1
            kept.append(fl)
        elif kind == _CL:
            value = _length(raw)
            if value < 0:
                return Reject(400, "invalid Content-Length")
            if length < 0:
                length = value
                kept.append(fl)
            elif value != length:
                return Reject(400, "conflicting Content-Length")
            else:
                changed = True  # an identical duplicate is forwarded once (RFC 9110 §8.6)
        elif kind == _TE:
            # Only exactly `chunked` is accepted: a final coding other than chunked is a MUST
            # 400 (RFC 9112 §6.3 rule 4), and odd whitespace or stacked codings are how
            # parsers are made to disagree.
            if te is not None or raw.lstrip(b" ").lower() != b"chunked":
                return Reject(400, "unsupported Transfer-Encoding")
            te = raw
            changed = True
        elif kind == _CONN:
            conn += _tokens(raw)
            changed = True
        elif kind == _UPGRADE:
            upgrade = raw.strip(_OWS)
            changed = True
        elif kind == _COOKIE and cookie_name is not None:
            found, rest = split_cookie(raw, cookie_name)
            if found is not None:
                if cookie is None:
                    cookie = found
                changed = True
                if rest:
                    kept.append(b"Cookie: " + rest)
            else:
                kept.append(fl)
        elif kind == _EXPECT:
            expect = raw.strip(_OWS).lower() == b"100-continue"
            kept.append(fl)
        elif kind == _COOKIE:
            kept.append(fl)
        else:  # _HOP, _DROP
            changed = True

    if hosts > 1 or (hosts == 0 and version == 11):
        return Reject(400, "missing or duplicate Host")  # RFC 9112 §3.2
    if te is not None:
        if version == 10:
            return Reject(400, "Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 §6.1
        if length >= 0:
            return Reject(400, "both Transfer-Encoding and Content-Length")  # RFC 9112 §6.1
        framing = CHUNKED
    elif length > 0:
        framing = LENGTH
    else:
        framing = NO_BODY  # RFC 9112 §6.3 rule 6
    keep_alive = (b"close" not in conn) if version == 11 else (b"keep-alive" in conn)
    if conn and not _CONNECTION_OPTIONS.issuperset(conn):
        if not _FRAMING_FIELDS.isdisjoint(conn):
            # `Connection: content-length` would make us drop the field that frames the body
            # we forward: the body would reach the server as a second, smuggled request.
            return Reject(400, "Connection names a framing field")
        kept = _drop_named(kept, conn)
        changed = True
    if upgrade is None or version == 10 or b"upgrade" not in conn:
        upgrade = None
    if changed:
        headers = b"\r\n".join(kept) + b"\r\n" if kept else b""
    else:
        headers = head[len(line) + 2 :] + b"\r\n" if n else b""
    return Request(
        method,
        line,
        version,
        headers,
        framing,
        max(length, 0),
        keep_alive,
        upgrade,
        expect,
        cookie,
    )


def check_request(
    method: bytes, target: bytes, version: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> Request | Reject:
    """The same decision from an already parsed request (e.g. by another parser): the fields
    are put back into a head and checked by `parse_request`, so that both agree by construction."""
    lines = [b" ".join((method, target, b"HTTP/" + version))]
    lines += [name + b": " + value for name, value in headers]
    return parse_request(b"\r\n".join(lines))


def split_cookie(value: bytes, name: bytes) -> tuple[str | None, bytes]:
    """A Cookie field value -> (the value of cookie `name` or None, the value without it).

    RFC 6265 §5.4: `a=1; NAME=v; b=2`. Every occurrence of `name` is stripped; the first one
    found is returned."""
    if name not in value:
        return None, value
    found: str | None = None
    rest: list[bytes] = []
    for part in value.split(b";"):
        pair = part.strip(_OWS)
        key, eq, val = pair.partition(b"=")
        if eq and key.rstrip(_OWS) == name:
            if found is None:
                found = val.strip(_OWS).strip(b'"').decode("latin-1")
        elif pair:
            rest.append(pair)
    if found is None:
        return None, value
    return found, b"; ".join(rest)


def set_cookie_fields(name: str, value: str, secure: bool, max_age: int | None) -> bytes:
    """The fields added to the response that chose the server (HAProxy `insert nocache`): the
    cookie, and `Cache-Control: private` so that a shared cache never hands one client's server
    cookie to others."""
    cookie = f"Set-Cookie: {name}={value}; Path=/; HttpOnly"
    if secure:
        cookie += "; Secure"
    if max_age is not None:
        cookie += f"; Max-Age={max_age}"
    return (cookie + "\r\nCache-Control: private\r\n").encode("latin-1")


def forwarded_fields(client_ip: str, https: bool) -> bytes:
    """X-Forwarded-For (replaced: the address the proxy saw) and X-Forwarded-Proto."""
    proto = b"https" if https else b"http"
    return b"X-Forwarded-For: " + client_ip.encode() + b"\r\nX-Forwarded-Proto: " + proto + b"\r\n"


def upstream_request_head(req: Request, forwarded: bytes) -> bytes:
    """The request head the real server receives: the client's fields minus hop-by-hop ones,
    the proxy's own framing and connection fields, then X-Forwarded-*."""
    framing = b"Transfer-Encoding: chunked\r\n" if req.framing == CHUNKED else b""
    if req.upgrade is not None:
        conn = b"Connection: upgrade\r\nUpgrade: " + req.upgrade + b"\r\n"
    elif req.version == 10:
        conn = b"Connection: keep-alive\r\n"  # lets the upstream connection be pooled
    else:
        conn = b""
    return b"".join((req.line, b"\r\n", req.headers, framing, conn, forwarded, b"\r\n"))


# Response fields the proxy acts on, and obs-fold (a line starting with SP or HTAB): one C-level
# pass over the head instead of a Python loop over its lines (measured: 3x faster). Values end
# at CR: a CR anywhere but before LF was rejected before.
_RESPONSE_SCAN = re.compile(
    rb"\r\n(?:([ \t])|(content-length|transfer-encoding|connection|keep-alive|proxy-connection"
    rb"|te|trailer|upgrade|set-cookie)([ \t]*):([^\r]*))",
    re.IGNORECASE,
)
_HOP_NAMES = frozenset(
    b"connection keep-alive proxy-connection te trailer upgrade transfer-encoding".split()
)


def _rebuild(head: bytes, start: int, drop: frozenset[bytes], cookie: bytes | None) -> bytes:
    """The field lines after `start`, rebuilt (the general, slower path): whitespace before a
    colon removed (RFC 9112 §5.1: a proxy MUST remove it from a response), the fields named in
    `drop` and the Set-Cookie of `cookie` removed, a duplicate Content-Length forwarded once."""
    kept = []
    length = False
    for line in head[start:].split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.rstrip(_OWS)
        lname = name.lower()
        if lname in drop or (length and lname == b"content-length"):
            continue
        if (
            cookie is not None
            and lname == b"set-cookie"
            and value.lstrip(_OWS).startswith(cookie + b"=")
        ):
            continue
        length = length or lname == b"content-length"
        kept.append(name + b":" + value)
    return b"\r\n".join(kept)


def parse_response(
    head: bytes, head_request: bool = False, cookie_name: bytes | None = None
) -> Response | Reject:
    """An upstream response head -> what to forward, or a Reject(502).

    `head_request`: the request was HEAD (no body, whatever the fields say). `cookie_name`: the
    persistence cookie; a Set-Cookie of that name from the server is removed (HAProxy `insert`).

    Responses come from the configured real servers, and this runs once per request, so it
    scans instead of looping over lines. Whatever could make the proxy and the client disagree
    on framing is rejected: CR or LF outside CRLF, control characters, obs-fold (502 is one of
    the two choices of RFC 9112 §5.2), a bad or conflicting Content-Length, a coding other than
    chunked. Whitespace before a colon is removed (§5.1). Other malformed field names are
    passed through: no client reads them as framing.
    """
    n = head.count(b"\r\n")
    if len(head.translate(None, _VISIBLE)) != 2 * n:
        return Reject(502, "bare CR or LF, or a control character in the response")
    proto = head[:9]
    if proto == b"HTTP/1.1 ":
        version = 11
    elif proto == b"HTTP/1.0 ":
        version = 10
    else:
        return Reject(502, "malformed status line")
    code = head[9:12]
    if not (code.isdigit() and len(code) == 3 and head[12:13] in (b"", b" ", b"\r")):
        return Reject(502, "malformed status code")
    status = int(code)
    if status < 100:
        return Reject(502, "malformed status code")
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = len(head)

    length = -1
    te: list[bytes] = []
    conn: list[bytes] = []
    upgrade: bytes | None = None
    hop: list[bytes] = []  # the hop-by-hop lines to remove, each with the CRLF before it
    slow = b" :" in head or b"\t:" in head  # other lines to change: the general path
    for fold, name, space, raw in _RESPONSE_SCAN.findall(head):
        if fold:
            return Reject(502, "obs-fold in the response")
        lname = name.lower()
        if lname == b"content-length":
            value = _length(raw.strip(_OWS))  # a server may pad it: harmless here
            if value < 0 or (length >= 0 and value != length):
                return Reject(502, "invalid Content-Length in the response")
            slow = slow or length >= 0  # a duplicate is forwarded once
            length = value
        elif lname == b"set-cookie":
            if cookie_name is not None and raw.lstrip(_OWS).startswith(cookie_name + b"="):
                slow = True  # `insert` mode: the proxy's cookie replaces the server's
        else:
            hop.append(b"\r\n" + name + space + b":" + raw)
            if lname == b"transfer-encoding":
                te += _tokens(raw)
            elif lname == b"connection":
                conn += _tokens(raw)
            elif lname == b"upgrade":
                upgrade = raw.strip(_OWS)

    keep_alive = (b"close" not in conn) if version == 11 else (b"keep-alive" in conn)
    drop = _HOP_NAMES
    if head_request or status < 200 or status == 204 or status == 304:
        framing = NO_BODY  # RFC 9112 §6.3 rule 1, whatever the fields say
    elif te:
        # Only plain `chunked` can be re-framed for the client; anything else would reach it
        # without its Transfer-Encoding (a hop-by-hop field), i.e. undecodable.
        if te != [b"chunked"]:
            return Reject(502, "unsupported Transfer-Encoding in the response")
        framing = CHUNKED
        if length >= 0:
            # TE overrides CL: the CL is removed, the connection not reused (§6.3 rule 3).
            drop = drop | {b"content-length"}
            slow = True
            keep_alive = False
    elif length >= 0:
        framing = LENGTH
    else:
        framing = UNTIL_CLOSE  # RFC 9112 §6.3 rule 8: never reuse that connection
        keep_alive = False
    if conn and not _CONNECTION_OPTIONS.issuperset(conn):
        # The fields Connection names are hop-by-hop too, except the ones that frame this
        # response: dropping those would leave a kept-alive response with no length.
        drop = drop | (frozenset(conn) - _FRAMING_FIELDS)
        slow = True
    if status != 101:
        upgrade = None
    if slow:
        rest = _rebuild(head, line_end + 2, drop, cookie_name) if line_end < len(head) else b""
        headers = rest + b"\r\n" if rest else b""
    elif hop:
        rest = head[line_end:]
        for line in hop:  # a value ends at CR: each line is removed whole
            rest = rest.replace(line, b"", 1)
        headers = rest[2:] + b"\r\n" if rest else b""
    else:
        headers = head[line_end + 2 :] + b"\r\n" if line_end < len(head) else b""
    return Response(
        status, head[9:line_end], version, headers, framing, max(length, 0), keep_alive, upgrade
    )


def client_response_head(
    resp: Response, client_version: int, keep_alive: bool, extra: bytes = b""
) -> tuple[bytes, bool, bool]:
    """The head the client receives -> (head, re-chunk the body, keep the client connection).

    A chunked upstream body is re-chunked for an HTTP/1.1 client and sent close-delimited to an
    HTTP/1.0 one (which cannot read chunked); a close-delimited body closes the client
    connection too. `extra`: fields added to a final response (the persistence cookie)."""
    status = resp.status
    if status < 200:
        if status == 101 and resp.upgrade is not None:
            return (
                b"".join(
                    (
                        b"HTTP/1.1 ",
                        resp.reason,
                        b"\r\n",
                        resp.headers,
                        b"Connection: upgrade\r\nUpgrade: ",
                        resp.upgrade,
                        b"\r\n\r\n",
                    )
                ),
                False,
                True,
            )
        return b"".join((b"HTTP/1.1 ", resp.reason, b"\r\n", resp.headers, b"\r\n")), False, True
    rechunk = False
    framing_field = b""
    framing = resp.framing
    if framing == CHUNKED:
        if client_version == 11:
            rechunk = True
            framing_field = b"Transfer-Encoding: chunked\r\n"
        else:
            keep_alive = False
    elif framing == UNTIL_CLOSE:
        keep_alive = False
    if not keep_alive:
        conn = b"Connection: close\r\n"
    elif client_version == 10:
        conn = b"Connection: keep-alive\r\n"
    else:
        conn = b""
    head = b"".join(
        (b"HTTP/1.1 ", resp.reason, b"\r\n", resp.headers, framing_field, conn, extra, b"\r\n")
    )
    return head, rechunk, keep_alive


_REASONS: Final = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def _short(status: int) -> bytes:
    text = f"{status} {_REASONS.get(status, 'Error')}"
    body = text + "\n"
    return (
        f"HTTP/1.1 {text}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Cache-Control: no-cache\r\nConnection: close\r\n\r\n{body}"
    ).encode()


_SHORT: Final = {status: _short(status) for status in _REASONS}


def short_response(status: int) -> bytes:
    """A complete error response that closes the connection (400, 408, 414, 431, 502...)."""
    return _SHORT.get(status) or _short(status)


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
            if len(line) > MAX_CHUNK_LINE or line.translate(None, _VISIBLE):
                return self._fail("bad character or line length in chunked coding")
            if state == _DATA_END:
                if line:
                    return self._fail("chunk data longer than its size")
                self._state = _SIZE
            elif state == _SIZE:
                size, semi, _ext = line.partition(b";")
                if semi:
                    size = size.rstrip(_OWS)  # BWS before a chunk extension
                digits = size.lstrip(b"0")
                if not size or len(digits) > 15 or size.translate(None, _HEX):
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
                    or line[:colon].translate(None, _TCHAR)
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


class SniTable:
    """Which certificate answers a TLS ClientHello's server name (SNI): exact names first, then
    one-label wildcards (`*.example.org`); None: the default (first) certificate."""

    __slots__ = ("_exact", "_wildcard")

    def __init__(self, names: Sequence[Sequence[str]]) -> None:
        self._exact: dict[str, int] = {}
        self._wildcard: dict[str, int] = {}
        for index, cert_names in enumerate(names):
            for name in cert_names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], index)
                else:
                    self._exact.setdefault(name, index)

    def choose(self, server_name: str | None) -> int | None:
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        return found if found is not None else self._wildcard.get(name.partition(".")[2])


def head_overflow(data: bytes) -> int:
    """A head still without its blank line: the status to answer now (414, 431, 400 for a bare
    LF, which would never end it), or 0 to wait for more."""
    if len(data) > MAX_REQUEST_LINE and data.find(b"\r\n", 0, MAX_REQUEST_LINE + 2) < 0:
        return 414
    if len(data) > MAX_REQUEST_LINE + MAX_HEADER_SECTION + 4:
        return 431
    return 400 if data.count(b"\n") != data.count(b"\r\n") else 0


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class IdlePool(Generic[K, T]):
    """Idle connections per key (a real server), without I/O: last in, first out, so that the
    most recently used (most surely alive) is reused and the others age out. What `put`
    refuses and what `expire` and `clear` return is for the caller to close."""

    def __init__(self, max_idle: int, timeout: float) -> None:
        self.max_idle = max_idle
        self.timeout = timeout
        self._idle: dict[K, list[tuple[float, T]]] = {}

    def get(self, key: K) -> T | None:
        idle = self._idle.get(key)
        return idle.pop()[1] if idle else None

    def put(self, key: K, item: T, now: float) -> bool:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle:
            return False
        idle.append((now, item))
        return True

    def discard(self, key: K, item: T) -> None:
        idle = self._idle.get(key)
        if idle:
            idle[:] = [entry for entry in idle if entry[1] is not item]

    def expire(self, now: float, gone: Callable[[K], bool] = lambda key: False) -> list[T]:
        """Remove what idled longer than `timeout`, and everything of keys that are `gone`."""
        out: list[T] = []
        limit = now - self.timeout
        for key, idle in list(self._idle.items()):
            drop = gone(key)
            out += [item for since, item in idle if drop or since < limit]
            idle[:] = [] if drop else [(since, item) for since, item in idle if since >= limit]
            if not idle:
                del self._idle[key]
        return out

    def clear(self) -> list[T]:
        out = [item for idle in self._idle.values() for _, item in idle]
        self._idle.clear()
        return out
