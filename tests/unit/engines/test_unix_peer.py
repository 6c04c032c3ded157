"""unix_peer: the process listening on a Unix socket, held by a pidfd, with real listeners
(a child process that listens and never accepts) and real sockets."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from pacslb.engines.unix_peer import listener, listening_inodes, pid_checked_again
from pacslb.errors import EngineError

_LISTEN = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    path = tmp_path / "w.sock"
    proc = subprocess.Popen([sys.executable, "-c", _LISTEN, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield path, proc
    finally:
        proc.kill()
        proc.wait(10)


def exited(pidfd: int, timeout: float) -> bool:
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    return bool(poll.poll(timeout * 1000))


def test_the_listener_is_held_by_a_pidfd(listening: tuple[Path, subprocess.Popen[bytes]]) -> None:
    path, proc = listening
    found = listener(path)
    assert found is not None
    pid, pidfd = found
    try:
        assert pid == proc.pid
        assert not exited(pidfd, 0)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        assert exited(pidfd, 10)
    finally:
        os.close(pidfd)


def test_a_full_backlog_still_names_the_listener(
    listening: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    path, proc = listening
    with ExitStack() as stack:
        for _ in range(100):  # listen(1): a few connections fill it
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.setblocking(False)
            try:
                sock.connect(str(path))
            except BlockingIOError:
                break
        else:
            pytest.fail("the backlog never filled")
        found = listener(path)
    assert found is not None
    os.close(found[1])
    assert found[0] == proc.pid


def test_without_so_peerpidfd_the_pid_is_checked_after_pidfd_open(
    listening: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    path, proc = listening
    found = pid_checked_again(path, proc.pid)
    assert found is not None
    os.close(found[1])
    assert found[0] == proc.pid
    with pytest.raises(EngineError, match="changed"):  # a pid that is not the listener's
        pid_checked_again(path, os.getpid())
    proc.kill()
    proc.wait(10)
    assert pid_checked_again(path, os.getpid()) is None  # nobody listens any more


def test_nobody_listening_is_none(tmp_path: Path) -> None:
    assert listener(tmp_path / "missing.sock") is None
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))
    assert stale.exists() and listener(stale) is None


def test_listening_inodes_reads_proc_net_unix() -> None:
    table = (
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/s/proxy-0.sock\n"
        "0000000000000000: 00000003 00000000 00000000 0001 03 4343 /run/s/proxy-0.sock\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 4444 /run/s/proxy-1.sock\n"
        "0000000000000000: 00000002 00000000 00010000 0001 01 4545\n"
    )
    assert listening_inodes(table, "/run/s/proxy-0.sock") == [4242]  # not the connected one
    assert listening_inodes(table, "/run/s/none.sock") == []
