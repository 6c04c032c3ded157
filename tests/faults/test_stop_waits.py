"""`pacslb stop` waits for the very process it stopped, not for its pid: here the pid that
process reports names another process (it runs in its own pid namespace, where it is pid 1, as
in a container; a pid given to another process after an exit reads the same). Polling that pid,
stop waited 30 s for the host's init and failed; held by a pidfd, it returns once pacslb exits.

Real `pacslb run` (in `unshare --pid --fork`, root only) with real HTTP backends on
127.10.19.0/24.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.test_stuck_worker import HOST, write_config  # noqa: F401 (HOST: conftest)
from tests.peers.procs import free_port, running

VIP = "127.10.19.1"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)


def test_stop_waits_for_the_process_not_its_pid(tmp_path: Path, backends: list[int]) -> None:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    port = free_port(VIP)
    write_config(config, port, backends)
    pacslb = [sys.executable, "-m", "pacslb.cli"]
    argv = ["unshare", "--pid", "--fork", *pacslb, "run", str(config), "--state-dir", str(state)]
    with running(argv, VIP, port, log=tmp_path / "run.log") as run:
        stop = subprocess.run(
            [*pacslb, "stop", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        run.wait(10)  # unshare exits with its child, pacslb
