"""Issue 16, item 5 (l7): source-IP persistence holds across the proxy's worker processes.

The proxy runs `node.proxy.workers` processes sharing every listening port (SO_REUSEPORT), each
with its own persistence table. Without steering the kernel deals a client's connections to the
workers by a hash of the 4-tuple (the source port changes every connection), so one client met
two tables and two servers. These tests drive a real `pacslb run` with two workers and three
real servers on 127.10.4.0/24, and clients bound to their own loopback addresses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from pacslb.control.local import NotRunning, request
from tests.faults.test_workers import pid_of, worker_events
from tests.peers.procs import free_port, http_peer, running, wait_until

HOST = "127.10.4.10"  # the real servers
VIP = "127.10.4.1"
CLIENTS = [f"127.10.4.{i}" for i in range(50, 62)]
CONNECTIONS = 10  # per client and round: with two unsteered tables, 10 all on one: p = 2^-9


def write_config(path: Path, port: int, backends: list[int], workers: int) -> None:
    servers = "\n".join(
        f"      - {{label: Srv{i}, address: {HOST}, port: {p}}}" for i, p in enumerate(backends, 1)
    )
    path.write_text(
        f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: {workers}, spare: true}}}}
virtual_services:
  - label: Archive
    vip: {VIP}
    ports: [{port}]
    mode: l7-tcp
    scheduler: rr
    persistence: {{type: source-ip, timeout: 600}}
    health_check: {{type: connect, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
{servers}
"""
    )


def who(port: int, client: str) -> str:
    """One new connection from `client` through the l7-tcp VIP: which server answered."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((client, 0))
        sock.connect((VIP, port))
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    body = data.rsplit(b"\r\n\r\n", 1)[1].decode()
    # A response cut after its head (the worker killed between the server's writes) names no
    # server: a failed connection, not a client moved to the server "".
    assert body.startswith("server"), data[:200]
    return body


def servers_seen(port: int) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {c: set() for c in CLIENTS}
    for _ in range(CONNECTIONS):
        for client in CLIENTS:
            seen[client].add(who(port, client))
    return seen


def all_up(state: Path) -> bool:
    try:
        result: dict[str, Any] = request(state, {"cmd": "status"}, timeout=5)
    except (OSError, NotRunning):
        return False
    if not result.get("ready"):
        return False
    svc = next(s for s in result["services"] if s["label"] == "Archive")
    return all(rs["health"] == "up" for rs in svc["real_servers"])


def replacements(state: Path, worker: str) -> int:
    """How many times `worker` was replaced and serves again (its "replaced" events)."""
    try:
        events = worker_events(state)
    except NotRunning:
        return 0
    data = [e["data"] for e in events]
    return sum(d.get("reason") == "replaced" and d["worker"] == worker for d in data)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`pacslb run` with two workers (and a spare) in front of three real servers."""
    backends = [free_port(HOST) for _ in range(3)]
    port = free_port(VIP)
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    state.mkdir()
    write_config(config, port, backends, workers=2)
    with ExitStack() as stack:
        for i, p in enumerate(backends, 1):
            stack.enter_context(http_peer(HOST, p, "/check=200:OK", f"/who=200:server{i}"))
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
        proc = stack.enter_context(running(argv, log=tmp_path / "run.log"))
        try:
            wait_until(lambda: all_up(state), 30, "the service with three servers up", 0.1)
        except TimeoutError:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            raise
        yield state, port


def test_a_client_stays_on_one_server_across_two_workers(node: tuple[Path, int]) -> None:
    _, port = node
    seen = servers_seen(port)
    split = {c: s for c, s in seen.items() if len(s) != 1}
    assert not split, f"clients placed on several servers: {split}"
    # the clients are spread (rr over three servers): steering must not funnel them together
    assert len({next(iter(s)) for s in seen.values()}) >= 2, seen


def test_persistence_survives_a_worker_replacement(node: tuple[Path, int]) -> None:
    state, port = node
    before = {c: s.pop() for c, s in servers_seen(port).items() if len(s) == 1}
    assert len(before) == len(CLIENTS), "persistence failed before any fault"
    # The control process reads the workers' entries each second (the watchdog): a worker's
    # entries younger than that die with it. These clients have been placed for longer.
    time.sleep(1.5)
    for name in ("proxy-0", "proxy-1"):  # each position in the reuseport group in turn
        path = state / f"{name}.sock"
        old = pid_of(path)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        began = time.monotonic()
        wait_until(lambda w=name: replacements(state, w) == 1, 20, f"{name} replaced", 0.02)
        replaced = time.monotonic() - began
        # New clients first: a fresh worker placing the old clients anew in the same order as
        # its predecessor did would give them the same round-robin servers by chance.
        for noise in range(90, 94 + len(name)):
            who(port, f"127.10.4.{noise}")
        after = servers_seen(port)
        moved = {c: (before[c], s) for c, s in after.items() if s != {before[c]}}
        assert not moved, f"after {name} was replaced ({replaced:.2f} s): {moved}"


class ClientLoad:
    """Every client connecting again and again (one thread each, bounded), recording which
    server each connection reached, while a worker is killed."""

    def __init__(self, port: int, seconds: float = 15.0) -> None:
        self.port, self.seconds = port, seconds
        self.seen: dict[str, list[str]] = {c: [] for c in CLIENTS}
        self.failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in CLIENTS]

    def _run(self, client: str) -> None:
        deadline = time.monotonic() + self.seconds
        for _ in range(5000):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                self.seen[client].append(who(self.port, client))
            except (OSError, AssertionError):
                self.failed += 1  # a connection the killed worker held
            time.sleep(0.005)

    def __enter__(self) -> ClientLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_clients_connecting_during_a_crash_keep_their_servers(node: tuple[Path, int]) -> None:
    """The clients of the killed worker reach a survivor at once (its socket is gone): the
    survivor must already know them, not schedule them anew in the moments before the
    control process hands it the dead worker's entries."""
    state, port = node
    before = {c: s.pop() for c, s in servers_seen(port).items() if len(s) == 1}
    assert len(before) == len(CLIENTS), "persistence failed before any fault"
    time.sleep(1.5)  # the control process has read the entries (each second)
    path = state / "proxy-0.sock"
    old = pid_of(path)
    assert old is not None
    with ClientLoad(port) as load:
        time.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: replacements(state, "proxy-0") == 1, 20, "proxy-0 replaced", 0.02)
        time.sleep(1.0)
    wrong = {c: sorted(set(s) - {before[c]}) for c, s in load.seen.items() if set(s) - {before[c]}}
    total = sum(len(s) for s in load.seen.values())
    print(f"{total} connections during the crash, {load.failed} failed, moved: {wrong}")
    assert not wrong, f"clients placed on another server during the crash: {wrong}"
    after = {c: s.pop() for c, s in servers_seen(port).items() if len(s) == 1}
    assert after == before


def test_a_hung_worker_is_replaced_in_time_and_its_clients_keep_their_servers(
    node: tuple[Path, int],
) -> None:
    """SIGSTOP: the worker holds its socket (the kernel keeps queueing its clients there) until
    the watchdog kills it after three missed pings; the per-second read of persistence entries
    must not slow that down (it skips a worker that did not answer its ping)."""
    state, port = node
    before = {c: s.pop() for c, s in servers_seen(port).items() if len(s) == 1}
    assert len(before) == len(CLIENTS), "persistence failed before any fault"
    time.sleep(1.5)  # the control process has read the entries (each second)
    path = state / "proxy-1.sock"
    old = pid_of(path)
    assert old is not None
    os.kill(old, signal.SIGSTOP)
    began = time.monotonic()
    try:
        wait_until(lambda: replacements(state, "proxy-1") == 1, 30, "proxy-1 replaced", 0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)  # (killed by the watchdog already, unless it failed)
    replaced = time.monotonic() - began
    print(f"hung worker replaced after {replaced:.2f} s")
    assert replaced < 10, f"a hung worker took {replaced:.1f} s to be replaced"
    after = {c: s.pop() for c, s in servers_seen(port).items() if len(s) == 1}
    assert after == before
