"""`pacslb run` inside the LB's namespace, driven through its control socket like an operator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns.topology import ROOT, Host
from tests.peers.procs import wait_until

PACSLB = [sys.executable, "-m", "pacslb.cli"]


class Pacslb:
    def __init__(self, lb: Host, state_dir: Path, config: dict[str, Any]) -> None:
        self.lb = lb
        self.state_dir = state_dir
        self.config_path = state_dir / "pacslb.yaml"
        self.write(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, config: dict[str, Any]) -> None:
        """Write the config file (then `cli("reload")` applies it, as an operator would)."""
        node = config.setdefault("node", {})
        node["state_dir"] = str(self.state_dir)
        node.setdefault("webui", {"enabled": False})  # the data plane is what these test
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> None:
        log = open(self.state_dir / "run.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = self.lb.popen(
            [*PACSLB, "run", str(self.config_path), "--state-dir", str(self.state_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pacslb run exited: {self.log()}")
            try:
                if self.status()["ready"]:
                    return
            except (RuntimeError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"pacslb run not ready: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def log(self) -> str:
        return (self.state_dir / "run.log").read_text(errors="replace")[-3000:]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*PACSLB, *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pacslb {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "--json")))

    def server(self, service: str, server: str) -> dict[str, Any]:
        for svc in self.status()["services"]:
            if svc["label"] == service:
                for rs in svc["real_servers"]:
                    if rs["label"] == server:
                        return dict(rs)
        raise KeyError((service, server))

    def connections(self, service: str, server: str, kind: str = "active") -> int:
        """The engine's count for a server; 0 before its first reading."""
        counts = self.server(service, server)["connections"]
        return int(counts[kind]) if counts else 0

    def wait_for(self, what: str, ok: Callable[[], bool], timeout: float = 10.0) -> None:
        try:
            wait_until(ok, timeout, what, step=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log: {self.log()}") from None


@pytest.fixture
def pacslb_in(tmp_path: Path) -> Iterator[Callable[[Host, dict[str, Any]], Pacslb]]:
    started: list[Pacslb] = []

    def start(lb: Host, config: dict[str, Any]) -> Pacslb:
        run = Pacslb(lb, tmp_path, config)
        run.start()
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()
