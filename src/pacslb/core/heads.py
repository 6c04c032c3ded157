"""The head parsers the l7-http proxy calls: the C fast path (`_headfast.c`) for the usual
heads, in front of the Python rules of pacslb.core.http and pacslb.core.http_response.

The C code answers only for heads it fully understands and builds exactly the Request or
Response the Python parser would; everything else (every head to reject among them) goes to the
Python parser, which stays the one statement of the rules. In the live proxy the two parses were
about a third of the CPU of a keep-alive request (bench/README.md). A tree whose extension was
not built (a checkout on PYTHONPATH) runs the Python parsers alone: slower, same answers.
"""

from __future__ import annotations

from collections.abc import Callable

from pacslb.core import http, http_response
from pacslb.core.http import Reject, Request, Response

__all__ = ["COMPILED", "parse_request", "parse_response"]

parse_request: Callable[[bytes, bytes | None], Request | Reject]
parse_response: Callable[[bytes, bool, bytes | None], Response | Reject]

try:
    from pacslb.core import _headfast
except ImportError:
    COMPILED = False
    parse_request = http.parse_request
    parse_response = http_response.parse_response
else:
    COMPILED = True
    _limits = (_headfast.MAX_REQUEST_LINE, _headfast.MAX_HEADER_SECTION, _headfast.MAX_FIELDS)
    if _limits != (http.MAX_REQUEST_LINE, http.MAX_HEADER_SECTION, http.MAX_FIELDS):
        # The C code would answer heads the Python rules reject: never run that way.
        raise ImportError(f"pacslb.core._headfast was built with other limits: {_limits}")
    _headfast.setup(Request, Response, http.parse_request, http_response.parse_response)
    parse_request = _headfast.parse_request
    parse_response = _headfast.parse_response
