"""pacslb.service's ExecStopPost (`pacslb stop-data-plane`), run as systemd runs it once the
control process is gone, on an HA pair in network namespaces (real keepalived, real proxy
workers of an l7-http service):

- the control process SIGKILLed as systemd does at TimeoutStopSec (SERVICE_RESULT=timeout,
  no stop intent recorded): keepalived and the workers are stopped (a hung one, SIGSTOPped,
  is SIGKILLed) and the peer holds every floating address;
- after `pacslb stop --keep-data-plane` (SERVICE_RESULT=success): both are kept, the marker is
  consumed, and the next ExecStopPost (no marker) stops them;
- a control process that died unasked (SERVICE_RESULT=signal): kept for the restart to adopt.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacslb.core.stop_intent import keeps_data_plane
from tests.netns.conftest import PACSLB
from tests.netns.ha_pair import Node, Pair, restart, running_pair
from tests.package.test_unit_capabilities import sandbox

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "deb" / "pacslb.service"


def exec_stop_post(node: Node, service_result: str) -> str:
    """The unit's ExecStopPost line, with this node's state dir, in its namespace, under the
    unit's capability bounding set and no_new_privs (as systemd runs it), with the
    SERVICE_RESULT systemd would give it."""
    line = next(ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStopPost="))
    argv = line.split("=", 1)[1].split()
    assert argv[0] == "/usr/bin/pacslb" and "/var/lib/pacslb" in argv
    argv = [*PACSLB, *(str(node.run.state_dir) if a == "/var/lib/pacslb" else a for a in argv[1:])]
    done = subprocess.run(
        ["ip", "netns", "exec", node.host.ns, *sandbox(), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SERVICE_RESULT": service_result},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def worker_pids(node: Node) -> list[int]:
    """The serving workers' pids (not the spare's, which serves nothing and which a stop with
    --keep-data-plane stops)."""
    pids = []
    for path in sorted(node.run.state_dir.glob("proxy-*.sock")):
        if path.name == "proxy-spare.sock":
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            sock.sendall(b'{"cmd": "ping"}\n')
            pids.append(int(json.loads(sock.makefile("rb").readline())["result"]["pid"]))
    return pids


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_control(node: Node) -> None:
    assert node.run.proc is not None
    node.run.proc.kill()  # SIGKILL of the main process only: KillMode=process
    node.run.proc.wait(10)


def wait_holder(pair: Pair, node: Node, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not (pair.holders() == [node.name] and pair.holds_all(node)):
        assert time.monotonic() < deadline, f"{node.name} does not hold the addresses alone"
        time.sleep(0.1)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces (CI runs as root)")
    try:
        with running_pair("two-arm", tmp_path) as made:
            yield made
    finally:
        stop_strays(tmp_path)


def processes_naming(path: Path, program: str) -> list[int]:
    """Pids of `program` processes whose command line names `path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if Path(argv[0].decode()).name == program and str(path).encode() in b" ".join(argv):
                    found.append(int(entry.name))
    return found


def stop_strays(tmp_path: Path) -> None:
    """Kill, by pid, any process of this test still running: one whose command line names the
    test's own directory (a worker a test left serving on purpose, whatever became of it)."""
    mark = str(tmp_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if mark in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def test_exec_stop_post_ends_keepalived_and_workers_of_a_killed_control_process(
    pair: Pair,
) -> None:
    active = pair.wait_one_active()
    survivor = pair.other(active)
    keepalived, workers = active.keepalived_pids(), worker_pids(active)
    assert keepalived and workers
    conntrackd = processes_naming(active.run.state_dir / "conntrackd", "conntrackd")
    assert conntrackd  # two-arm: an l4-nat service, so conntrackd syncs it
    kill_control(active)
    # KillMode=process: without ExecStopPost both go on, and the node keeps the addresses.
    time.sleep(3)  # three adverts: the peer would have taken over by now had keepalived gone
    assert all(alive(p) for p in keepalived + workers)
    # conntrackd forwards nothing: it ended with its parent, freeing its port for the next one.
    assert not any(alive(p) for p in conntrackd)
    assert pair.holders() == [active.name]

    os.kill(workers[0], signal.SIGSTOP)  # a hung worker, too: it answers nothing now
    out = exec_stop_post(active, "timeout")
    print(out)
    assert "data plane stopped" in out
    assert f"killed (it did not stop in 10 s) proxy worker {workers[0]}" in out, out
    assert not any(alive(p) for p in keepalived + workers), out
    assert not list(active.run.state_dir.glob("proxy-*.sock")) or worker_pids_gone(active)
    wait_holder(pair, survivor)  # the priority-0 advert: the peer took every address


def worker_pids_gone(node: Node) -> bool:
    """Socket files may stay behind; nobody answers on them."""
    try:
        return not worker_pids(node)
    except OSError:
        return True


def test_exec_stop_post_keeps_the_data_plane_after_keep_data_plane_once(pair: Pair) -> None:
    active = pair.wait_one_active()
    survivor = pair.other(active)
    keepalived, workers = active.keepalived_pids(), worker_pids(active)
    active.run.cli("stop", "--keep-data-plane")
    assert active.run.proc is not None and active.run.proc.wait(30) == 0
    assert (active.run.state_dir / "stop-intent").read_text() == "keep"

    out = exec_stop_post(active, "success")
    assert "data plane kept" in out, out
    assert not (active.run.state_dir / "stop-intent").exists()  # consumed
    assert [p for p in keepalived + workers if not alive(p)] == [], (keepalived, workers)
    assert worker_pids(active) == workers
    assert pair.holders() == [active.name] and pair.holds_all(active)

    # The marker was for one stop: the next ExecStopPost, with none, stops them.
    out = exec_stop_post(active, "timeout")
    assert "data plane stopped" in out, out
    assert not any(alive(p) for p in keepalived + workers), out
    wait_holder(pair, survivor)


def test_exec_stop_post_keeps_the_data_plane_of_a_crash_for_the_restart(pair: Pair) -> None:
    active = pair.wait_one_active()
    keepalived, workers = active.keepalived_pids(), worker_pids(active)
    kill_control(active)  # died unasked: no stop intent
    out = exec_stop_post(active, "signal")
    assert "data plane kept" in out, out
    assert all(alive(p) for p in keepalived + workers)
    restart(active)  # Restart=on-failure: the new control process adopts both
    assert pair.wait_one_active() is active
    assert active.keepalived_pids() == keepalived
    assert worker_pids(active) == workers


def test_a_plain_stop_intent_wins_over_a_crash_result() -> None:
    """SIGTERM recorded "stop", then the process died of a signal while stopping (an operator's
    kill -9 of a hung stop): the data plane goes."""
    assert keeps_data_plane("stop", "signal")[0] is False
    assert keeps_data_plane("keep", "timeout")[0] is True
    assert keeps_data_plane(None, "timeout")[0] is False
    assert keeps_data_plane(None, "exit-code")[0] is False
    assert keeps_data_plane(None, "core-dump")[0] is True
    # An older pacslb's `stop --keep-data-plane` (the first upgrade onto this one) writes no
    # intent and exits 0: what it kept must stay for the new version's start.
    assert keeps_data_plane(None, "success")[0] is True
