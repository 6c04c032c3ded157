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
    VISIBLE,
    Reject,
    Response,
    parse_length,
    tokens,
)

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
    n = head.count(b"\r\n")
    if len(head.translate(None, VISIBLE)) != 2 * n:
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
            value = parse_length(raw.strip(OWS))  # a server may pad it: harmless here
            if value < 0 or (length >= 0 and value != length):
                return Reject(502, "invalid Content-Length in the response")
            slow = slow or length >= 0  # a duplicate is forwarded once
            length = value
        elif lname == b"set-cookie":
            if cookie_name is not None and raw.lstrip(OWS).startswith(cookie_name + b"="):
                slow = True  # `insert` mode: the proxy's cookie replaces the server's
        else:
            hop.append(b"\r\n" + name + space + b":" + raw)
            if lname == b"transfer-encoding":
                te += tokens(raw)
            elif lname == b"connection":
                conn += tokens(raw)
            elif lname == b"upgrade":
                upgrade = raw.strip(OWS)

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
    if conn and not CONNECTION_OPTIONS.issuperset(conn):
        # The fields Connection names are hop-by-hop too, except the ones that frame this
        # response: dropping those would leave a kept-alive response with no length.
        drop = drop | (frozenset(conn) - FRAMING_FIELDS)
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
