"""A real `pacslb run` speaks systemd's protocols: sd_notify and the native journal.

systemd cannot run as PID 1 in this container, so the test plays its part: it binds the two
datagram sockets systemd would (NOTIFY_SOCKET, and the journal's socket, named through
PACSLB_JOURNAL_SOCKET) and reads what pacslb sends while it starts, reloads and stops, as
pacslb.service has it run (Type=notify, ExecReload=pacslb reload).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.peers.procs import free_port, http_peer, running

from pacslb import __version__
from pacslb.control.events import Event
from pacslb.control.journal import SystemLog, decode_native
from pacslb.control.sdnotify import Notifier, message, notify_socket_address

HOST = "127.10.5.1"  # this helper's loopback block
VIP = "127.10.5.31"


@contextlib.contextmanager
def datagram_socket(path: Path | str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path) if isinstance(path, Path) else path)
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, until: str, timeout: float) -> list[str]:
    """Datagrams (as text) until one holds `until` (bounded by `timeout`)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(1 << 16).decode())
        except TimeoutError:
            continue
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} within {timeout} s; got {got!r}")


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    sock.settimeout(0.05)
    with contextlib.suppress(TimeoutError):
        while True:
            out.append(sock.recv(1 << 16))
    return out


def status(state: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", "status", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def test_run_notifies_ready_reloading_stopping_and_logs_events_with_fields(
    tmp_path: Path,
) -> None:
    rip = free_port(HOST)
    config = tmp_path / "pacslb.yaml"
    config.write_text(
        f"""version: 1
node:
  webui: {{enabled: false}}
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [{free_port(VIP)}]
    mode: l7-http
    health_check: {{type: http, path: /ok, expect: OK, interval: 0.5, timeout: 0.4}}
    real_servers:
      - {{label: Srv1, address: {HOST}, port: {rip}}}
"""
    )
    state = tmp_path / "state"
    notify_path, journal_path = tmp_path / "notify", tmp_path / "journal"
    env = {
        "NOTIFY_SOCKET": str(notify_path),
        "PACSLB_LOG_TO": "journal",
        "PACSLB_JOURNAL_SOCKET": str(journal_path),
    }
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with (
        datagram_socket(notify_path) as notify,
        datagram_socket(journal_path) as journal,
        http_peer(HOST, rip, "/ok=200:OK"),
        running(argv, env=env, log=tmp_path / "run.log") as proc,
    ):
        started = time.monotonic()
        ready = receive(notify, "READY=1", timeout=30)
        print(f"READY=1 {time.monotonic() - started:.2f} s after the start")
        assert "STATUS=ready: config revision 1" in ready[-1], ready
        # READY means the first Plan is applied: status agrees at once.
        assert " ready" in status(state).splitlines()[0]

        out = subprocess.run(
            [sys.executable, "-m", "pacslb.cli", "reload", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        reload = receive(notify, "READY=1", timeout=10)
        reloading = next(d for d in reload if "RELOADING=1" in d)
        usec = int(reloading.split("MONOTONIC_USEC=")[1].split("\n")[0])
        assert abs(usec - time.monotonic_ns() // 1000) < 60_000_000  # CLOCK_MONOTONIC, in µs
        assert reload.index(reloading) < len(reload) - 1  # READY=1 after RELOADING=1

        proc.terminate()
        stopping = receive(notify, "STOPPING=1", timeout=30)
        assert stopping
        proc.wait(30)

        fields = [decode_native(d) for d in drain(journal)]
    kinds = {f["PACSLB_KIND"] for f in fields}
    assert {"process", "config"} <= kinds, kinds
    assert all(f["SYSLOG_IDENTIFIER"] == "pacslb" and f["PRIORITY"].isdigit() for f in fields)
    started_line = next(f for f in fields if "started (pid" in f["MESSAGE"])
    assert started_line["MESSAGE"].startswith("process: pacslb ")
    health = [f for f in fields if f["PACSLB_KIND"] == "health"]
    assert health and health[0]["PACSLB_SERVICE"] == "Web" and health[0]["PACSLB_SERVER"] == "Srv1"
    assert health[0]["PACSLB_DATA_CURRENT"] == "up", health[0]
    # Each event once: still in events.jsonl, and still on stdout (not the journal's stream).
    line = f"pacslb {__version__} started (pid {proc.pid})"
    assert (state / "events.jsonl").read_text().count(line) == 1
    assert (tmp_path / "run.log").read_text().count(line) == 1
    assert sum(f["MESSAGE"] == f"process: {line}" for f in fields) == 1


def test_notifier_reaches_an_abstract_socket_and_is_silent_without_one() -> None:
    name = f"pacslb-test-{os.getpid()}"
    with datagram_socket("\0" + name) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready("ready: config revision 3")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ready: config revision 3\n"
    assert not Notifier({}).enabled and not Notifier({}).ready("x")
    assert notify_socket_address("vsock:2:1234") is None
    text = message(reloading=True, status="multi\nline", now_usec=42)
    assert text == b"RELOADING=1\nMONOTONIC_USEC=42\nSTATUS=multi line\n"


def test_system_log_is_chosen_from_the_environment_and_falls_back_to_syslog(
    tmp_path: Path,
) -> None:
    journal_path, syslog_path = tmp_path / "journal", tmp_path / "log"
    event = Event("admin", "online -> drain by admin", "Web", "Srv1")
    with datagram_socket(syslog_path) as syslog:
        # Not started by systemd (no JOURNAL_STREAM) and not asked: none, the host's log is
        # left alone.
        assert SystemLog.from_environment({"PACSLB_SYSLOG_SOCKET": str(syslog_path)}) is None
        # Under systemd but without journald's socket: syslog.
        env = {
            "JOURNAL_STREAM": "8:12345",
            "PACSLB_JOURNAL_SOCKET": str(journal_path),
            "PACSLB_SYSLOG_SOCKET": str(syslog_path),
        }
        log = SystemLog.from_environment(env)
        assert log is not None and log.kind == "syslog" and not log.duplicates_stdout
        assert log.send(event)
        line = syslog.recv(4096).decode()
        assert line.startswith(f"<30>pacslb[{os.getpid()}]: admin: Web/Srv1: online -> drain")
        log.close()
        with datagram_socket(journal_path) as journal:
            log = SystemLog.from_environment(env)
            assert log is not None and log.kind == "journal"
            # Too big for one datagram: the message still goes, without the data.
            huge = Event("plan", "plan updated", data={"changes": "x" * 400_000})
            assert log.send(huge)
            fields = decode_native(journal.recv(1 << 16))
            assert fields["MESSAGE"] == "plan: plan updated" and "PACSLB_DATA" not in fields
            log.close()
        assert SystemLog.from_environment({**env, "PACSLB_LOG_TO": "none"}) is None
