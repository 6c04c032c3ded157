"""The control process's supervision of its proxy workers, under faults that a plain crash or
hang test does not reach: a stale pid file, a reply that arrives after its worker died, a slow
replacement, a Plan that keeps a worker's loop busy, a worker of the previous version.

Each test drives a real `pacslb run` with real HTTP backends on 127.10.13.0/24. Where a fault
needs a worker that misbehaves in one precise way, the worker is the real `pacslb proxy` started
from a short script that changes that one behaviour (as the notice test in test_workers.py does).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pacslb.control.local import NotRunning
from tests.faults import web_service
from tests.faults.test_workers import alive, has_event, pid_of, status, wait, worker_events
from tests.peers.procs import free_port, running

HOST = "127.10.13.10"  # the real servers
VIP = "127.10.13.1"


def write_config(path: Path, port: int, backends: list[int], workers: int) -> None:
    web_service.write_config(path, VIP, port, HOST, backends, workers, False)


def run_argv(tmp_path: Path) -> list[str]:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    return [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]


def reap_later(stack: ExitStack, pids: list[int | None]) -> None:
    """SIGKILL, by PID, each of these workers still alive when the test ends."""

    def kill() -> None:
        for pid in pids:
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)

    stack.callback(kill)


def start_run(
    stack: ExitStack, tmp_path: Path, backends: list[int], workers: int, log: str = "run.log"
) -> tuple[Any, Path, int]:
    port = free_port(VIP)
    write_config(tmp_path / "pacslb.yaml", port, backends, workers)
    run = stack.enter_context(running(run_argv(tmp_path), VIP, port, log=tmp_path / log))
    state = tmp_path / "state"
    wait(lambda: pid_of(state / f"proxy-{workers - 1}.sock") is not None, 15, "the workers")
    return run, state, port


def events_of(state: Path, reason: str, worker: str) -> list[dict[str, Any]]:
    try:
        events = worker_events(state)
    except NotRunning:
        return []
    return [e for e in events if e["data"]["reason"] == reason and e["data"]["worker"] == worker]


def test_a_worker_found_stuck_at_start_counts_as_a_restart(
    tmp_path: Path, backends: list[int]
) -> None:
    """A worker found alive but not answering when `pacslb run` starts is killed and replaced:
    that is one restart of that worker in its status, as the watchdog's replacements are."""
    with ExitStack() as stack:
        run, state, _ = start_run(stack, tmp_path, backends, workers=1)
        stuck = pid_of(state / "proxy-0.sock")
        reap_later(stack, [stuck])
        assert stuck is not None
        os.kill(run.pid, signal.SIGKILL)  # the control process dies, its worker serves on...
        run.wait(5)
        os.kill(stuck, signal.SIGSTOP)  # ...then hangs
        stack.enter_context(running(run_argv(tmp_path), log=tmp_path / "run2.log"))
        wait(lambda: bool(events_of(state, "hung", "proxy-0")), 20, "the stuck worker's event")
        wait(lambda: not alive(stuck), 10, "the stuck worker to be killed")
        wait(lambda: pid_of(state / "proxy-0.sock") not in (None, stuck), 15, "a new worker")
        reap_later(stack, [pid_of(state / "proxy-0.sock")])
        wait(lambda: bool(status(state)["proxy"]["workers"]), 10, "the workers in status")
        worker = status(state)["proxy"]["workers"][0]
        assert worker["restarts"] == 1, worker
        assert status(state)["proxy"]["restarts"]["hung"] == 1


def test_a_stale_pid_file_does_not_get_a_healthy_worker_killed(
    tmp_path: Path, backends: list[int]
) -> None:
    """The worker killed as stuck is the process that listens on the stuck socket, whatever a
    pid file left in the state directory says (here: the pid of the other, healthy worker)."""
    with ExitStack() as stack:
        run, state, _ = start_run(stack, tmp_path, backends, workers=2)
        stuck, healthy = pid_of(state / "proxy-0.sock"), pid_of(state / "proxy-1.sock")
        reap_later(stack, [stuck, healthy])
        assert stuck is not None and healthy is not None
        os.kill(run.pid, signal.SIGKILL)
        run.wait(5)
        os.kill(stuck, signal.SIGSTOP)
        (state / "proxy-0.pid").write_text(f"{healthy}\n")  # stale: it names the other worker
        stack.enter_context(running(run_argv(tmp_path), log=tmp_path / "run2.log"))
        wait(lambda: bool(events_of(state, "hung", "proxy-0")), 20, "the stuck worker's event")
        wait(lambda: not alive(stuck), 10, "the stuck worker to be killed")
        wait(lambda: bool(events_of(state, "adopted", "proxy-1")), 10, "proxy-1 adopted")
        assert alive(healthy), "the healthy worker was killed"
        assert pid_of(state / "proxy-1.sock") == healthy
        assert events_of(state, "hung", "proxy-0")[-1]["data"]["pid"] == stuck
        assert not events_of(state, "crashed", "proxy-1")


# A real worker whose counters read 1000 requests, and which, on its third counters read,
# forks: the parent (the worker the control process knows) dies at once, the child sends the
# answer 0.7 s later. The answer of a dead worker then arrives after its replacement began.
_WORKER_ANSWERING_AFTER_DEATH = """
import json, os, sys, time
from pathlib import Path
from pacslb.proxy import server

STATS = {"active": 0, "total": 1000, "bytes_in": 0, "bytes_out": 0, "connect_failures": 0,
         "requests": 1000, "responses": {"2xx": 1000}}
COUNTERS = {"Web": {"Srv1": STATS}}
server.ProxyProcess.counters = lambda self: COUNTERS
reads = 0
handle = server.ProxyControl.handle

async def late_handle(self, request):
    global reads
    if request.get("cmd") not in ("counters", "report"):
        return await handle(self, request)
    reads += 1
    answer = await handle(self, request)
    if reads < 3:
        return answer
    writer = self.current_writer
    if os.fork() == 0:
        time.sleep(0.7)
        os.write(writer.get_extra_info("socket").fileno(), json.dumps(answer).encode() + b"\\n")
        os._exit(0)
    os._exit(1)

client = server.ProxyControl._client

async def remembering_client(self, reader, writer):
    self.current_writer = writer
    await client(self, reader, writer)

server.ProxyControl.handle = late_handle
server.ProxyControl._client = remembering_client
server.main(Path(sys.argv[1]))
"""


def web_total(state: Path) -> int:
    try:
        services = status(state)["services"]
    except NotRunning:
        return 0
    svc = next(s for s in services if s["label"] == "Web")
    return sum((rs["connections"] or {}).get("total", 0) for rs in svc["real_servers"])


def test_a_dead_workers_late_answer_is_not_counted_twice(
    tmp_path: Path, backends: list[int]
) -> None:
    """Counters a worker reported are kept once when it dies (retired); an answer of that dead
    worker read after its replacement began is dropped, or the totals would go up, then down
    (a counter reset to Prometheus)."""
    state = tmp_path / "state"
    state.mkdir()
    sock = state / "proxy-0.sock"
    worker = [sys.executable, "-c", _WORKER_ANSWERING_AFTER_DEATH, str(sock)]
    with ExitStack() as stack:
        stack.enter_context(running(worker, log=tmp_path / "worker.log"))
        wait(lambda: pid_of(sock) is not None, 15, "the worker")
        first = pid_of(sock)
        port = free_port(VIP)
        write_config(tmp_path / "pacslb.yaml", port, backends, workers=1)
        stack.enter_context(running(run_argv(tmp_path), VIP, port, log=tmp_path / "run.log"))
        wait(lambda: bool(events_of(state, "crashed", "proxy-0")), 15, "the worker's death")
        seen = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            seen.append(web_total(state))
            time.sleep(0.02)
        reap_later(stack, [pid_of(sock)])
        assert first is not None and not alive(first)
        assert max(seen) == 1000 and seen[-1] == 1000, sorted(set(seen))


# Makes every `pacslb proxy` started while FLAG exists take 8 s before it answers (a host
# short of memory or CPU), through a sitecustomize on PYTHONPATH.
_SLOW_START = """
import os, sys, time
if sys.argv[1:2] == ["proxy"] and os.path.exists(os.environ["H13_SLOW_START_FLAG"]):
    time.sleep(8)
"""


def test_a_slow_replacement_does_not_stop_the_watchdog(tmp_path: Path, backends: list[int]) -> None:
    """While one worker's replacement is starting (slowly), the other workers are still pinged:
    the second worker that hangs then is killed before the first's replacement is done."""
    site, flag = tmp_path / "site", tmp_path / "slow"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_START)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "H13_SLOW_START_FLAG": str(flag)}
    with ExitStack() as stack:
        port = free_port(VIP)
        write_config(tmp_path / "pacslb.yaml", port, backends, workers=2)
        argv = run_argv(tmp_path)
        stack.enter_context(running(argv, VIP, port, env=env, log=tmp_path / "run.log"))
        state = tmp_path / "state"
        wait(lambda: pid_of(state / "proxy-1.sock") is not None, 15, "the workers")
        first, second = pid_of(state / "proxy-0.sock"), pid_of(state / "proxy-1.sock")
        assert first is not None and second is not None
        reap_later(stack, [first, second])
        # Health settled first: a worker stopped while a Plan is being applied to it is not
        # counted as missing pings until that apply times out (10 s), which is another case.
        wait(
            lambda: all(
                rs["health"] == "up" for s in status(state)["services"] for rs in s["real_servers"]
            ),
            15,
            "both servers up",
        )
        flag.touch()  # from now on, a worker takes 8 s to start
        os.kill(first, signal.SIGSTOP)
        wait(lambda: bool(events_of(state, "hung", "proxy-0")), 15, "proxy-0 found hung")
        os.kill(second, signal.SIGSTOP)
        wait(lambda: not alive(second), 15, "proxy-1 killed as hung")
        assert not events_of(state, "replaced", "proxy-0"), "proxy-1 was seen only afterwards"
        flag.unlink()


# A real worker whose every Plan takes 6 s to apply on its event loop (a Plan of thousands of
# services with their certificates): it cannot answer pings meanwhile.
_WORKER_WITH_A_SLOW_PLAN = """
import sys, time
from pathlib import Path
from pacslb.proxy import server

apply = server.ProxyProcess.apply

async def slow_apply(self, plan):
    time.sleep(6)
    await apply(self, plan)

server.ProxyProcess.apply = slow_apply
server.main(Path(sys.argv[1]))
"""


def test_a_worker_applying_a_large_plan_is_not_killed_as_hung(
    tmp_path: Path, backends: list[int]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sock = state / "proxy-0.sock"
    worker = [sys.executable, "-c", _WORKER_WITH_A_SLOW_PLAN, str(sock)]
    with ExitStack() as stack:
        stack.enter_context(running(worker, log=tmp_path / "worker.log"))
        wait(lambda: pid_of(sock) is not None, 15, "the worker")
        busy = pid_of(sock)
        port = free_port(VIP)
        write_config(tmp_path / "pacslb.yaml", port, backends, workers=1)
        stack.enter_context(running(run_argv(tmp_path), VIP, port, log=tmp_path / "run.log"))
        reap_later(stack, [busy])
        assert busy is not None and alive(busy)
        # One ping may miss while the worker's loop is still busy (the slow Plan blocks it):
        # what matters is that the worker answering is the one that was busy, not a new one.
        wait(lambda: pid_of(sock) is not None, 15, "the worker to answer")
        assert pid_of(sock) == busy
        assert events_of(state, "adopted", "proxy-0")
        assert not events_of(state, "hung", "proxy-0")


def ask(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        answer: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return answer


def test_a_worker_reports_counters_and_notices_in_one_answer(tmp_path: Path) -> None:
    sock = tmp_path / "proxy-0.sock"
    worker = [sys.executable, "-m", "pacslb.cli", "proxy", "--socket", str(sock)]
    with running(worker, log=tmp_path / "worker.log"):
        wait(lambda: pid_of(sock) is not None, 15, "the worker")
        answer = ask(sock, {"cmd": "report"})
    assert answer["ok"], answer
    assert answer["result"] == {"counters": {}, "notices": []}


# A worker of the previous version: it knows `counters` and `notices`, not `report`.
_WORKER_OF_THE_PREVIOUS_VERSION = """
import sys
from pathlib import Path
from pacslb.proxy import notices, server

handle = server.ProxyControl.handle

async def old_handle(self, request):
    if request.get("cmd") == "report":
        return {"ok": False, "error": "unknown command 'report'"}
    return await handle(self, request)

server.ProxyControl.handle = old_handle
notices.notice("out of file descriptors", "Web", "Srv1")
server.main(Path(sys.argv[1]))
"""


def test_a_worker_of_the_previous_version_is_still_read(
    tmp_path: Path, backends: list[int]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sock = state / "proxy-0.sock"
    worker = [sys.executable, "-c", _WORKER_OF_THE_PREVIOUS_VERSION, str(sock)]
    with ExitStack() as stack:
        stack.enter_context(running(worker, log=tmp_path / "worker.log"))
        wait(lambda: pid_of(sock) is not None, 15, "the worker")
        port = free_port(VIP)
        write_config(tmp_path / "pacslb.yaml", port, backends, workers=1)
        stack.enter_context(running(run_argv(tmp_path), VIP, port, log=tmp_path / "run.log"))
        wait(lambda: has_event(state, "notice"), 10, "the notice as an event")
        with socket.create_connection((VIP, port), timeout=5) as client:
            client.sendall(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            while client.recv(65536):
                pass
        wait(lambda: web_total(state) >= 1, 10, "the request counted")
