from collections.abc import Callable

from pacslb.core.http import Reject, Request, Response

MAX_REQUEST_LINE: int
MAX_HEADER_SECTION: int
MAX_FIELDS: int

def setup(
    request_type: type[Request],
    response_type: type[Response],
    parse_request: Callable[..., Request | Reject],
    parse_response: Callable[..., Response | Reject],
    /,
) -> None: ...
def try_request(head: bytes, cookie_name: bytes | None = None, /) -> Request | None: ...
def try_response(
    head: bytes, head_request: bool = False, cookie_name: bytes | None = None, /
) -> Response | None: ...
def parse_request(head: bytes, cookie_name: bytes | None = None, /) -> Request | Reject: ...
def parse_response(
    head: bytes, head_request: bool = False, cookie_name: bytes | None = None, /
) -> Response | Reject: ...
