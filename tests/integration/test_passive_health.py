"""Passive health in the l7-http proxy (listeners in this process, real sockets): the
server's own 5xx count only when asked, and an ejected server loses its cookie clients.
The end-to-end faults (`pacslb run`, resets, timeouts, notices) are in
tests/faults/test_proxy_errors.py."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration._http_proxy_runner import EchoBackend, Proxy, ProxyThread, service

from pacslb.proxy.runtime import cookie_id

pytestmark = pytest.mark.timeout(60)


class Answers500:
    """A keep-alive HTTP/1.1 server whose every answer is `500` (or a reset, with `reset`)."""

    def __init__(self, reset: bool = False) -> None:
        self.reset = reset
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        with conn, contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                _, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                if self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    return
                conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops")


@pytest.fixture(scope="module")
def loop() -> Iterator[ProxyThread]:
    thread = ProxyThread()
    yield thread
    thread.close()


def status_of(proxy: Proxy, cookie: str = "") -> tuple[int, bytes]:
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def proxy_for(loop: ProxyThread, a: EchoBackend, b: Answers500, **extra: Any) -> Proxy:
    servers = [("A", "127.0.0.1", a.port), ("B", "127.0.0.1", b.port)]
    return loop.listen(service(servers, scheduler="rr", **extra), host="127.10.5.50")


@pytest.mark.parametrize("server_errors", [False, True])
def test_the_servers_own_5xx_count_only_when_asked(loop: ProxyThread, server_errors: bool) -> None:
    a, b = EchoBackend("A"), Answers500()
    try:
        passive = {"consecutive_failures": 2, "server_errors": server_errors}
        proxy = proxy_for(loop, a, b, passive=passive)
        statuses = [status_of(proxy)[0] for _ in range(10)]
        # The server's own 500s are relayed (never retried); they eject it only when asked.
        assert statuses.count(500) == (2 if server_errors else 5), statuses
        stats = proxy.call(lambda: proxy.runtime.stats["B"].as_dict())
        assert stats["responses"] == {"5xx": statuses.count(500)}
        assert stats["ejections"] == int(server_errors) == stats["ejected"]
    finally:
        a.close()
        b.close()


def test_an_ejected_server_loses_its_cookie_clients(loop: ProxyThread) -> None:
    a, b = EchoBackend("A"), Answers500(reset=True)
    try:
        proxy = proxy_for(
            loop, a, b, persistence={"type": "http-cookie"}, passive={"consecutive_failures": 2}
        )
        pinned = f"PACSLB_SERVER={cookie_id('Web', 'B')}"
        # Pinned to B: each GET fails there and is retried on A (which sets A's cookie)...
        for _ in range(2):
            status, data = status_of(proxy, pinned)
            assert status == 200 and cookie_id("Web", "A").encode() in data
        assert b.requests == 2
        # ... and after two failures in a row B is out: the cookie no longer sends clients there.
        for _ in range(3):
            status, data = status_of(proxy, pinned)
            assert status == 200 and data.split(b"\r\n\r\n", 1)[1].startswith(b"A ")
        assert b.requests == 2
        stats = proxy.call(lambda: proxy.runtime.stats["B"].as_dict())
        assert stats["retries"] == 2 and stats["ejections"] == 1
    finally:
        a.close()
        b.close()


class ClosesWhenReused:
    """A keep-alive server that answers the first request of each connection and closes the
    connection, without a byte, on the second: the race of a server closing an idle
    kept-alive connection just as the proxy reuses it."""

    def __init__(self) -> None:
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        with conn, contextlib.suppress(OSError):
            for answered in (False, True):
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                _, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                if answered:
                    return  # closed (FIN) with the request unanswered
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_a_resend_after_a_keep_alive_close_race_is_no_retry(loop: ProxyThread) -> None:
    """The server closed the pooled connection as the proxy reused it: the request goes again
    on a fresh connection to the same server. That server did not fail: one request each,
    no retry counted (retries are requests sent to another server after a failure)."""
    srv = ClosesWhenReused()
    try:
        proxy = loop.listen(service([("A", "127.0.0.1", srv.port)]), host="127.10.14.50")
        assert [status_of(proxy)[0] for _ in range(3)] == [200, 200, 200]
        assert srv.requests == 5  # the 2nd and 3rd each reached a reused connection first
        stats = proxy.call(lambda: proxy.runtime.stats["A"].as_dict())
        assert (stats["requests"], stats["retries"], stats["responses"]) == (3, 0, {"2xx": 3})
    finally:
        srv.close()
