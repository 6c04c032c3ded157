"""A worker found alive but not answering when `pacslb run` starts, in the ways the SO_PEERCRED
probe alone missed: a control socket whose backlog is full (the probe's connect is refused with
EAGAIN, which read as "nobody there": a second worker was started beside the stuck one, which
kept its share of every port for ever).

Real `pacslb run` and `pacslb proxy` processes, real HTTP backends on 127.10.19.0/24.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

from tests.faults import web_service
from tests.faults.test_worker_supervision import events_of, reap_later
from tests.faults.test_workers import alive, pid_of, wait
from tests.peers.procs import free_port, running

HOST = "127.10.19.10"  # the real servers
VIP = "127.10.19.1"


def write_config(path: Path, port: int, backends: list[int]) -> None:
    web_service.write_config(path, VIP, port, HOST, backends, 1, False)


def fill_backlog(stack: ExitStack, path: Path) -> int:
    """Connect to `path` (whose listener accepts nothing) until the kernel refuses: its backlog
    is full. The connections are held until the test ends; returns how many were made."""
    made = 0
    for _ in range(5000):
        sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            return made
        made += 1
    raise AssertionError(f"{path} still accepts after {made} connections")


def test_a_stuck_worker_with_a_full_backlog_is_killed_not_doubled(
    tmp_path: Path, backends: list[int]
) -> None:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    sock = state / "proxy-0.sock"
    with ExitStack() as stack:
        port = free_port(VIP)
        write_config(config, port, backends)
        run = stack.enter_context(running(argv, VIP, port, log=tmp_path / "run.log"))
        wait(lambda: pid_of(sock) is not None, 15, "the worker")
        stuck = pid_of(sock)
        reap_later(stack, [stuck])
        assert stuck is not None
        os.kill(run.pid, signal.SIGKILL)  # the control process dies, its worker serves on...
        run.wait(5)
        os.kill(stuck, signal.SIGSTOP)  # ...then hangs, and its control socket fills up
        assert fill_backlog(stack, sock) > 0
        stack.enter_context(running(argv, log=tmp_path / "run2.log"))
        wait(lambda: not alive(stuck), 20, "the stuck worker to be killed")
        wait(lambda: pid_of(sock) not in (None, stuck), 15, "a new worker")
        reap_later(stack, [pid_of(sock)])
        hung = events_of(state, "hung", "proxy-0")
        assert hung and hung[-1]["data"]["pid"] == stuck, hung
