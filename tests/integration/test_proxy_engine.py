"""`pacslb run` with the built-in proxy: traffic through VIPs, live admin state, counters, and a
data plane that outlives a crashed control process and is adopted by the next one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from tests.peers.procs import free_port, http_peer, running

HOST = "127.0.0.1"
VIP = "127.0.0.77"


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result


def answers(state: Path) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "pacslb.cli", "status", "--state-dir", str(state)],
        capture_output=True,
        timeout=30,
    )
    return result.returncode == 0


def exchange(sock: socket.socket) -> bytes:
    """One keep-alive request on a held connection; the whole response (Content-Length)."""
    sock.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            ln.split(b":")[1]
            for ln in head.split(b"\r\n")
            if ln.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def status(state: Path) -> dict[str, Any]:
    return json.loads(cli(state, "status", "--json").stdout)


def server_status(state: Path, service: str, server: str) -> dict[str, Any]:
    svc = next(s for s in status(state)["services"] if s["label"] == service)
    return next(rs for rs in svc["real_servers"] if rs["label"] == server)


def get(port: int, path: str = "/who") -> tuple[int, bytes]:
    with socket.create_connection((VIP, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def backends() -> Iterator[list[int]]:
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        for i, port in enumerate(ports, start=1):
            stack.enter_context(http_peer(HOST, port, "/check=200:OK", f"/who=200:server{i}"))
        yield ports


def write_config(path: Path, http_port: int, tcp_port: int, backends: list[int]) -> None:
    servers = "\n".join(
        f"      - {{label: Srv{i}, address: {HOST}, port: {p}}}" for i, p in enumerate(backends, 1)
    )
    check = "{type: http, path: /check, expect: OK, interval: 0.5, timeout: 0.4, rise: 1, fall: 1}"
    path.write_text(
        f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: 1}}}}  # about one worker's data plane
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [{http_port}]
    mode: l7-http
    scheduler: rr
    health_check: {check}
    real_servers:
{servers}
  - label: Tcp
    vip: {VIP}
    ports: [{tcp_port}]
    mode: l7-tcp
    scheduler: rr
    health_check: {check}
    real_servers:
{servers}
"""
    )


def test_traffic_admin_state_and_an_adopted_data_plane(tmp_path: Path, backends: list[int]) -> None:
    http_port, tcp_port = free_port(), free_port()
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    write_config(config, http_port, tcp_port, backends)
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    proxy_pid = None
    try:
        with ExitStack() as stack:
            run = stack.enter_context(running(argv, VIP, http_port, log=tmp_path / "run1.log"))
            wait(
                lambda: all(
                    server_status(state, "Web", s)["health"] == "up" for s in ("Srv1", "Srv2")
                ),
                10,
                "health",
            )
            bodies = {get(http_port)[1] for _ in range(6)}
            assert bodies == {b"server1", b"server2"}  # round robin over both

            # a held TCP connection through the l7-tcp VIP, to Srv1 or Srv2
            held = socket.create_connection((VIP, tcp_port), timeout=5)
            first = exchange(held)
            held_server = "Srv1" if first.endswith(b"server1") else "Srv2"
            other = "Srv2" if held_server == "Srv1" else "Srv1"

            cli(state, "drain", "Web", "Srv2")
            assert {get(http_port)[1] for _ in range(6)} == {b"server1"}
            # 3 of the first 6 requests and these 6: counted by the worker, read by `status`
            wait(
                lambda: server_status(state, "Web", "Srv1")["connections"]["requests"] == 9,
                5,
                "counters",
            )
            conns = server_status(state, "Web", "Srv1")["connections"]
            assert conns["responses"] == {"2xx": 9} and conns["total"] == 9
            assert "req=9 5xx=0" in cli(state, "status").stdout

            # The control process dies; the data plane keeps forwarding its last Plan.
            proxy_pid = json.loads(
                subprocess.run(
                    [sys.executable, "-c", _PING, str(state / "proxy-0.sock")],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                ).stdout
            )["pid"]
            os.kill(run.pid, signal.SIGKILL)
            run.wait(5)
            assert get(http_port)[1] == b"server1"
            assert exchange(held).startswith(b"HTTP/1.1 200")

        # A new control process adopts the running proxy (same pid) and the held connection.
        with ExitStack() as stack:
            stack.enter_context(running(argv, log=tmp_path / "run2.log"))
            wait(lambda: answers(state), 10, "the new control process")
            wait(lambda: server_status(state, "Web", "Srv2")["admin"] == "drain", 10, "status")
            assert (state / "proxy-0.sock").exists()
            assert _alive(proxy_pid)
            assert exchange(held).startswith(b"HTTP/1.1 200")

            # Halt cuts the held connection now; drain of the other kept it alive.
            cli(state, "halt", "Tcp", held_server)
            held.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # a reset is a cut too
                assert held.recv(65536) == b""
            held.close()
            with socket.create_connection((VIP, tcp_port), timeout=5) as again:
                assert exchange(again).endswith(f"server{other[-1]}".encode())
            cli(state, "online", "Web", "Srv2")
            assert {get(http_port)[1] for _ in range(6)} == {b"server1", b"server2"}
        # stopping `pacslb run` stops the proxy it adopted
        wait(lambda: not _alive(proxy_pid), 10, "proxy to stop")
    finally:
        if proxy_pid is not None and _alive(proxy_pid):
            os.kill(proxy_pid, signal.SIGKILL)


_PING = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"cmd": "ping"}\\n'); print(json.dumps(json.loads(s.makefile().readline())["result"]))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_port_in_use_is_reported_and_nothing_changes(tmp_path: Path, backends: list[int]) -> None:
    http_port, tcp_port = free_port(), free_port()
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    write_config(config, http_port, tcp_port, backends)
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with ExitStack() as stack:
        stack.enter_context(running(argv, VIP, http_port, log=tmp_path / "run.log"))
        blocker = socket.socket()
        stack.callback(blocker.close)
        blocker.bind((VIP, 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        config.write_text(config.read_text().replace(f"[{tcp_port}]", f"[{busy}]"))
        cli(state, "reload")
        wait(
            lambda: "cannot listen" in cli(state, "events", "--kind", "engine").stdout,
            5,
            "engine event",
        )
        # the previous listeners still serve, and admin states still reach the data plane
        assert get(http_port)[0] == 200
        cli(state, "drain", "Web", "Srv2")
        assert {get(http_port)[1] for _ in range(6)} == {b"server1"}


def test_a_real_server_killed_under_load_fails_no_request(
    tmp_path: Path, backends: list[int]
) -> None:
    """New connections keep succeeding while a real server dies: the proxy retries the refused
    connect on the other server until the health check takes the dead one out of the Plan."""
    http_port, tcp_port = free_port(), free_port()
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    third = free_port()
    write_config(config, http_port, tcp_port, [*backends, third])
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with ExitStack() as stack:
        victim = stack.enter_context(http_peer(HOST, third, "/check=200:OK", "/who=200:server3"))
        stack.enter_context(running(argv, VIP, http_port, log=tmp_path / "run.log"))
        wait(lambda: server_status(state, "Web", "Srv3")["health"] == "up", 10, "Srv3 up")
        statuses: list[int] = []
        seen: set[bytes] = set()
        deadline = time.monotonic() + 20
        for i in range(600):  # bounded in count and in time
            if i == 150:
                victim.kill()  # the real server dies mid-loop
                victim.wait(5)
            status_code, body = get(http_port)
            statuses.append(status_code)
            seen.add(body)
            if time.monotonic() > deadline:
                break
        assert len(statuses) >= 300
        assert set(statuses) == {200}, f"{statuses.count(200)} of {len(statuses)} succeeded"
        assert b"server3" in seen
        wait(lambda: server_status(state, "Web", "Srv3")["health"] == "down", 10, "Srv3 down")
        assert server_status(state, "Web", "Srv3")["effective_weight"] == 0


def test_a_slow_client_does_not_hold_up_others(tmp_path: Path, backends: list[int]) -> None:
    http_port, tcp_port = free_port(), free_port()
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    write_config(config, http_port, tcp_port, backends)
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with ExitStack() as stack:
        stack.enter_context(running(argv, VIP, http_port, log=tmp_path / "run.log"))
        slow = socket.create_connection((VIP, http_port), timeout=5)
        stack.callback(slow.close)
        request = b"GET /who HTTP/1.1\r\nHost: slow\r\nConnection: close\r\n\r\n"
        for i, byte in enumerate(request):  # one byte at a time, well inside the header timeout
            slow.sendall(bytes([byte]))
            if i % 8 == 0:
                assert get(http_port)[0] == 200  # others are served meanwhile
                time.sleep(0.01)
        data = b""
        while chunk := slow.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith((b"server1", b"server2"))


def test_a_killed_proxy_worker_is_restarted(tmp_path: Path, backends: list[int]) -> None:
    http_port, tcp_port = free_port(), free_port()
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    write_config(config, http_port, tcp_port, backends)
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with ExitStack() as stack:
        stack.enter_context(running(argv, VIP, http_port, log=tmp_path / "run.log"))
        ping = [sys.executable, "-c", _PING, str(state / "proxy-0.sock")]
        first = json.loads(subprocess.run(ping, capture_output=True, text=True, timeout=10).stdout)
        os.kill(first["pid"], signal.SIGKILL)  # as the OOM killer would

        def serves() -> bool:
            try:
                return get(http_port)[0] == 200
            except OSError:
                return False

        wait(serves, 15, "the VIP to serve again")
        again = json.loads(subprocess.run(ping, capture_output=True, text=True, timeout=10).stdout)
        assert again["pid"] != first["pid"] and again["revision"] is not None
        assert "worker proxy-0 replaced (crashed)" in (tmp_path / "run.log").read_text()


def test_a_restart_that_keeps_the_data_plane(tmp_path: Path, backends: list[int]) -> None:
    """`pacslb stop --keep-data-plane`, then `pacslb run`: a held connection lives through the
    control plane's restart (an upgrade); a plain `pacslb stop` then stops the workers, and
    `pacslb teardown` stops those a kept stop left."""
    http_port, tcp_port = free_port(), free_port()
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    write_config(config, http_port, tcp_port, backends)
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    ping = [sys.executable, "-c", _PING, str(state / "proxy-0.sock")]
    proxy_pid = None
    try:
        with ExitStack() as stack:
            run = stack.enter_context(running(argv, VIP, tcp_port, log=tmp_path / "run1.log"))
            wait(lambda: server_status(state, "Tcp", "Srv1")["health"] == "up", 10, "health")
            held = socket.create_connection((VIP, tcp_port), timeout=5)
            stack.callback(held.close)
            assert exchange(held).startswith(b"HTTP/1.1 200")
            proxy_pid = json.loads(subprocess.run(ping, capture_output=True, timeout=10).stdout)[
                "pid"
            ]
            out = cli(state, "stop", "--keep-data-plane").stdout
            assert "goes on forwarding" in out
            assert run.wait(10) == 0
            assert _alive(proxy_pid)
            assert exchange(held).startswith(b"HTTP/1.1 200")  # nobody controls it; it serves
            assert get(http_port)[0] == 200

            with ExitStack() as again:
                again.enter_context(running(argv, log=tmp_path / "run2.log"))
                wait(lambda: answers(state), 10, "the new control process")
                wait(lambda: server_status(state, "Tcp", "Srv1")["health"] == "up", 10, "health")
                assert exchange(held).startswith(b"HTTP/1.1 200")
                adopted = json.loads(subprocess.run(ping, capture_output=True, timeout=10).stdout)
                assert adopted["pid"] == proxy_pid
                assert "stopped" in cli(state, "stop").stdout
            wait(lambda: not _alive(proxy_pid), 10, "the proxy to stop with `pacslb stop`")

            # a kept stop, then teardown: the workers go too
            with ExitStack() as third:
                third.enter_context(running(argv, VIP, tcp_port, log=tmp_path / "run3.log"))
                proxy_pid = json.loads(
                    subprocess.run(ping, capture_output=True, timeout=10).stdout
                )["pid"]
                cli(state, "stop", "--keep-data-plane")
            assert _alive(proxy_pid)
            # As root, teardown would also delete this host's pacslb tables: it runs in a
            # network namespace of its own (the workers' control sockets are files).
            isolate = ["unshare", "--net"] if os.geteuid() == 0 else []
            teardown = [sys.executable, "-m", "pacslb.cli", "teardown", "--state-dir", str(state)]
            result = subprocess.run(isolate + teardown, capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
            assert f"stopped proxy worker {proxy_pid}" in result.stdout
            assert not _alive(proxy_pid)
            with pytest.raises(OSError):
                socket.create_connection((VIP, tcp_port), timeout=2).close()
    finally:
        if proxy_pid is not None and _alive(proxy_pid):
            os.kill(proxy_pid, signal.SIGKILL)
