"""`pacslb demo` (what `make run` starts) as a user drives it: curl, echoscu, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.peers.procs import running

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the demo binds the guide's ports 80/443/4000/5000: run as root"
)


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_demo_serves_the_guide_and_answers_c_echo(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    argv = [sys.executable, "-m", "pacslb.cli", "demo", "--state-dir", str(state)]
    with running(argv, "127.0.0.31", 80, log=tmp_path / "demo.log"):
        deadline = time.monotonic() + 20
        while True:
            result = cli(state, "status", "--json")
            if result.returncode == 0:
                status = json.loads(result.stdout)
                servers = [rs for s in status["services"] for rs in s["real_servers"]]
                if status["ready"] and all(rs["health"] == "up" for rs in servers):
                    break
            assert time.monotonic() < deadline, result.stdout + result.stderr
            time.sleep(0.1)
        assert len(servers) == 10

        curl = shutil.which("curl")
        if curl:
            page = subprocess.run(
                [curl, "-s", "http://127.0.0.31/wpp/srvpacs.asp"], capture_output=True, timeout=10
            )
            assert page.stdout == b"srvPACS OK"
        echoscu = Path("/usr/bin/echoscu")
        if echoscu.exists():
            for port in ("4000", "5000"):
                echo = subprocess.run(
                    [str(echoscu), "-to", "5", "-ta", "5", "127.0.0.30", port],
                    capture_output=True,
                    timeout=20,
                    env={**os.environ, "TCP_NODELAY": "1"},
                )
                assert echo.returncode == 0, echo.stderr
