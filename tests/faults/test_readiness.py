"""Readiness is the truth (issue 15 items 3 and 4), with real `pacslb run` processes.

The kernel engine is made to fail without touching the host: an l4-dr real server on a
loopback address (127.10.10.x) is "an address of this host, not a real server", so the
engine refuses the Plan while gathering its facts, before any nftables transaction; `pacslb
doctor` names the same problem (dr-route). Its health check is `none`: nothing is sent to it.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacslb.control.auth import AuthStore
from pacslb.control.local import request
from pacslb.errors import PacslbError
from tests.peers.procs import free_port, http_peer, running, wait_port

HOST = "127.10.10.1"  # the WebUI and the real servers
PASSWORD = "readiness test admin"
CLI = [sys.executable, "-m", "pacslb.cli"]

# An l4-dr service this host cannot place: its real server is an address of this host.
UNPLACEABLE = """  - label: Dicom
    vip: 127.10.10.30
    ports: [4000]
    mode: l4-dr
    health_check: {{type: none}}
    real_servers:
      - {{label: DicomSrv1, address: 127.10.10.31}}
"""
# One more, so that "every problem" can be seen listed.
UNPLACEABLE_2 = """  - label: Cardio
    vip: 127.10.10.32
    ports: [104]
    mode: l4-dr
    health_check: {{type: none}}
    real_servers:
      - {{label: CardioSrv1, address: 127.10.10.33}}
"""
# An l7 service that works anywhere.
WORKING = """  - label: Web
    vip: 127.10.10.40
    ports: [{vip_port}]
    mode: l7-tcp
    health_check: {{type: connect, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
      - {{label: WebSrv1, address: {host}, port: {peer}}}
"""


def write_config(path: Path, web: int | None, *services: str, **values: Any) -> None:
    webui = f'{{listen: "{HOST}:{web}"}}' if web else "{enabled: false}"
    body = "".join(s.format(host=HOST, **values) for s in services)
    path.write_text(f"version: 1\nnode:\n  webui: {webui}\nvirtual_services:\n{body}")


def cli(state: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


def status(state: Path) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = request(state, {"cmd": "status"}, timeout=10)
    except (OSError, PacslbError):
        return {}
    return answer


def wait_started(proc: subprocess.Popen[bytes], state: Path, log: Path) -> dict[str, Any]:
    """Until start-up has finished (ready, or not ready for a reason other than starting)."""
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, log.read_text()
        now = status(state)
        if now and not any(r.startswith("starting") for r in now.get("not_ready", ["starting"])):
            return now
        assert time.monotonic() < deadline, f"start-up never finished: {now}\n{log.read_text()}"
        time.sleep(0.05)


def login(stack: ExitStack, state: Path, web: int) -> httpx.Client:
    trust = ssl.create_default_context(cafile=str(state / "webui-cert.pem"))
    client = stack.enter_context(
        httpx.Client(base_url=f"https://{HOST}:{web}", verify=trust, timeout=20)
    )
    r = client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200, r.text
    return client


@pytest.fixture
def peer() -> Iterator[int]:
    port = free_port(HOST)
    with http_peer(HOST, port, "/ok=200:OK"):
        yield port


def test_run_refuses_a_service_it_cannot_place_and_lists_every_problem(tmp_path: Path) -> None:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    write_config(config, None, UNPLACEABLE, UNPLACEABLE_2)
    try:
        done = subprocess.run(
            [*CLI, "run", str(config), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired as exc:  # before: it started (and was killed here)
        raise AssertionError(f"pacslb run started: {exc.stdout!r}") from None
    assert done.returncode != 0, done.stdout
    for words in ("Dicom/DicomSrv1 (127.10.10.31)", "Cardio/CardioSrv1 (127.10.10.33)"):
        assert words in done.stderr, done.stderr
    assert "2 problems" in done.stderr and "--degraded" in done.stderr, done.stderr
    assert not (state / "control.sock").exists()


def test_degraded_start_is_not_ready_with_the_engine_failure(tmp_path: Path, peer: int) -> None:
    config, state, log = tmp_path / "pacslb.yaml", tmp_path / "state", tmp_path / "run.log"
    web, vip_port = free_port(HOST), free_port("127.10.10.40")
    write_config(config, web, UNPLACEABLE, WORKING, vip_port=vip_port, peer=peer)
    AuthStore(state).set_password("admin", PASSWORD, "admin")  # type: ignore[arg-type]
    with ExitStack() as stack:
        argv = [*CLI, "run", str(config), "--state-dir", str(state), "--degraded"]
        proc = stack.enter_context(running(argv, log=log))
        now = wait_started(proc, state, log)
        assert now["ready"] is False, now
        (reason,) = now["not_ready"]
        assert reason.startswith("kernel: apply failed: ") and "127.10.10.31" in reason

        # The part of the config that can run does: the l7 service forwards.
        wait_port("127.10.10.40", vip_port, timeout=10)

        plain = cli(state, "status", check=True).stdout
        assert "NOT READY" in plain and "kernel: apply failed" in plain, plain
        as_json = json.loads(cli(state, "status", "--json", check=True).stdout)
        assert as_json["ready"] is False and as_json["not_ready"] == [reason]

        wait_port(HOST, web, timeout=10, proc=proc)
        client = login(stack, state, web)
        assert client.get("/api/v1/status").json()["not_ready"] == [reason]
        metrics = client.get("/metrics").text
        assert "\npacslb_ready 0.0\n" in metrics, metrics
        events = cli(state, "events", "--kind", "process", check=True).stdout
        assert "started degraded" in events and "Dicom/DicomSrv1" in events, events


def test_ready_when_every_engine_applied(tmp_path: Path, peer: int) -> None:
    config, state, log = tmp_path / "pacslb.yaml", tmp_path / "state", tmp_path / "run.log"
    web, vip_port = free_port(HOST), free_port("127.10.10.40")
    write_config(config, web, WORKING, vip_port=vip_port, peer=peer)
    AuthStore(state).set_password("admin", PASSWORD, "admin")  # type: ignore[arg-type]
    with ExitStack() as stack:
        argv = [*CLI, "run", str(config), "--state-dir", str(state)]
        proc = stack.enter_context(running(argv, log=log))
        now = wait_started(proc, state, log)
        assert now["ready"] is True and now["not_ready"] == [] and now["degraded"] == []
        wait_port(HOST, web, timeout=10, proc=proc)
        assert "\npacslb_ready 1.0\n" in login(stack, state, web).get("/metrics").text


BROKEN = """  - label: Web
    vip: 127.10.10.40
    ports: [{vip_port}]
    mode: l7-tcp
    schedular: wlc
    health_check: {{type: connect, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
      - {{label: WebSrv1, address: {host}, port: 99999}}
"""


def test_broken_file_at_start_runs_the_last_good_revision_loudly(tmp_path: Path, peer: int) -> None:
    config, state, log = tmp_path / "pacslb.yaml", tmp_path / "state", tmp_path / "run.log"
    vip_port = free_port("127.10.10.40")
    argv = [*CLI, "run", str(config), "--state-dir", str(state)]

    # No revision to fall back on (a first start): refused, as before.
    write_config(config, None, BROKEN, vip_port=vip_port)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert done.returncode == 1 and "nothing was started" in done.stderr, done.stderr

    write_config(config, None, WORKING, vip_port=vip_port, peer=peer)
    with running(argv, log=log) as proc:
        assert wait_started(proc, state, log)["revision"] == 1
    write_config(config, None, BROKEN, vip_port=vip_port)  # a hand edit gone wrong; a reboot

    with running(argv, log=log) as proc:
        now = wait_started(proc, state, log)
        assert now["revision"] == 1, now
        (degraded,) = now["degraded"]
        assert f"{config} has 2 problems" in degraded and "revision 1" in degraded, degraded
        wait_port("127.10.10.40", vip_port, timeout=10)  # the last good revision forwards
        with socket.create_connection(("127.10.10.40", vip_port), timeout=5) as conn:
            conn.sendall(b"GET /ok HTTP/1.0\r\n\r\n")
            assert b"200" in conn.recv(100)
        plain = cli(state, "status", check=True).stdout
        assert "DEGRADED" in plain and "revision 1" in plain, plain
        events = cli(state, "events", "--kind", "config", check=True).stdout
        assert "has 2 problems" in events and "schedular" in events, events
        checked = subprocess.run([*CLI, "check", str(config)], capture_output=True, timeout=30)
        assert checked.returncode == 1  # the file is still broken, and says so

        # The operator fixes the file and reloads: the flag goes.
        write_config(config, None, WORKING, vip_port=vip_port, peer=peer)
        assert cli(state, "reload").returncode == 0
        assert status(state)["degraded"] == []


@pytest.fixture
def lb_netns() -> Iterator[str]:
    """An empty host in a namespace (h10-*, root only): loopback and an interface d0 with no
    address yet, so that nothing in 198.18.10.0/24 can be reached from it."""
    from tests.netns.topology import require_root_and_nft

    require_root_and_nft()
    ns = f"h10-rdy{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "d0", "type", "veth", "peer", "name", "d1"],  # no dummy module
            ["link", "set", "d0", "up"],
            ["link", "set", "d1", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *cmd], check=True, timeout=10)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


def test_not_ready_ends_by_itself_once_the_host_is_fixed(tmp_path: Path, lb_netns: str) -> None:
    """The kernel engine's apply is retried while it fails: the operator gives the load
    balancer its interface on the real servers' segment and status turns ready."""
    config, state, log = tmp_path / "pacslb.yaml", tmp_path / "state", tmp_path / "run.log"
    config.write_text(
        """version: 1
node: {webui: {enabled: false}}
virtual_services:
  - label: Dicom
    vip: 198.18.10.100
    ports: [4000]
    mode: l4-dr
    health_check: {type: none}
    real_servers:
      - {label: DicomSrv1, address: 198.18.10.11}
"""
    )
    argv = ["ip", "netns", "exec", lb_netns, *CLI, "run", str(config), "--state-dir", str(state)]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert refused.returncode == 1 and "Dicom/DicomSrv1 (198.18.10.11)" in refused.stderr

    with running([*argv, "--degraded"], log=log) as proc:
        now = wait_started(proc, state, log)
        assert now["ready"] is False and "198.18.10.11" in now["not_ready"][0], now
        subprocess.run(
            ["ip", "-n", lb_netns, "addr", "add", "198.18.10.1/24", "dev", "d0"],
            check=True,
            timeout=10,
        )
        deadline = time.monotonic() + 20  # retried every 5 s
        while not status(state).get("ready"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"never ready: {status(state)}"
            time.sleep(0.1)
        assert status(state)["not_ready"] == []
        events = cli(state, "events", "--kind", "engine", check=True).stdout
        assert events.count("apply failed") == 1, events  # once, not at every retry
        assert "kernel: plan applied again" in events, events
