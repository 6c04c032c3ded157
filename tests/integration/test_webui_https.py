"""`pacslb run` serves the WebUI and REST API over HTTPS with its generated certificate.

A real process on loopback with a real HTTP real server: the first-start password is printed
once (never logged as an event), the certificate verifies for the listen address, changes made
over the API survive a restart, and the process still obeys SIGHUP and SIGTERM (uvicorn must not
have taken the signal handlers)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.peers.procs import free_port, http_peer, running, wait_port

WEB_HOST = "127.0.0.7"


def write_config(path: Path, web_port: int, vip_port: int, rip_port: int) -> None:
    path.write_text(
        f"""version: 1
node:
  webui: {{listen: "{WEB_HOST}:{web_port}", metrics_allow: [127.0.0.1/32]}}
virtual_services:
  - label: Web
    vip: 127.0.0.30
    ports: [{vip_port}]
    mode: l7-http
    health_check: {{type: http, path: /ok, expect: OK, interval: 0.5, timeout: 0.4}}
    real_servers:
      - {{label: Srv1, address: 127.0.0.1, port: {rip_port}}}
"""
    )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    rip = free_port()
    with http_peer("127.0.0.1", rip, "/ok=200:OK"):
        config = tmp_path / "pacslb.yaml"
        web = free_port(WEB_HOST)
        write_config(config, web, free_port("127.0.0.30"), rip)
        yield config, tmp_path / "state", web


def trust(state: Path) -> ssl.SSLContext:
    """Verify the server against the certificate pacslb generated (hostname = the IP)."""
    return ssl.create_default_context(cafile=str(state / "webui-cert.pem"))


def test_https_api_password_restart_and_signals(
    setup: tuple[Path, Path, int], tmp_path: Path
) -> None:
    config, state, web = setup
    log = tmp_path / "run.log"
    base = f"https://{WEB_HOST}:{web}"
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with running(argv, WEB_HOST, web, log=log) as proc:
        deadline = time.monotonic() + 10
        while not (found := re.search(r"password (\S+)\n", log.read_text())):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        password = found[1]
        events = (state / "events.jsonl").read_text()
        assert password not in events and "a password for user admin was generated" in events
        assert password not in (state / "webui-users.json").read_text()

        cert = state / "webui-cert.pem"
        with httpx.Client(base_url=base, verify=trust(state), timeout=10) as client:
            assert client.get("/api/v1/status").status_code == 401
            r = client.post("/api/v1/session", json={"username": "admin", "password": password})
            assert r.status_code == 200
            h = {"X-CSRF-Token": r.json()["csrf_token"]}
            deadline = time.monotonic() + 10
            while (
                client.get("/api/v1/status").json()["services"][0]["real_servers"][0]["health"]
                != "up"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            r = client.post("/api/v1/virtual_services/Web/real_servers/Srv1/drain", headers=h)
            assert r.json()["state"] == "drain"
            service = {
                "label": "Viewer",
                "vip": "127.0.0.31",
                "ports": [free_port("127.0.0.31")],
                "mode": "l7-tcp",
                "health_check": {"type": "none"},
            }
            assert client.post("/api/v1/virtual_services", json=service, headers=h).is_success
            token = client.post("/api/v1/tokens", json={"name": "prometheus"}, headers=h).json()[
                "token"
            ]
        # /metrics: anonymous from the allowed network (we connect from 127.0.0.1).
        with httpx.Client(base_url=base, verify=trust(state), timeout=10) as anonymous:
            text = anonymous.get("/metrics").text
            assert (
                'pacslb_real_server_admin_state{server="Srv1",service="Web",state="drain"} 1.0'
                in text
            )
            assert 'pacslb_proxy_worker_restarts_total{reason="crashed"} 0.0' in text
            assert re.search(r"^pacslb_proxy_workers_up [12]\.0$", text, re.M)
            assert anonymous.get("/api/v1/status").status_code == 401
        curl = shutil.which("curl")
        if curl:  # the same with curl, as the README shows it
            out = subprocess.run(
                [
                    curl,
                    "-sS",
                    "--cacert",
                    str(cert),
                    "-H",
                    f"Authorization: Bearer {token}",
                    f"{base}/api/v1/virtual_services/Viewer",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            assert json.loads(out.stdout)["vip"] == "127.0.0.31"

        proc.send_signal(signal.SIGHUP)  # still ours: reload re-reads the file the API wrote
        deadline = time.monotonic() + 10
        while "reload" not in (state / "events.jsonl").read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "pacslb stopped" in (state / "events.jsonl").read_text()

    # A restart keeps the API's change, prints no new password, and the same one works.
    again = tmp_path / "again.log"
    with running(argv, WEB_HOST, web, log=again):
        wait_port(WEB_HOST, web)
        assert "first login" not in again.read_text()
        with httpx.Client(base_url=base, verify=trust(state), timeout=10) as c:
            r = c.post("/api/v1/session", json={"username": "admin", "password": password})
            assert r.status_code == 200
            labels = [vs["label"] for vs in c.get("/api/v1/virtual_services").json()]
            assert labels == ["Web", "Viewer"]
            rs = c.get("/api/v1/status").json()["services"][0]["real_servers"][0]
            assert rs["admin"] == "drain"  # admin state survives restarts too


def test_webui_port_in_use_leaves_the_load_balancer_running(
    setup: tuple[Path, Path, int], tmp_path: Path
) -> None:
    import socket

    config, state, web = setup
    with socket.socket() as squatter:
        squatter.bind((WEB_HOST, web))
        squatter.listen()
        log = tmp_path / "run.log"
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
        with running(argv, log=log) as proc:
            deadline = time.monotonic() + 15
            while "WebUI not started" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            assert proc.poll() is None
