"""`pacslb run` end to end: real HTTP peers, the control socket and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.peers.procs import free_port, http_peer, running, set_route, stop

HOST = "127.0.0.1"
INTERVAL, RISE, FALL = 0.5, 2, 2


def pacslb(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


def write_config(path: Path, ports: list[int], extra_service: str = "") -> None:
    servers = "\n".join(
        f"      - {{label: Srv{i}, address: {HOST}, port: {port}}}"
        for i, port in enumerate(ports, start=1)
    )
    path.write_text(
        f"""version: 1
node: {{webui: {{enabled: false}}}}  # these tests are about the data plane
virtual_services:
  - label: Web
    vip: 127.0.0.30
    ports: [8080]
    mode: l7-http
    health_check:
      type: http
      path: /wpp/srvpacs.asp
      expect: srvPACS OK
      interval: {INTERVAL}
      timeout: 0.4
      rise: {RISE}
      fall: {FALL}
    real_servers:
{servers}
{extra_service}"""
    )


class Run:
    """A `pacslb run` process and the CLI pointed at its state directory."""

    def __init__(self, config: Path, state: Path) -> None:
        self.config, self.state = config, state
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, stack: ExitStack) -> None:
        argv = [
            sys.executable,
            "-m",
            "pacslb.cli",
            "run",
            str(self.config),
            "--state-dir",
            str(self.state),
        ]
        self.proc = stack.enter_context(running(argv, log=self.state.parent / "run.log"))
        deadline = time.monotonic() + 15
        while not (self.state / "control.sock").exists():
            assert self.proc.poll() is None, (self.state.parent / "run.log").read_text()
            assert time.monotonic() < deadline, "control socket never appeared"
            time.sleep(0.05)

    def stop(self) -> None:
        assert self.proc is not None
        stop(self.proc)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pacslb(*args, "--state-dir", str(self.state), check=check)

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def server(self, label: str) -> dict[str, Any]:
        (svc,) = self.status()["services"]
        return next(rs for rs in svc["real_servers"] if rs["label"] == label)

    def wait_for(self, label: str, timeout: float, **fields: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rs = self.server(label)
            if all(rs[k] == v for k, v in fields.items()):
                return rs
            assert time.monotonic() < deadline, f"{label} never reached {fields}: {rs}"
            time.sleep(0.05)

    def events(self, kind: str) -> list[str]:
        return self.cli("events", "--kind", kind, "--limit", "500").stdout.splitlines()


@pytest.fixture
def web_peers() -> Iterator[list[int]]:
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        for port in ports:
            stack.enter_context(http_peer(HOST, port, "/wpp/srvpacs.asp=200:srvPACS OK"))
        yield ports


def test_failing_server_leaves_the_plan_and_returns(tmp_path: Path, web_peers: list[int]) -> None:
    config = tmp_path / "pacslb.yaml"
    write_config(config, web_peers)
    run = Run(config, tmp_path / "state")
    with ExitStack() as stack:
        run.start(stack)
        for label in ("Srv1", "Srv2"):
            run.wait_for(label, 5, health="up")

        broke = time.time()
        set_route(HOST, web_peers[1], "/wpp/srvpacs.asp", "500:srvPACS OK")
        rs = run.wait_for("Srv2", 10, health="down")
        assert rs["effective_weight"] == 0
        assert rs["last_check"]["reason"] == "http: expected 'srvPACS OK' in body, got status 500"
        assert run.server("Srv1")["effective_weight"] == 100

        down = [e for e in run.events("health") if "Web/Srv2" in e and "up -> down" in e]
        assert down and "got status 500" in down[-1]
        went_down = datetime.fromisoformat(down[-1].split()[0]).timestamp()
        # fall x interval, plus one interval of slack for where in its cycle the break landed
        assert went_down - broke <= FALL * INTERVAL + INTERVAL + 0.25

        healed = time.time()
        set_route(HOST, web_peers[1], "/wpp/srvpacs.asp", "200:srvPACS OK")
        run.wait_for("Srv2", 10, health="up")
        up = [e for e in run.events("health") if "Web/Srv2" in e and "down -> up" in e]
        came_up = datetime.fromisoformat(up[-1].split()[0]).timestamp()
        assert came_up - healed <= RISE * INTERVAL + INTERVAL + 0.25
        plans = run.events("plan")
        assert any("Srv2" in e and "effective_weight 100 -> 0" in e for e in plans)
        run.stop()


def test_admin_state_is_live_and_survives_a_restart(tmp_path: Path, web_peers: list[int]) -> None:
    config = tmp_path / "pacslb.yaml"
    write_config(config, web_peers)
    run = Run(config, tmp_path / "state")
    with ExitStack() as stack:
        run.start(stack)
        out = run.cli("drain", "Web", "Srv1").stdout
        assert out.strip() == "Web/Srv1: online -> drain"
        run.cli("halt", "Web", "Srv2")
        assert (
            run.server("Srv1")["admin"] == "drain" and run.server("Srv1")["effective_weight"] == 0
        )
        # drained and halted servers keep being checked
        run.wait_for("Srv1", 5, health="up")
        run.wait_for("Srv2", 5, health="up")
        run.stop()

    with ExitStack() as stack:
        run.start(stack)
        assert run.server("Srv1")["admin"] == "drain"
        assert run.server("Srv2")["admin"] == "halt"
        run.cli("online", "Web", "Srv1")
        rs = run.wait_for("Srv1", 5, admin="online", health="up")
        assert rs["effective_weight"] == 100
        text = run.cli("status").stdout
        assert "Srv1" in text and "online" in text and "http: status 200" in text
        admin_events = run.events("admin")
        assert any("online -> drain" in e for e in admin_events)
        assert any("drain -> online" in e for e in admin_events)

        wrong = run.cli("drain", "Web", "Srv9", check=False)
        assert wrong.returncode == 1
        assert "Web has no real server 'Srv9' (known: Srv1, Srv2)" in wrong.stderr
        wrong = run.cli("drain", "Radiology", "Srv1", check=False)
        assert "no virtual service 'Radiology' (known: Web)" in wrong.stderr
        run.stop()


def test_reload_applies_a_good_config_and_refuses_a_bad_one(
    tmp_path: Path, web_peers: list[int]
) -> None:
    config = tmp_path / "pacslb.yaml"
    write_config(config, web_peers[:1])
    run = Run(config, tmp_path / "state")
    with ExitStack() as stack:
        run.start(stack)
        run.wait_for("Srv1", 5, health="up")
        write_config(config, web_peers)
        assert run.cli("reload").stdout.strip() == "applied revision 2"
        run.wait_for("Srv2", 5, health="up")
        again = run.cli("reload").stdout.strip()
        assert again == "nothing changed: the file holds revision 2, the config in force"
        config.write_text(
            config.read_text().replace(
                "mode: l7-http", "mode: l4-dr\n    persistence: {type: http-cookie}"
            )
        )
        bad = run.cli("reload", check=False)
        assert bad.returncode == 1 and "http-cookie needs mode l7-http" in bad.stderr
        assert run.status()["revision"] == 2
        assert len(run.status()["services"][0]["real_servers"]) == 2
        run.stop()


def test_cli_without_a_running_process(tmp_path: Path) -> None:
    result = pacslb("status", "--state-dir", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "no pacslb answers at" in result.stderr


def test_run_refuses_an_invalid_config_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "version: 1\nvirtual_services:\n  - {label: X, vip: 1.2.3.4.5, ports: [80], mode: l7-tcp}\n"
    )
    result = pacslb("run", str(config), "--state-dir", str(tmp_path / "state"), check=False)
    assert result.returncode == 1
    assert "X › vip (line 3)" in result.stderr and "nothing was started" in result.stderr
    assert not (tmp_path / "state").exists()


def test_events_are_read_from_the_log_when_pacslb_is_stopped(tmp_path: Path) -> None:
    from pacslb.control.events import Event, EventLog

    EventLog(tmp_path / "events.jsonl").record(Event("health", "up -> down: refused", "Web", "S1"))
    result = pacslb("events", "--state-dir", str(tmp_path), check=False)
    assert result.returncode == 0, result.stderr
    assert "Web/S1: up -> down: refused" in result.stdout
