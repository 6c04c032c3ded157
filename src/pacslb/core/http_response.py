"""HTTP/1.1 responses for the l7-http proxy, without I/O: what an upstream response head means
(framing, hop-by-hop fields, the persistence cookie a server must not set) and the head the
client gets (RFC 9110, RFC 9112 §6.3), plus the proxy's own short error responses."""

from __future__ import annotations

import re
from typing import Final

from pacslb.core.http import (
    CHUNKED,
    CONNECTION_OPTIONS,
    FRAMING_FIELDS,
    LENGTH,
    NO_BODY,
    OWS,
    UNTIL_CLOSE,
    USUAL_CONNECTION,
    VISIBLE,
    Reject,
    Response,
    tokens,
)

# The response fields the proxy acts on, and obs-fold (a line starting with SP or HTAB): one
# C-level pass over the head instead of a Python loop over its lines. Groups: the whole field
# line with the CRLF before it (what removing a hop-by-hop field cuts out); the fold; the
# field's name; its value. A value ends at CR: a CR anywhere but before LF was rejected before.
# (The CRLF outside the alternation keeps the scan fast: sre looks for it first. The lookahead
# on the first byte skips the other lines before the ten names are tried, and the names that
# share a first letter share their test: 0.8 instead of 1.1 us for a usual nginx head.)
_RESPONSE_SCAN = re.compile(
    rb"(\r\n(?=[CcTtKkPpUuSs \t])(?:([ \t])|(c(?:ontent-length|onnection)"
    rb"|t(?:ransfer-encoding|e|railer)|keep-alive|proxy-connection|upgrade|set-cookie)"
    rb"[ \t]*:([^\r]*)))",
    re.IGNORECASE,
)
_HOP_NAMES = frozenset(
    b"connection keep-alive proxy-connection te trailer upgrade transfer-encoding".split()
)
# What parse_response does with a field the scan found, by its name as sent (servers send the
# usual capitalisation, which spares a lower()) and in lower case.
_LENGTH, _SET_COOKIE, _TE, _CONN, _UPGRADE, _HOP = range(1, 7)
_KINDS: Final = {
    b"content-length": _LENGTH,
    b"set-cookie": _SET_COOKIE,
    b"transfer-encoding": _TE,
    b"connection": _CONN,
    b"upgrade": _UPGRADE,
    **{name: _HOP for name in (b"keep-alive", b"proxy-connection", b"te", b"trailer")},
}
_KINDS.update({name.title(): kind for name, kind in _KINDS.items()})
_VERSIONS: Final = {b"HTTP/1.1 ": 11, b"HTTP/1.0 ": 10}
_AFTER_CODE: Final = (b"", b" ", b"\r")
_BODILESS: Final = frozenset([*range(100, 200), 204, 304])  # RFC 9112 §6.3 rule 1
# The usual status line starts `HTTP/1.1 200 ` (a reason follows): version and status in one
# lookup; anything else takes the checks below.
_STATUS_LINES: Final = {
    b"HTTP/1.%d %d " % (minor, status): (10 + minor, status)
    for minor in (0, 1)
    for status in range(100, 1000)
}


def _rebuild(head: bytes, start: int, drop: frozenset[bytes], cookie: bytes | None) -> bytes:
    """The field lines after `start`, rebuilt (the general, slower path): whitespace before a
    colon removed (RFC 9112 §5.1: a proxy MUST remove it from a response), the fields named in
    `drop` and the Set-Cookie of `cookie` removed, a duplicate Content-Length forwarded once."""
    kept = []
    length = False
    for line in head[start:].split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.rstrip(OWS)
        lname = name.lower()
        if lname in drop or (length and lname == b"content-length"):
            continue
        if (
            cookie is not None
            and lname == b"set-cookie"
            and value.lstrip(OWS).startswith(cookie + b"=")
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
    if len(head.translate(None, VISIBLE)) != 2 * head.count(b"\r\n"):
        return Reject(502, "bare CR or LF, or a control character in the response")
    known = _STATUS_LINES.get(head[:13])
    if known is not None:
        version, status = known
    else:
        parsed = _VERSIONS.get(head[:9])
        if parsed is None:
            return Reject(502, "malformed status line")
        version = parsed
        code = head[9:12]
        # 3 digits, the first not 0 (no status below 100), then the end, SP or the line's end
        if not (code.isdigit() and len(code) == 3 and code[0] != 48 and head[12:13] in _AFTER_CODE):
            return Reject(502, "malformed status code")
        status = int(code)
    line_end = head.find(b"\r\n", 12)
    if line_end < 0:
        line_end = len(head)

    # The common response (a length, `Connection: keep-alive`, nothing else to change) takes
    # the fewest steps: no list or set is built unless a field needs one.
    length = -1
    te: list[bytes] | None = None
    conn: tuple[bytes, ...] | None = None
    upgrade: bytes | None = None
    hop: list[bytes] | None = None  # the hop-by-hop lines to remove
    named = False  # Connection names other fields (hop-by-hop too)
    # other lines to change: the general path (a one-byte search first: memchr is quicker)
    slow = head.find(b" :") >= 0 or (b"\t" in head and b"\t:" in head)
    kinds = _KINDS
    for line, fold, name, raw in _RESPONSE_SCAN.findall(head, line_end):
        if fold:
            return Reject(502, "obs-fold in the response")
        kind = kinds.get(name) or kinds[name.lower()]
        if kind == _LENGTH:
            # 1*DIGIT, as parse_length; a server may pad it with whitespace: harmless here
            value_text = raw.strip(OWS)
            if not value_text.isdigit() or len(value_text) > 18:
                return Reject(502, "invalid Content-Length in the response")
            value = int(value_text)
            if length >= 0:
                if value != length:
                    return Reject(502, "invalid Content-Length in the response")
                slow = True  # a duplicate is forwarded once
            length = value
        elif kind == _SET_COOKIE:
            if cookie_name is not None and raw.lstrip(OWS).startswith(cookie_name + b"="):
                slow = True  # `insert` mode: the proxy's cookie replaces the server's
        else:
            if hop is None:
                hop = [line]
            else:
                hop.append(line)
            if kind == _CONN:
                found = USUAL_CONNECTION.get(raw)  # ` keep-alive`: no split, no lower()
                if found is None:
                    found = tuple(tokens(raw))
                    named = named or not CONNECTION_OPTIONS.issuperset(found)
                conn = found if conn is None else conn + found
            elif kind == _TE:
                te = tokens(raw) if te is None else te + tokens(raw)
            elif kind == _UPGRADE:
                upgrade = raw.strip(OWS)

    if conn is None:
        keep_alive = version == 11
    else:
        keep_alive = (b"close" not in conn) if version == 11 else (b"keep-alive" in conn)
    drop = _HOP_NAMES
    if head_request or status in _BODILESS:
        framing = NO_BODY  # RFC 9112 §6.3 rule 1, whatever the fields say
    elif te is not None:
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
    if named:
        assert conn is not None
        # The fields Connection names are hop-by-hop too, except the ones that frame this
        # response: dropping those would leave a kept-alive response with no length.
        drop = drop | (frozenset(conn) - FRAMING_FIELDS)
        slow = True
    if status != 101:
        upgrade = None
    if slow:
        rest = _rebuild(head, line_end + 2, drop, cookie_name) if line_end < len(head) else b""
        headers = rest + b"\r\n" if rest else b""
    elif hop is not None:
        rest = head
        for line in hop:  # a value ends at CR: each line is removed whole, with its CRLF
            rest = rest.replace(line, b"", 1)
        headers = rest[line_end + 2 :] + b"\r\n" if len(rest) > line_end else b""
    else:
        headers = head[line_end + 2 :] + b"\r\n" if line_end < len(head) else b""
    # tuple.__new__ rather than Response(...), as in parse_request (the order is Response's)
    return tuple.__new__(
        Response,
        (
            status,
            head[9:line_end],
            version,
            headers,
            framing,
            length if length > 0 else 0,
            keep_alive,
            upgrade,
        ),
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
