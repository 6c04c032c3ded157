"""The HTTPS server of the control process: the WebUI, the REST API and /metrics.

uvicorn runs inside the control process's own asyncio loop as one more task, so the web handlers
call ControlProcess methods directly (no locks, no second copy of the state). Its signal
handling is switched off: SIGTERM, SIGINT and SIGHUP belong to `serve()` (control/app.py). We
bind the socket ourselves, so a port that cannot be bound is an event and the load balancer keeps
running (uvicorn would call sys.exit); the data plane must never stop because of its WebUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import socketserver
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacslb import __version__
from pacslb.control.auth import AuthStore, Security
from pacslb.control.reports import Sampler
from pacslb.control.store import ConfigConflict, RevisionNotFound, StorageError, write_atomic
from pacslb.core import certs
from pacslb.core.auth import Role
from pacslb.core.validate import format_path
from pacslb.core.wording import plain
from pacslb.errors import ConfigError

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

WEBUI_DIR = Path(__file__).resolve().parent.parent / "webui"


def problems_json(exc: ConfigError) -> dict[str, Any]:
    return {
        "detail": str(exc),
        "problems": [p.to_json() for p in exc.problems],
    }


def create_app(process: ControlProcess, store: AuthStore | None = None) -> FastAPI:
    """The ASGI app; tests drive it with httpx/TestClient, `pacslb run` serves it over HTTPS."""
    from pacslb.control import api, demo, ha_api, metrics, pair_api, pair_webui, webui, wizard
    from pacslb.control.app import UnknownTarget
    from pacslb.control.front import FrontDoor

    settings = process.config.node.webui
    # No /docs or /redoc: both load scripts from a CDN, and hospital networks are offline.
    app = FastAPI(
        title="pacslb",
        version=__version__,
        description="Virtual services, real servers, admin states, config revisions, events.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.process = process
    app.state.security = Security(
        store or AuthStore(process.state_dir),
        settings,
        record=lambda message: process._record("auth", message),
    )
    # One config validated at a time per role (CPU-bound; see api.validation_lane).
    app.state.validations = {role: asyncio.Semaphore(1) for role in Role}
    app.state.sampler = Sampler(process, settings.sample_interval)
    app.state.metrics = metrics.registry(process)
    app.include_router(api.router)
    app.include_router(api.metrics_router)
    app.include_router(ha_api.router)
    app.include_router(pair_api.router)
    app.include_router(pair_webui.router)
    app.include_router(webui.router)
    app.include_router(wizard.router)  # the first-run wizard
    app.include_router(demo.router)  # 404 unless this is `pacslb demo`
    app.mount("/static", StaticFiles(directory=WEBUI_DIR / "static"), name="static")

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, exc: ConfigError) -> Response:
        return JSONResponse(problems_json(exc), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _body_error(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            {
                "path": format_path([p for p in e["loc"][1:] if isinstance(p, str | int)]),
                "message": plain(dict(e)),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": "invalid request", "problems": problems}, status_code=422)

    @app.exception_handler(UnknownTarget)
    @app.exception_handler(RevisionNotFound)
    async def _not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> Response:
        # JSON nested a few hundred levels deep parses, but walking it (pydantic, deepcopy)
        # can exhaust the stack: the caller's mistake, not ours.
        return JSONResponse({"detail": "JSON nested too deep"}, status_code=400)

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, exc: StorageError) -> Response:
        # The change was refused and nothing of it kept; the reason names the disk and errno.
        # 507 Insufficient Storage (RFC 4918 §11.5) when it is space, else a 500 that says why.
        return JSONResponse({"detail": str(exc)}, status_code=507 if exc.disk_full else 500)

    @app.exception_handler(ConfigConflict)
    async def _conflict(request: Request, exc: ConfigConflict) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # A browser without a session is sent to the login page; API clients get the status.
        if exc.status_code == 401 and not request.url.path.startswith(("/api/", "/metrics")):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    # Outside every other middleware (the last added is the outermost): FrontDoor decides
    # before anything reads the body, and its own answers get the security headers too.
    app.add_middleware(
        FrontDoor,
        security=app.state.security,
        max_body=settings.max_body,
        trusted_proxies=settings.trusted_proxies,
    )
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Headers on every answer: pages never load anything from elsewhere; framing is refused
    (clickjacking). Pure ASGI (BaseHTTPMiddleware would run the app in a task group of its own,
    and an exception raised while the body is read, FrontDoor's 413, would reach the handlers
    wrapped in an ExceptionGroup: a 500)."""

    HEADERS = (
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("Strict-Transport-Security", "max-age=31536000"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def ensure_certificate(state_dir: Path, host: str) -> tuple[Path, Path]:
    """The generated self-signed WebUI certificate, made on first use (key mode 0600)."""
    cert_path, key_path = state_dir / "webui-cert.pem", state_dir / "webui-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        addresses = ["127.0.0.1", "::1"]
        with contextlib.suppress(ValueError):
            if host not in ("0.0.0.0", "::", *addresses):
                socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
                addresses.append(host)
        names = ["localhost", socket.gethostname()]
        now = datetime.datetime.now(datetime.UTC)
        cert, key = certs.self_signed(f"pacslb {socket.gethostname()}", now, names, addresses)
        write_atomic(key_path, key, 0o600)
        write_atomic(cert_path, cert, 0o644)
    return cert_path, key_path


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: those of `serve()` stay in force."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socketserver.TCPServer.request_queue_size * 20)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class WebServer:
    """Started and stopped by `serve()` around the control process's life."""

    def __init__(self, process: ControlProcess) -> None:
        self.process = process
        self.settings = process.config.node.webui
        self.store = AuthStore(process.state_dir)
        self.app: FastAPI | None = None
        self.url = ""
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        process, settings = self.process, self.settings
        host, port = settings.address()
        password = self.store.ensure_admin()
        if settings.certificate is not None:
            cert, key = settings.certificate, settings.key or settings.certificate
        else:
            cert, key = ensure_certificate(process.state_dir, host)
        self.app = create_app(process, self.store)
        try:
            sock = _bind(host, port)
        except OSError as exc:
            process._record("webui", f"WebUI not started: cannot listen on {host}:{port}: {exc}")
            return
        config = uvicorn.Config(
            self.app,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: any local process
            # could then pick its address. FrontDoor believes node.webui.trusted_proxies only.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=3,
        )
        self._server = _EmbeddedServer(config)
        self.app.state.sampler.start()
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="webui"
        )
        self._task.add_done_callback(self._ended)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"https://{shown}:{port}/"
        process._record("webui", f"WebUI and REST API on {self.url}")
        if password is not None:
            # Printed once, never recorded: the event says only that a password was made.
            print(
                f"WebUI {self.url} first login: user admin, password {password}\n"
                "  (shown only this once; change it with `pacslb passwd`)",
                flush=True,
            )
            process._record("auth", "first start: a password for user admin was generated")
        else:
            print(
                f"WebUI {self.url}: log in with your user; a forgotten password is reset with "
                f"`pacslb passwd --state-dir {process.state_dir}`",
                flush=True,
            )

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.process._record("webui", f"WebUI stopped: {task.exception()!r}")

    async def close(self) -> None:
        if self.app is not None:
            await self.app.state.sampler.close()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            async with asyncio.timeout(5):
                await asyncio.shield(self._task)
        except (TimeoutError, Exception):
            self._task.cancel()
