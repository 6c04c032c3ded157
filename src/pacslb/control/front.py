"""The front door of the HTTPS server: what is decided about a request before its body is read.

A pure ASGI middleware, outside everything that could read a body: it sees the request head,
and nothing has read the body yet (FastAPI reads and parses a JSON body before it runs the
route's dependencies, so the 401 of `reader` used to come after the whole body). In order:

1. the client address: the peer, or (only when the peer is in node.webui.trusted_proxies) the
   address X-Forwarded-For names; the login limit and metrics_allow both decide on it;
2. a Content-Length over the limit (node.webui.max_body; a login, which anybody may send, far
   less): 413 at once. A body of unknown length (chunked) is stopped at the same limit while it
   streams: the read that passes it raises a 413 instead of handing the bytes on;
3. a changing request to /api/ from nobody (no valid session, no valid token): 401 at once,
   the login itself excepted.

A body refused here is never read: uvicorn discards what the client still sends and keeps the
connection, so the client gets to read the answer rather than a reset.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacslb.control.auth import NO_CREDENTIALS, SAFE_METHODS, Security
from pacslb.core.auth import Network, forwarded_client

LOGIN_PATHS = frozenset({"/api/v1/session", "/login"})  # the only changing requests of nobody
LOGIN_MAX_BODY = 16 * 1024  # a login is a few hundred bytes


class FrontDoor:
    def __init__(
        self, app: ASGIApp, security: Security, max_body: int, trusted_proxies: Sequence[Network]
    ) -> None:
        self.app = app
        self.security = security
        self.max_body = max_body
        self.trusted_proxies = list(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        peer = scope.get("client")
        if self.trusted_proxies and peer:
            client = forwarded_client(
                peer[0], headers.getlist("x-forwarded-for"), self.trusted_proxies
            )
            if client != peer[0]:
                scope["client"] = (client, 0)

        limit = LOGIN_MAX_BODY if scope["path"] in LOGIN_PATHS else self.max_body
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await self._refuse(413, self._too_large(limit), scope, receive, send)
            return
        if (
            scope["method"] not in SAFE_METHODS
            and scope["path"].startswith("/api/")
            and scope["path"] not in LOGIN_PATHS
        ):
            who = self.security.principal(Request(scope))
            if who is None:
                await self._refuse(401, NO_CREDENTIALS, scope, receive, send)
                return
            # auth.reader() takes it from here instead of checking the credentials again
            scope.setdefault("state", {})["principal"] = who

        received = 0
        started = False

        async def receive_at_most() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI hands an HTTPException raised while it reads the body on to the
                    # exception handlers: the caller gets this 413, and nothing is parsed.
                    raise HTTPException(413, self._too_large(limit))
            return message

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_at_most, send_noting_start)
        except HTTPException as exc:  # raised where no exception handler runs
            if exc.status_code != 413 or started:
                raise
            await self._refuse(413, exc.detail, scope, receive, send)

    def _too_large(self, limit: int) -> str:
        setting = "node.webui.max_body" if limit == self.max_body else "the limit for a login"
        return f"request body larger than {setting} ({limit} bytes)"

    @staticmethod
    async def _refuse(status: int, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": detail}, status)(scope, receive, send)
