"""HTTP/1.1 message rules for the l7-http proxy, without I/O (RFC 9110, RFC 9112): requests,
and the names the other HTTP modules share (http_response.py for upstream responses,
http_body.py for body framing and chunked coding).

The proxy shell (pacslb.proxy.http_client) isolates a message head (the bytes before the blank
line) and hands it here; these functions decide what a request means and what is forwarded:
reject (400/414/431), the body framing, the hop-by-hop fields to drop, the persistence cookie,
the X-Forwarded-* fields. Smuggling starts where two parsers disagree on where a message ends,
so nothing is lenient: every rule of research/http-proxy.md is checked on the raw bytes here,
whatever another parser would have accepted.

Hot path: one `split` of the head, one loop over its lines, C-level bytes methods for the
character checks (`translate`, `count`), one `join` to rebuild. Results are NamedTuples
(immutable, and cheap to build per request).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

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
    "Reject",
    "Request",
    "Response",
    "check_request",
    "forwarded_fields",
    "parse_request",
    "set_cookie_fields",
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

TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HEX = b"0123456789abcdefABCDEF"
OWS = b" \t"
# Bytes that may appear in a head besides CR and LF (which must come in CRLF pairs): no other
# CTL, and no DEL (RFC 9110 §5.5: CR, LF and NUL MUST be rejected; the rest are not VCHAR).
VISIBLE = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])

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
_PLAIN, _HOST, _CL, _TE, _CONN, _HOP, _UPGRADE, _DROP, _COOKIE, _EXPECT = range(10)
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
# Every name above and the known ones, in lower case and in the usual capitalisation
# (`User-Agent`): a field sent that way is classified by one lookup, without lower().
_FIELD_KINDS: Final = {**dict.fromkeys(_KNOWN_NAMES, _PLAIN), **_REQUEST_FIELDS}
_FIELD_KINDS.update({name.title(): kind for name, kind in _FIELD_KINDS.items()})
# The Connection values clients and servers send, as sent, and their options: no split, no
# lower() for `Connection: keep-alive`
USUAL_CONNECTION: Final[dict[bytes, tuple[bytes, ...]]] = {
    sp + value: (value.lower(),)
    for value in (b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade")
    for sp in (b"", b" ")
}
FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"host"})
CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


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


def tokens(value: bytes) -> list[bytes]:
    if b"," not in value:
        return [value.strip(OWS).lower()]
    return [t.strip(OWS).lower() for t in value.split(b",")]


def _drop_named(lines: list[bytes], names: Iterable[bytes]) -> list[bytes]:
    """Remove the fields a Connection header names: they are hop-by-hop too (RFC 9110 §7.6.1)."""
    drop = frozenset(names)
    return [ln for ln in lines if ln[: ln.find(b":")].lower() not in drop]


def parse_length(raw: bytes) -> int:
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
    if len(head.translate(None, VISIBLE)) != 2 * n:
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
        if not method or method.translate(None, TCHAR):
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
    conn: tuple[bytes, ...] = ()
    upgrade: bytes | None = None
    expect = False
    cookie: str | None = None
    kept: list[bytes] = []
    changed = False
    kinds = _FIELD_KINDS
    for fl in lines[1:]:
        colon = fl.find(b":")
        if colon <= 0:
            return Reject(400, "field line without a name or a colon")
        name = fl[:colon]
        kind = kinds.get(name)
        if kind is None:
            kind = kinds.get(name.lower())
            if kind is None:
                # Space before the colon (RFC 9112 §5.1), obs-fold (§5.2: a line starting with
                # SP or HTAB): neither is a token -> 400.
                if name.translate(None, TCHAR):
                    return Reject(400, "malformed field line")
                kind = _PLAIN
        if kind == _PLAIN:
            kept.append(fl)
            continue
        if kind == _HOST:
            hosts += 1
            kept.append(fl)
            continue
        raw = fl[colon + 1 :]
        if kind == _CL:
            value = parse_length(raw)
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
            conn += USUAL_CONNECTION.get(raw) or tuple(tokens(raw))
            changed = True
        elif kind == _UPGRADE:
            upgrade = raw.strip(OWS)
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
            expect = raw.strip(OWS).lower() == b"100-continue"
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
    if conn and not CONNECTION_OPTIONS.issuperset(conn):
        if not FRAMING_FIELDS.isdisjoint(conn):
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
    # tuple.__new__ rather than Request(...): a NamedTuple's __new__ is a Python function, and
    # calling it cost 0.27 us more per request (the order of the fields is Request's)
    return tuple.__new__(
        Request,
        (
            method,
            line,
            version,
            headers,
            framing,
            length if length > 0 else 0,
            keep_alive,
            upgrade,
            expect,
            cookie,
        ),
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
        pair = part.strip(OWS)
        key, eq, val = pair.partition(b"=")
        if eq and key.rstrip(OWS) == name:
            if found is None:
                found = val.strip(OWS).strip(b'"').decode("latin-1")
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
