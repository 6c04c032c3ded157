"""Issue 16, item 5 (l7): a cookie client stays on its server when the other node takes over.

The persistence cookie's value is cookie_id(service label, server label), the same on every
node for the same config, and no node keeps any state for it. Two independent `pacslb run`
(two nodes, each its own state directory and VIP on loopback, as the floating address would be
on one node and then the other) serve the same l7-http service; node B lists the real servers
in another order (labels decide, not positions). Every cookie node A sets sends the client to
the same server through node B.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from pacslb.control.local import NotRunning, request
from tests.peers.procs import free_port, http_peer, running, wait_until

HOST = "127.10.4.30"  # the real servers
VIP_A, VIP_B = "127.10.4.4", "127.10.4.5"
COOKIE = "PACSLB_SERVER"


def write_config(path: Path, vip: str, port: int, servers: list[tuple[str, int]]) -> None:
    lines = "\n".join(
        f"      - {{label: {label}, address: {HOST}, port: {p}}}" for label, p in servers
    )
    path.write_text(
        f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: 2, spare: false}}}}
virtual_services:
  - label: RadiologyManager
    vip: {vip}
    ports: [{port}]
    mode: l7-http
    scheduler: rr
    persistence: {{type: http-cookie}}
    health_check: {{type: http, path: /check, expect: OK, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
{lines}
"""
    )


def get(vip: str, port: int, cookie: str | None = None) -> tuple[str, str | None]:
    """One request on a new connection: (the server's name, the cookie value it set, if any)."""
    head = "GET /who HTTP/1.1\r\nHost: pacs\r\nConnection: close\r\n"
    if cookie is not None:
        head += f"Cookie: theme=dark; {COOKIE}={cookie}\r\n"
    with socket.create_connection((vip, port), timeout=5) as sock:
        sock.sendall((head + "\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    header, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rf"(?im)^set-cookie: {COOKIE}=([^;\r\n]+)".encode(), header)
    return body.decode(), found.group(1).decode() if found else None


def all_up(state: Path) -> bool:
    try:
        result = request(state, {"cmd": "status"}, timeout=5)
    except (OSError, NotRunning):
        return False
    if not result.get("ready"):
        return False
    return all(rs["health"] == "up" for s in result["services"] for rs in s["real_servers"])


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[int]:
    backends = [free_port(HOST) for _ in range(3)]
    port = free_port(VIP_A)
    servers = [(f"Srv{i}", p) for i, p in enumerate(backends, 1)]
    with ExitStack() as stack:
        for i, p in enumerate(backends, 1):
            stack.enter_context(http_peer(HOST, p, "/check=200:OK", f"/who=200:server{i}"))
        for name, vip, order in (("a", VIP_A, servers), ("b", VIP_B, servers[::-1])):
            config, state = tmp_path / f"{name}.yaml", tmp_path / name
            state.mkdir()
            write_config(config, vip, port, order)
            argv = [sys.executable, "-m", "pacslb.cli", "run", str(config)]
            argv += ["--state-dir", str(state)]
            proc = stack.enter_context(running(argv, log=tmp_path / f"{name}.log"))
            try:
                wait_until(lambda s=state: all_up(s), 30, f"node {name} up", 0.1)
            except TimeoutError:
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
                raise
        yield port


def test_a_cookie_from_node_a_reaches_the_same_server_through_node_b(two_nodes: int) -> None:
    port = two_nodes
    cookies: dict[str, str] = {}
    for _ in range(9):  # rr over three servers: a cookie of each
        server, cookie = get(VIP_A, port)
        assert cookie is not None, "node A set no persistence cookie"
        cookies[server] = cookie
    assert sorted(cookies) == ["server1", "server2", "server3"]
    for server, cookie in cookies.items():
        for _ in range(4):  # rr on B alone would move them around
            through_b, set_again = get(VIP_B, port, cookie)
            assert through_b == server, f"cookie {cookie} of {server} reached {through_b} on B"
            assert set_again is None  # a valid cookie is not set again
    # and a client without a cookie is placed by B and given B's cookie, valid on A
    server_b, cookie_b = get(VIP_B, port)
    assert cookie_b == cookies[server_b]
    assert get(VIP_A, port, cookie_b)[0] == server_b
