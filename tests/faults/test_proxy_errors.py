"""Issue 14, items 8 and 10: the proxy's own errors are counted and acted on.

`pacslb run` with the built-in proxy in front of two real servers on loopback: one that
answers, and one that passes its (connect) health check but resets every request -- the
fault that used to fail half the traffic for ever. Passive health must take it out of the
worker's rotation after a few failures (with a notice), GETs that hit it must be retried on
the other server, a POST must not be, and its 502s must show in `pacslb status --json`.
A client that sends a huge header and keeps sending must read the 431, not a reset.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.procs import free_port, running, wait_until

pytestmark = pytest.mark.timeout(60)

VIP = "127.10.14.1"
GOOD = "127.10.14.2"
BAD = "127.10.14.3"
THRESHOLD = 3  # passive.consecutive_failures in the config below


class RawServer:
    """A real HTTP/1.1 server on a thread: reads each request (head and Content-Length body)
    and answers 200 -- or, with `reset`, closes with RST as soon as the head is in. Counts
    the requests it received by method."""

    def __init__(self, host: str, reset: bool, hang: bool = False) -> None:
        self.host = host
        self.reset = reset
        self.hang = hang  # never answers (until the proxy gives up)
        self.received: Counter[str] = Counter()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        with conn:
            while True:
                try:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                except OSError:
                    return
                head, _, buf = buf.partition(b"\r\n\r\n")
                method = head.split(b" ", 1)[0].decode()
                self.received[method] += 1
                if self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # closed with RST: no response byte
                if self.hang:
                    with contextlib.suppress(OSError):
                        conn.recv(1)  # until the proxy closes (or the 10 s timeout)
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                try:
                    while len(buf) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    buf = buf[length:]
                    last = b"\r\nconnection: close" in head.lower()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                        + (b"Connection: close\r\n" if last else b"")
                        + b"\r\ngood"
                    )
                except OSError:
                    return
                if last:
                    return


def cli(state: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def server_status(state: Path, service: str, server: str) -> dict[str, Any]:
    status = json.loads(cli(state, "status", "--json"))
    svc = next(s for s in status["services"] if s["label"] == service)
    return next(rs for rs in svc["real_servers"] if rs["label"] == server)


class Notices:
    """The operator's notices, as `pacslb events` shows them: the control process takes the
    worker's queue (its watchdog asks each second), so the tests read the event log only."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def poll(self) -> list[str]:
        return cli(self.state, "events", "--limit", "500").splitlines()

    def has(self, *words: str) -> bool:
        return any(all(w in line for w in words) for line in self.poll())


def request(port: int, method: str = "GET", body: bytes = b"") -> int:
    """One request on a new connection; the status, or 0 when the connection broke."""
    head = f"{method} /who HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    try:
        with socket.create_connection((VIP, port), timeout=10) as sock:
            sock.sendall(head.encode() + b"\r\n" + body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def tcp_exchange(port: int) -> bool:
    """One HTTP exchange through the l7-tcp VIP: True when a response came."""
    try:
        with socket.create_connection((VIP, port), timeout=10) as sock:
            sock.sendall(b"GET /who HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200")


def service(label: str, port: int, mode: str, passive: str, servers: dict[str, RawServer]) -> str:
    lines = "\n".join(
        f"      - {{label: {name}, address: {srv.host}, port: {srv.port}}}"
        for name, srv in servers.items()
    )
    check = "{type: connect, interval: 0.5, timeout: 0.4, rise: 1, fall: 1}"
    return f"""  - label: {label}
    vip: {VIP}
    ports: [{port}]
    mode: {mode}
    scheduler: rr
    passive: {passive}
    health_check: {check}
    real_servers:
{lines}
"""


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("proxy-errors")
    # Each service has servers of its own, so that each test counts its own requests.
    web = {"Good": RawServer(GOOD, reset=False), "Bad": RawServer(BAD, reset=True)}
    tcp = {"Good": RawServer(GOOD, reset=False), "Bad": RawServer(BAD, reset=True)}
    back = {"Good": RawServer(GOOD, reset=False), "Flaky": RawServer(BAD, reset=True)}
    single = {"Lone": RawServer(BAD, reset=True)}
    slow = {"Good": RawServer(GOOD, reset=False), "Slow": RawServer(BAD, reset=False, hang=True)}
    ports = {name: free_port(VIP) for name in ("Web", "Tcp", "Back", "Single", "Slow")}
    passive = f"{{consecutive_failures: {THRESHOLD}, ejection: 30}}"
    config, state = tmp / "pacslb.yaml", tmp / "state"
    # One worker: passive health counts and ejects per worker, and the tests count requests.
    config.write_text(
        "version: 1\nnode: {webui: {enabled: false}, proxy: {workers: 1}}\nvirtual_services:\n"
        + service("Web", ports["Web"], "l7-http", passive, web)
        + service("Tcp", ports["Tcp"], "l7-tcp", passive, tcp)
        + service("Back", ports["Back"], "l7-http", "{consecutive_failures: 2, ejection: 1}", back)
        + service("Single", ports["Single"], "l7-http", passive, single)
        + service("Slow", ports["Slow"], "l7-http", "{consecutive_failures: 2}", slow)
        + "    timeouts: {http_response: 0.5}\n"
    )
    services = {"Web": web, "Tcp": tcp, "Back": back, "Single": single, "Slow": slow}
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    try:
        with running(argv, VIP, ports["Web"], log=tmp / "run.log"):
            wait_until(
                lambda: all(
                    rs["health"] == "up"
                    for svc in json.loads(cli(state, "status", "--json"))["services"]
                    for rs in svc["real_servers"]
                ),
                15,
                "every server up",
                step=0.1,
            )
            yield {"state": state, "ports": ports, "notices": Notices(state), **services}
    finally:
        for servers in services.values():
            for srv in servers.values():
                srv.close()


def test_a_server_that_resets_every_request_is_ejected_and_gets_retried(
    lb: dict[str, Any],
) -> None:
    state, port, bad, notices = lb["state"], lb["ports"]["Web"], lb["Web"]["Bad"], lb["notices"]

    # POSTs are never retried: the ones that reached Bad (round robin: every other one) get
    # the proxy's 502, and Bad saw each of them exactly once.
    posts = [request(port, "POST", b"x" * 100) for _ in range(2)]
    assert sorted(posts) == [200, 502], posts
    assert bad.received["POST"] == 1

    # A PUT with a (kept) body is idempotent: the one that hits Bad is sent again to Good.
    assert [request(port, "PUT", b"y" * 1000) for _ in range(2)] == [200, 200]
    assert bad.received["PUT"] == 1

    # GETs that hit Bad are retried on Good: the clients see no failure at all, and after
    # THRESHOLD consecutive failures Bad is out of the rotation (it gets no more requests).
    gets = Counter(request(port) for _ in range(20))
    assert gets == {200: 20}, gets
    assert bad.received.total() == THRESHOLD, bad.received
    assert Counter(request(port) for _ in range(10)) == {200: 10}
    assert bad.received.total() == THRESHOLD, bad.received

    # The 502 counted against Bad (status --json, what /metrics reads), the retries too, and
    # the ejection told to the operator with its reason.
    wait_until(
        lambda: server_status(state, "Web", "Bad")["connections"]["responses"].get("5xx") == 1,
        10,
        "the 502 counted against Bad",
        step=0.2,
    )
    assert "5xx=1" in cli(state, "status")
    assert server_status(state, "Web", "Good")["connections"]["responses"] == {"2xx": 33}
    wait_until(lambda: notices.has("Web/Bad", "ejected"), 10, "an ejection notice", step=0.2)


def test_l7_tcp_ejects_a_server_that_resets_connections(lb: dict[str, Any]) -> None:
    notices = lb["notices"]
    results = [tcp_exchange(lb["ports"]["Tcp"]) for _ in range(30)]
    # Each of the first connections to Bad is reset (a TCP stream cannot be replayed); after
    # THRESHOLD of them Bad is ejected and every later client succeeds.
    assert results.count(False) == THRESHOLD, results
    assert all(results[-20:]), results
    wait_until(lambda: notices.has("Tcp/Bad", "ejected"), 10, "an ejection notice", step=0.2)


def test_an_ejected_server_comes_back_after_its_time(lb: dict[str, Any]) -> None:
    port, flaky, notices = lb["ports"]["Back"], lb["Back"]["Flaky"], lb["notices"]
    assert [request(port) for _ in range(6)] == [200] * 6  # retried on Good
    assert flaky.received.total() == 2  # two failures in a row: out for 1 s
    flaky.reset = False  # healed
    wait_until(lambda: notices.has("Back/Flaky", "back in rotation"), 10, "its return", step=0.2)
    assert [request(port) for _ in range(4)] == [200] * 4
    assert flaky.received.total() == 4  # it serves again (round robin: every other request)


def test_the_last_server_is_never_ejected(lb: dict[str, Any]) -> None:
    """With nothing else to go to, a failing server keeps its traffic (some clients may get
    an answer); each request is sent once (no other server to retry on) and its 502 counted,
    as a request to that server and not as a retry."""
    port, lone, state = lb["ports"]["Single"], lb["Single"]["Lone"], lb["state"]
    assert [request(port) for _ in range(2 * THRESHOLD)] == [502] * 2 * THRESHOLD
    assert lone.received.total() == 2 * THRESHOLD
    wait_until(
        lambda: (
            server_status(state, "Single", "Lone")["connections"]["responses"]
            == {"5xx": 2 * THRESHOLD}
        ),
        10,
        "the 502s counted",
        step=0.2,
    )
    counted = server_status(state, "Single", "Lone")["connections"]
    assert (counted["requests"], counted["retries"]) == (2 * THRESHOLD, 0), counted
    assert not lb["notices"].has("Single/Lone", "ejected")


def test_a_server_that_does_not_answer_gets_504s_counted_then_is_ejected(
    lb: dict[str, Any],
) -> None:
    """No response within timeouts.http_response: the proxy's 504, counted against the
    server; not retried (the server may be working on it); two in a row eject it."""
    port, slow, state = lb["ports"]["Slow"], lb["Slow"]["Slow"], lb["state"]
    statuses = [request(port) for _ in range(8)]
    assert statuses.count(504) == 2 and statuses.count(200) == 6, statuses
    assert slow.received.total() == 2
    wait_until(
        lambda: server_status(state, "Slow", "Slow")["connections"]["responses"] == {"5xx": 2},
        10,
        "the 504s counted",
        step=0.2,
    )
    wait_until(lambda: lb["notices"].has("Slow/Slow", "no response"), 10, "a notice", step=0.2)


def proxy_side_held(client: socket.socket) -> bool:
    """Whether a process still holds the proxy's end of this client connection (`ss -p`: a
    socket the process has closed is an orphan and names no process)."""
    host, port = client.getsockname()
    vip, vip_port = client.getpeername()
    out = subprocess.run(
        ["ss", "-Htnp", "state", "all", "src", f"{vip}:{vip_port}", "dst", f"{host}:{port}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return "pid=" in out


def test_an_error_to_a_request_read_in_full_closes_at_once(lb: dict[str, Any]) -> None:
    """A 502 (or 503, 504) answers a request the proxy has read to its end: nothing more is
    coming, so the connection closes at once rather than lingering (a lingering close holds
    the client's descriptor and its budget slot for LINGER seconds: in an error storm, every
    such client). The proxy's end is closed by the time the client reads the end of the 502."""
    port = lb["ports"]["Single"]
    with socket.create_connection((VIP, port), timeout=10) as sock:
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: vip\r\n\r\n")  # keep-alive
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 502"), data[:40]
        assert not proxy_side_held(sock)
    # A request cut short (its head incomplete) still gets a lingering close after its 431.
    with socket.create_connection((VIP, port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n" + b"X-Filler: " + b"a" * 70000)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 431"), data[:40]
        assert proxy_side_held(sock)


def test_a_client_still_sending_a_huge_header_reads_the_431(lb: dict[str, Any]) -> None:
    """The proxy answers 431 while the client is still sending its (oversized) request, as
    curl or a browser send one: all of it, then they read. A lingering close lets the client
    finish and read the 431 instead of a reset (nginx lingering_close)."""
    filler = b"X-Filler: " + b"a" * 4000 + b"\r\n"
    request = b"GET / HTTP/1.1\r\nHost: vip\r\n" + filler * 128 + b"\r\n"  # 512 KB
    for _ in range(3):
        with socket.create_connection((VIP, lb["ports"]["Web"]), timeout=10) as sock:
            try:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError as exc:
                pytest.fail(f"{exc!r}: the 431 was lost")
        assert data.startswith(b"HTTP/1.1 431"), data[:40]
