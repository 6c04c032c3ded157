"""The l7-http proxy for tests: a subprocess runner, an in-thread loop, an echo backend, HAProxy.

As a script it runs one listener in its own process (memory measurements, benchmarks):

    python tests/integration/_http_proxy_runner.py --listen 127.0.0.31:8080 \\
        --service '{"label": "Web", "vip": "127.0.0.31", "ports": [8080], "mode": "l7-http",
                    "health_check": {"type": "none"},
                    "real_servers": [{"label": "A", "address": "127.0.0.1", "port": 9000}]}'

It prints `ready` once it listens; SIGTERM or SIGINT stops it. As a module it gives the tests
(test_http_proxy.py, test_http_rules.py) what they share: `ProxyThread` (listeners on a uvloop
loop in a background thread, as in the proxy process), `EchoBackend` (a raw HTTP/1.1 server
that answers with the request head it received), a raw-socket client, and `haproxy()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from pacslb.core.plan import build_plan
from pacslb.core.validate import load_data
from pacslb.proxy.http import HttpListener
from pacslb.proxy.runtime import ServiceRuntime
from pacslb.proxy.tls import tls_context


def service(
    servers: list[tuple[str, str, int]], vip: str = "127.0.0.1", port: int = 80, **extra: Any
) -> dict[str, Any]:
    """One l7-http virtual service (health check none: every server is up)."""
    return {
        "label": "Web",
        "vip": vip,
        "ports": [port],
        "mode": "l7-http",
        "health_check": {"type": "none"},
        "real_servers": [
            {"label": label, "address": addr, "port": p} for label, addr, p in servers
        ],
        **extra,
    }


def runtime_for(svc: dict[str, Any], **plan_args: Any) -> ServiceRuntime:
    return ServiceRuntime(
        build_plan(load_data({"virtual_services": [svc]}), **plan_args).services[0]
    )


def listening(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


# --- the subprocess runner ---------------------------------------------------------------


async def serve(host: str, port: int, svc: dict[str, Any], cert: str | None) -> None:
    listener = HttpListener(
        listening(host, port), runtime_for(svc), port, tls_context([(cert, None)]) if cert else None
    )
    await listener.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    listener.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--service", required=True, help="one virtual service, as JSON")
    parser.add_argument("--cert", help="PEM with certificate and key: terminate TLS")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(host, int(port), json.loads(args.service), args.cert))


# --- in-process listeners ------------------------------------------------------------------


@dataclass
class Proxy:
    host: str
    port: int
    listener: HttpListener
    thread: ProxyThread

    @property
    def runtime(self) -> ServiceRuntime:
        return self.listener.runtime

    def call(self, fn: Callable[[], Any]) -> Any:
        return self.thread.call(fn)


class ProxyThread:
    """A uvloop event loop on a background thread: listeners run there, tests talk to them
    over sockets and change their runtime through `call()`."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listeners: list[HttpListener] = []

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout)

    def listen(
        self, svc: dict[str, Any], host: str = "127.0.0.1", tls: Any = None, **plan_args: Any
    ) -> Proxy:
        sock = listening(host)
        port = sock.getsockname()[1]
        listener = HttpListener(sock, runtime_for(svc, **plan_args), port, tls)
        asyncio.run_coroutine_threadsafe(listener.start(), self.loop).result(10)
        self.listeners.append(listener)
        return Proxy(host, port, listener, self)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(lambda: [listener.close() for listener in self.listeners])
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- the echo backend ----------------------------------------------------------------------


@dataclass
class Received:
    conn: int  # which backend connection carried it (1, 2, ...)
    head: bytes
    body: bytes

    def header(self, name: str) -> list[str]:
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                out.append(value.strip().decode("latin-1"))
        return out


@dataclass
class EchoBackend:
    """A raw HTTP/1.1 keep-alive server on a thread. By default it answers 200 with a body
    `<backend name> conn=<n>\\n<the request head it received>`. Paths choose other answers:
    /204, /304, /chunked, /until-close, /hop (hop-by-hop response fields), /ws (101, then
    echo), /slow/<secs>, /garbage, /setcookie, /once (on its connection the next request is
    read and the connection closed without an answer: the pooled-connection close race),
    /bytes/<n>. `Expect: 100-continue` gets a 100 before the body is read."""

    name: str = "backend"
    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)
    port: int = 0
    connections: int = 0
    dropped: int = 0  # requests read and dropped by closing (after /once)
    tls: Any = None  # an ssl.SSLContext: speak HTTPS

    def __post_init__(self) -> None:
        self.sock = socket.create_server((self.host, 0), backlog=512)
        self.port = self.sock.getsockname()[1]
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        # Wake the accept thread before the fd is closed: a thread still blocked in accept()
        # when its fd number is reused (a signal handler with SA_RESTART, such as uvloop's
        # SIGCHLD, restarts the call on the same number) took a later test's connections.
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # accept() returns EINVAL
        self._acceptor.join(timeout=5)
        self.sock.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        close_next = False
        conn.settimeout(30)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                if close_next:
                    self.dropped += 1
                    return  # the close race: read the request, close without an answer
                req = Received(number, head, b"")
                if any(v.lower() == "100-continue" for v in req.header("expect")):
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body, buf = _read_body(conn, req, buf)
                req.body = body
                self.received.append(req)
                path = head.split(b" ")[1].decode() if head.count(b" ") >= 2 else "/"
                method = head.split(b" ")[0]
                answer, close = self._answer(req, path, method == b"HEAD")
                conn.sendall(answer)
                if path == "/ws" and answer.startswith(b"HTTP/1.1 101"):
                    if buf:
                        conn.sendall(buf)
                    while data := conn.recv(65536):
                        conn.sendall(data)
                    return
                if close:
                    return
                close_next = path == "/once"
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, req: Received, path: str, head_only: bool) -> tuple[bytes, bool]:
        text = f"{self.name} conn={req.conn}\n".encode() + req.head + b"\r\n\r\n" + req.body
        if path == "/204":
            return b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", False
        if path == "/304":
            return b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "x"\r\n\r\n', False
        if path == "/chunked":
            chunks = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n"
            return head + (b"" if head_only else chunks), False
        if path == "/until-close":
            return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + text, True
        if path == "/hop":
            return (
                b"HTTP/1.1 200 OK\r\nConnection: X-Private, keep-alive\r\nX-Private: secret\r\n"
                b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\n"
                b"Upgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
            ), False
        if path == "/ws" and any("websocket" in v.lower() for v in req.header("upgrade")):
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"
            ), False
        if path.startswith("/slow/"):
            time.sleep(float(path.split("/")[2]))
        if path == "/garbage":
            return b"NOT HTTP AT ALL\r\n\r\n", True
        if path == "/setcookie":
            return (
                b"HTTP/1.1 200 OK\r\nSet-Cookie: PACSLB_SERVER=forged; Path=/\r\n"
                b"Set-Cookie: app=1; Path=/\r\nContent-Length: 2\r\n\r\nok"
            ), False
        if path.startswith("/bytes/"):
            text = b"x" * int(path.split("/")[2])
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(
            text
        )
        return head + (b"" if head_only else text), False


def _read_body(conn: socket.socket, req: Received, buf: bytes) -> tuple[bytes, bytes]:
    """Read a request body (Content-Length or chunked) -> (body, the bytes after it)."""
    lengths = req.header("content-length")
    if any("chunked" in v.lower() for v in req.header("transfer-encoding")):
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += conn.recv(65536) or _eof()
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n\r\n" not in b"\r\n" + buf:
                    buf += conn.recv(65536) or _eof()
                buf = (b"\r\n" + buf).partition(b"\r\n\r\n")[2]
                return body, buf
            while len(buf) < size + 2:
                buf += conn.recv(65536) or _eof()
            body += buf[:size]
            buf = buf[size + 2 :]
    n = int(lengths[0]) if lengths else 0
    while len(buf) < n:
        buf += conn.recv(65536) or _eof()
    return buf[:n], buf[n:]


def _eof() -> bytes:
    raise OSError("peer closed mid-body")


# --- a raw client --------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    head: bytes
    body: bytes

    def header(self, name: str) -> list[str]:
        return Received(0, self.head, b"").header(name)


class Client:
    """A raw HTTP/1.1 client socket: send exact bytes, read responses one by one."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, tls: Any = None) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return False
        self.buf += data
        return bool(data)

    def response(self, head_request: bool = False) -> Response | None:
        """The next response (a 1xx is a response too), or None if the connection closed."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        resp = Response(status, head, b"")
        if head_request or status < 200 or status in (204, 304):
            return resp
        if any("chunked" in v.lower() for v in resp.header("transfer-encoding")):
            while not _chunked_complete(self.buf):
                if not self._more():
                    return resp
            resp.body, self.buf = _dechunk(self.buf)
            return resp
        lengths = resp.header("content-length")
        if lengths:
            n = int(lengths[0])
            while len(self.buf) < n:
                if not self._more():
                    break
            resp.body, self.buf = self.buf[:n], self.buf[n:]
            return resp
        while self._more():
            pass
        resp.body, self.buf = self.buf, b""
        return resp

    def closed(self, timeout: float = 2.0) -> bool:
        """Whether the server closed the connection (within `timeout`)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        self.buf += data
        return not data


def _chunked_complete(buf: bytes) -> bool:
    try:
        _dechunk(buf)
    except ValueError:
        return False
    return True


def _dechunk(buf: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        line, sep, rest = buf.partition(b"\r\n")
        if not sep:
            raise ValueError("incomplete")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            end = rest.find(b"\r\n") if rest.startswith(b"\r\n") else rest.find(b"\r\n\r\n")
            if end < 0:
                raise ValueError("incomplete")
            return body, rest[end + (2 if rest.startswith(b"\r\n") else 4) :]
        if len(rest) < size + 2:
            raise ValueError("incomplete")
        body += rest[:size]
        buf = rest[size + 2 :]


def exchange(host: str, port: int, data: bytes, count: int = 1) -> list[Response]:
    """Send raw bytes on a new connection; read up to `count` responses."""
    out = []
    with Client(host, port) as client:
        client.send(data)
        for _ in range(count):
            resp = client.response()
            if resp is None:
                break
            out.append(resp)
    return out


# --- HAProxy, the peer to compare with ------------------------------------------------------


@contextlib.contextmanager
def haproxy(
    tmp: Path, backend_port: int, extra: str = "", host: str = "127.0.0.1"
) -> Iterator[int]:
    """HAProxy 2.6 `mode http` in front of 127.0.0.1:backend_port; yields its port."""
    from tests.peers.procs import free_port, stop, wait_port

    port = free_port(host)
    cfg = tmp / f"haproxy-{port}.cfg"
    cfg.write_text(
        f"""global
  maxconn 1000
defaults
  mode http
  timeout connect 2s
  timeout client 5s
  timeout server 5s
  timeout http-request 2s
  option forwardfor
frontend fe
  bind {host}:{port}
  default_backend be
backend be
{extra}
  server s1 127.0.0.1:{backend_port} cookie s1
"""
    )
    proc = subprocess.Popen(
        ["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_port(host, port, proc=proc)  # type: ignore[arg-type]
        yield port
    finally:
        stop(proc)  # type: ignore[arg-type]
        if proc.stderr is not None:
            proc.stderr.close()


if __name__ == "__main__":
    main()
    sys.exit(0)
