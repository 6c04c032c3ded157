"""Issue 14, items 2, 3 and 10: a proxy worker that hangs or crashes is replaced, says so, and
costs no counts; adopting a worker is an event; `pacslb stop` returns once the process is gone.

Each test drives a real `pacslb run` with real HTTP backends on 127.10.2.0/24 and injects the
fault with a signal to the worker's PID (as the OOM killer, a debugger or a kernel bug would).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pacslb.control.local import NotRunning, request
from tests.faults import web_service
from tests.peers.procs import free_port, running

HOST = "127.10.2.10"  # the real servers
VIP = "127.10.2.1"


def write_config(path: Path, port: int, backends: list[int], workers: int, spare: bool) -> None:
    web_service.write_config(path, VIP, port, HOST, backends, workers, spare)


def ping(path: Path, timeout: float = 2.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b'{"cmd": "ping"}\n')
        result: dict[str, Any] = json.loads(sock.makefile("rb").readline())["result"]
        return result


def pid_of(path: Path) -> int | None:
    try:
        return int(ping(path, 1.0)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def get(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((VIP, port), timeout=timeout) as sock:
            sock.sendall(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200") and data.endswith((b"server1", b"server2"))


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def status(state: Path) -> dict[str, Any]:
    result: dict[str, Any] = request(state, {"cmd": "status"}, timeout=5)
    return result


def total(state: Path) -> int:
    """Connections to both servers of Web, as `pacslb status --json` reports them."""
    svc = next(s for s in status(state)["services"] if s["label"] == "Web")
    return sum((rs["connections"] or {}).get("total", 0) for rs in svc["real_servers"])


def worker_events(state: Path) -> list[dict[str, Any]]:
    events = request(state, {"cmd": "events", "kind": "engine", "limit": 500}, timeout=5)
    return [e for e in events if e["data"].get("worker")]


def has_event(state: Path, reason: str, worker: str = "proxy-0") -> bool:
    try:
        events = worker_events(state)
    except NotRunning:  # a control process still starting
        return False
    return any(e["data"].get("reason") == reason and e["data"]["worker"] == worker for e in events)


class Load:
    """A bounded client loop in a thread: one new connection per request, 2 s timeout each."""

    def __init__(self, port: int, seconds: float = 20.0, limit: int = 20_000) -> None:
        self.port, self.seconds, self.limit = port, seconds, limit
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        for _ in range(self.limit):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            if get(self.port):
                self.ok += 1
            else:
                self.failed += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def start(
    stack: ExitStack, tmp_path: Path, backends: list[int], workers: int, spare: bool = True
) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = free_port(VIP)
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    write_config(config, port, backends, workers, spare)
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    run = stack.enter_context(running(argv, VIP, port, log=tmp_path / "run.log"))
    wait(lambda: pid_of(state / f"proxy-{workers - 1}.sock") is not None, 15, "the workers")
    return run, state, port


def reap(stack: ExitStack, state: Path, workers: int) -> None:
    """SIGKILL, by PID, every worker still alive when the test ends (a stopped one too)."""
    pids = [pid_of(state / f"proxy-{i}.sock") for i in range(workers)]

    def kill() -> None:
        for pid in pids:
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)

    stack.callback(kill)


def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path, backends: list[int]) -> None:
    with ExitStack() as stack:
        _, state, port = start(stack, tmp_path, backends, workers=1)
        stopped = pid_of(state / "proxy-0.sock")
        assert stopped is not None
        stack.callback(lambda: alive(stopped) and os.kill(stopped, signal.SIGKILL))
        assert get(port)
        wait(lambda: status(state)["proxy"]["spare"] is not None, 15, "a spare worker")
        os.kill(stopped, signal.SIGSTOP)  # the worker hangs: alive, holding its ports
        # The watchdog kills it by PID and starts a replacement that serves the last Plan.
        wait(lambda: has_event(state, "hung"), 15, "a 'hung' event")
        wait(lambda: not alive(stopped), 5, "the hung worker to be killed")
        wait(lambda: pid_of(state / "proxy-0.sock") not in (None, stopped), 10, "a new worker")
        reap(stack, state, 1)
        wait(lambda: get(port), 10, "the VIP to serve again")
        assert all(get(port) for _ in range(20))
        hung = [e for e in worker_events(state) if e["data"].get("reason") == "hung"]
        assert hung[-1]["data"]["pid"] == stopped
        wait(lambda: has_event(state, "replaced"), 5, "a 'replaced' event")
        replaced = [e for e in worker_events(state) if e["data"].get("reason") == "replaced"]
        assert "the spare" in replaced[-1]["message"]  # it took over: no process start
        workers = status(state)["proxy"]["workers"]
        assert workers[0]["restarts"] == 1 and workers[0]["state"] == "up"


def test_one_of_two_workers_killed_under_load(tmp_path: Path, backends: list[int]) -> None:
    """With workers: 2, a SIGKILL costs at most the connections that worker held (a sequential
    client has one), the worker comes back (a new process: no spare here) and the counters
    never go backwards."""
    with ExitStack() as stack:
        _, state, port = start(stack, tmp_path, backends, workers=2, spare=False)
        reap(stack, state, 2)
        victim = pid_of(state / "proxy-1.sock")
        assert victim is not None
        with Load(port, seconds=6) as load:
            wait(lambda: load.ok >= 200, 15, "200 requests")
            wait(lambda: total(state) > 0, 5, "counters")
            before = total(state)
            os.kill(victim, signal.SIGKILL)
            wait(lambda: has_event(state, "crashed", "proxy-1"), 10, "a 'crashed' event")
            wait(lambda: pid_of(state / "proxy-1.sock") not in (None, victim), 10, "a new worker")
            reap(stack, state, 2)
            seen = [total(state) for _ in range(10)]
        assert load.failed <= 3, f"{load.failed} failed, {load.ok} succeeded"
        # What the killed worker counted after its last read (< 1 s) is lost with it; what it
        # had reported is kept.
        assert seen == sorted(seen) and seen[0] >= before, (before, seen)
        crash = next(e for e in worker_events(state) if e["data"].get("reason") == "crashed")
        assert crash["data"]["pid"] == victim and "SIGKILL" in crash["message"]
        assert status(state)["proxy"]["restarts"] == {"crashed": 1, "hung": 0}


def test_the_only_worker_killed_keeps_the_counters(tmp_path: Path, backends: list[int]) -> None:
    with ExitStack() as stack:
        _, state, port = start(stack, tmp_path, backends, workers=1)
        reap(stack, state, 1)
        victim = pid_of(state / "proxy-0.sock")
        assert victim is not None
        assert all(get(port) for _ in range(50))
        wait(lambda: total(state) == 50, 5, "the counters to read 50")
        os.kill(victim, signal.SIGKILL)
        wait(lambda: has_event(state, "crashed"), 10, "a 'crashed' event")
        wait(lambda: pid_of(state / "proxy-0.sock") not in (None, victim), 10, "a new worker")
        reap(stack, state, 1)
        assert total(state) >= 50  # not back to zero
        wait(lambda: get(port), 10, "the VIP to serve again")
        assert all(get(port) for _ in range(10))
        wait(lambda: total(state) >= 61, 5, "the counters to go on from 50")


def test_adopting_a_worker_is_an_event(tmp_path: Path, backends: list[int]) -> None:
    with ExitStack() as stack:
        run, state, port = start(stack, tmp_path, backends, workers=1)
        reap(stack, state, 1)
        worker = pid_of(state / "proxy-0.sock")
        os.kill(run.pid, signal.SIGKILL)  # the control process dies; the data plane serves on
        run.wait(5)
        assert get(port)
        argv = [
            *("-m", "pacslb.cli", "run", str(tmp_path / "pacslb.yaml")),
            *("--state-dir", str(state)),
        ]
        stack.enter_context(running([sys.executable, *argv], log=tmp_path / "run2.log"))
        wait(lambda: has_event(state, "adopted"), 15, "an 'adopted' event")
        adopted = [e for e in worker_events(state) if e["data"].get("reason") == "adopted"]
        assert adopted[-1]["data"]["pid"] == worker
        assert status(state)["proxy"]["workers"][0]["pid"] == worker


def test_stop_returns_after_the_process_is_gone(tmp_path: Path, backends: list[int]) -> None:
    with ExitStack() as stack:
        run, state, _ = start(stack, tmp_path, backends, workers=2)
        reap(stack, state, 2)
        workers = [pid_of(state / f"proxy-{i}.sock") for i in range(2)]
        stop = [sys.executable, "-m", "pacslb.cli", "stop", "--state-dir", str(state)]
        result = subprocess.run(stop, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        # at return, the control process and its workers have exited (the test reaps only)
        assert not alive(run.pid), "pacslb stop returned while the process still ran"
        assert not any(pid is not None and alive(pid) for pid in workers)
        assert run.wait(5) == 0


_WORKER_WITH_A_NOTICE = """
import sys
from pathlib import Path
from pacslb.proxy import notices
from pacslb.proxy.server import main
notices.notice("out of file descriptors", "Web", "Srv1")
main(Path(sys.argv[1]))
"""


def test_a_workers_notices_become_events(tmp_path: Path, backends: list[int]) -> None:
    """What a worker queues with notices.notice() (EMFILE, a budget reached...) is polled by
    the control process and recorded as an event of its service and server."""
    state = tmp_path / "state"
    state.mkdir()
    sock = state / "proxy-0.sock"
    worker = [sys.executable, "-c", _WORKER_WITH_A_NOTICE, str(sock)]
    with ExitStack() as stack:
        stack.enter_context(running(worker, log=tmp_path / "worker.log"))
        wait(lambda: pid_of(sock) is not None, 15, "the worker")
        port = free_port(VIP)
        write_config(tmp_path / "pacslb.yaml", port, backends, workers=1, spare=False)
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(tmp_path / "pacslb.yaml")]
        stack.enter_context(running([*argv, "--state-dir", str(state)], VIP, port))
        wait(lambda: has_event(state, "notice"), 10, "the notice as an event")
        notice = next(e for e in worker_events(state) if e["data"]["reason"] == "notice")
        assert (notice["service"], notice["server"]) == ("Web", "Srv1")
        assert "out of file descriptors" in notice["message"]
        assert has_event(state, "adopted")


def test_workers_beyond_the_setting_are_stopped(tmp_path: Path, backends: list[int]) -> None:
    """A restart with fewer workers (2 -> 1, after `stop --keep-data-plane`) stops the extra
    one, which would otherwise serve its old Plan on the same ports for ever, unwatched."""
    with ExitStack() as stack:
        _, state, port = start(stack, tmp_path, backends, workers=2, spare=False)
        reap(stack, state, 2)
        extra = pid_of(state / "proxy-1.sock")
        assert extra is not None
        stop = [sys.executable, "-m", "pacslb.cli", "stop", "--keep-data-plane"]
        subprocess.run([*stop, "--state-dir", str(state)], check=True, timeout=60)
        assert alive(extra)
        write_config(tmp_path / "pacslb.yaml", port, backends, workers=1, spare=False)
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(tmp_path / "pacslb.yaml")]
        stack.enter_context(running([*argv, "--state-dir", str(state)], log=tmp_path / "2.log"))
        wait(lambda: has_event(state, "stopped", "proxy-1"), 15, "a 'stopped' event")
        wait(lambda: not alive(extra), 10, "the extra worker to exit")
        assert has_event(state, "adopted") and get(port)


def test_a_spare_that_dies_is_replaced_and_still_takes_over(
    tmp_path: Path, backends: list[int]
) -> None:
    """The warm spare is a process too: killed, a new one is started, and the next crashed
    worker is still taken over by a spare (no interpreter start), as status shows."""
    with ExitStack() as stack:
        _, state, port = start(stack, tmp_path, backends, workers=1)
        reap(stack, state, 1)
        wait(lambda: status(state)["proxy"]["spare"] is not None, 15, "a spare worker")
        first = status(state)["proxy"]["spare"]
        stack.callback(lambda: alive(first) and os.kill(first, signal.SIGKILL))
        os.kill(first, signal.SIGKILL)
        wait(lambda: status(state)["proxy"]["spare"] not in (None, first), 20, "a new spare worker")
        second = status(state)["proxy"]["spare"]
        stack.callback(lambda: alive(second) and os.kill(second, signal.SIGKILL))
        victim = pid_of(state / "proxy-0.sock")
        assert victim is not None and get(port)
        os.kill(victim, signal.SIGKILL)
        wait(lambda: pid_of(state / "proxy-0.sock") == second, 10, "the new spare to take over")
        wait(lambda: has_event(state, "replaced"), 5, "a 'replaced' event")
        replaced = [e for e in worker_events(state) if e["data"].get("reason") == "replaced"]
        assert "the spare" in replaced[-1]["message"]
        assert all(get(port) for _ in range(10))
