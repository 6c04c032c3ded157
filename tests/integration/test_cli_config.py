"""`pacslb config rollback|save` against a running `pacslb run`: the change is applied by it.

Before, the CLI wrote the revision into the state directory behind the running process's back:
it printed the new revision and exited 0, and nothing that ran changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.peers.procs import running

HOST = "127.10.12.1"  # this change's loopback block (tests only)
VIP = "127.10.12.30"


def config_text(scheduler: str) -> str:
    rows = "\n".join(
        f"      - {{label: Srv{i}, address: {HOST}, port: {21000 + i}}}" for i in (1, 2)
    )
    return f"""version: 1
node: {{webui: {{enabled: false}}}}
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [21080]
    mode: l7-http
    scheduler: {scheduler}
    health_check: {{type: connect, interval: 1, timeout: 0.5}}
    real_servers:
{rows}
"""


def pacslb(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def status(state: Path) -> dict[str, Any]:
    result = pacslb(state, "status", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def scheduler(state: Path) -> str:
    (svc,) = status(state)["services"]
    return str(svc["scheduler"])


def test_rollback_and_save_go_through_the_running_pacslb(tmp_path: Path) -> None:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    one, two = config_text("wlc"), config_text("rr")
    config.write_text(one)
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with ExitStack() as stack:
        proc = stack.enter_context(running(argv, log=tmp_path / "run.log"))
        deadline = time.monotonic() + 15
        while not (state / "control.sock").exists():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "control socket never appeared"
            time.sleep(0.05)
        config.write_text(two)
        assert pacslb(state, "reload").stdout.strip() == "applied revision 2"
        assert scheduler(state) == "rr"

        back = pacslb(state, "config", "rollback", "1")
        assert back.returncode == 0, back.stderr
        assert back.stdout.strip() == (
            "revision 3: rollback to revision 1, applied by the running pacslb"
        )
        assert status(state)["revision"] == 3
        assert scheduler(state) == "wlc"
        assert config.read_text() == one  # a restart keeps it
        again = pacslb(state, "config", "rollback", "1")
        assert again.stdout.strip() == (
            "nothing changed: revision 3, the config in force, is the same"
        )

        other = tmp_path / "other.yaml"
        other.write_text(config_text("lc"))
        saved = pacslb(state, "config", "save", "--file", str(other), "--comment", "lc")
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.strip() == "revision 4: lc, applied by the running pacslb"
        assert scheduler(state) == "lc"
        assert config.read_text() == other.read_text()

        other.write_text(config_text("fastest"))
        bad = pacslb(state, "config", "save", "--file", str(other))
        assert bad.returncode == 1 and "scheduler" in bad.stderr
        missing = pacslb(state, "config", "rollback", "9")
        assert missing.returncode == 1
        assert "config revision 9 does not exist" in missing.stderr
        assert status(state)["revision"] == 4
        assert scheduler(state) == "lc"
        stack.close()  # pacslb stops

    stopped = pacslb(state, "config", "rollback", "1")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == (
        f"revision 5: rollback to revision 1 (recorded; no pacslb runs on {state})"
    )
    assert config.read_text() == config_text("lc")  # the file is not touched
