"""`pacslb demo --fail SERVER` and the API's demo control, as a user drives them: the demo
server fails its check for real, its health turns down, traffic moves; and it recovers.

The whole demo runs in 127.10.6.0/24 (`--net`): VIPs .30-.50, real servers .1-.10, the WebUI on
.200. It binds the guide's ports, so it needs root (CI is root)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.peers.procs import running

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the demo binds the guide's ports 80/443/4000/5000: run as root"
)
NET, WEB = "127.10.6", ("127.10.6.200", 26443)
CLI = [sys.executable, "-m", "pacslb.cli"]
BOUND = 2 * 2 + 1  # the demo's checks: fall (2) x interval (2 s) + 1 s


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def health(state: Path) -> dict[str, str]:
    done = cli(state, "status", "--json")
    assert done.returncode == 0, done.stderr
    return {
        rs["label"]: rs["health"]
        for svc in json.loads(done.stdout)["services"]
        for rs in svc["real_servers"]
    }


def until(what: str, ok: Callable[[], bool], timeout: float) -> float:
    """Seconds until ok() held (polled every 0.1 s); fails naming `what` after `timeout`."""
    started = time.monotonic()
    while not ok():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def served_by(path: str = "/whoami") -> str:
    with urllib.request.urlopen(f"http://{NET}.31{path}", timeout=5) as r:
        return str(r.headers["X-Served-By"])


def echo(port: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["/usr/bin/echoscu", "-to", "5", "-ta", "5", f"{NET}.30", str(port)],
        capture_output=True,
        timeout=20,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "demo"
    argv = [*CLI, "demo", "--state-dir", str(state), "--net", NET]
    argv += ["--webui-listen", f"{WEB[0]}:{WEB[1]}"]
    with running(argv, WEB[0], WEB[1], log=tmp_path / "demo.log"):
        until("every demo server up", lambda: set(health(state).values()) == {"up"}, 20)
        yield state


def test_demo_fail_turns_a_web_server_red_moves_traffic_and_fail_again_recovers(
    demo: Path,
) -> None:
    assert {served_by() for _ in range(6)} == {"Radiology_Web_Srv1", "Radiology_Web_Srv2"}
    done = cli(demo, "demo", "--fail", "Radiology_Web_Srv1")
    assert done.returncode == 0, done.stderr
    assert "answers its check URL /wpp/srvpacs.asp with 503" in done.stdout
    # The server itself answers its check URL wrongly (nothing in the checker was told).
    page = urllib.request.Request(f"http://{NET}.3/wpp/srvpacs.asp")
    with pytest.raises(urllib.error.HTTPError) as broken:
        urllib.request.urlopen(page, timeout=5)
    assert broken.value.code == 503

    took = until("Srv1 down", lambda: health(demo)["Radiology_Web_Srv1"] == "down", BOUND + 3)
    print(f"\ndemo --fail: Radiology_Web_Srv1 down {took:.1f} s later (bound {BOUND} s)")
    reason = json.loads(cli(demo, "status", "--json").stdout)["services"][1]["real_servers"][0]
    assert "expected 'srvPACS OK' in body, got status 503" in reason["last_check"]["reason"]
    assert {served_by() for _ in range(6)} == {"Radiology_Web_Srv2"}  # the traffic moved
    assert served_by("/wpp/srvpacs.asp") == "Radiology_Web_Srv2"

    done = cli(demo, "demo", "--fail", "Radiology_Web_Srv1")  # again: it recovers
    assert done.returncode == 0 and "answers its health check again" in done.stdout
    until("Srv1 up", lambda: health(demo)["Radiology_Web_Srv1"] == "up", 2 * 2 + 4)
    assert {served_by() for _ in range(6)} == {"Radiology_Web_Srv1", "Radiology_Web_Srv2"}

    done = cli(demo, "demo", "--fail", "Radiology_Srv9")
    assert done.returncode == 1 and "no demo real server 'Radiology_Srv9'" in done.stderr
    events = cli(demo, "events", "--kind", "admin").stdout
    assert "demo: Radiology_Web_Srv1 answers its check URL" in events


def test_the_api_fails_a_dicom_server_and_c_echo_moves_then_recovers(demo: Path) -> None:
    from pacslb.control.auth import AuthStore
    from pacslb.core.auth import Role

    _, token = AuthStore(demo).create_token("demo test", Role.ADMIN, "test")
    api = httpx.Client(
        base_url=f"https://{WEB[0]}:{WEB[1]}/api/v1",
        verify=ssl.create_default_context(cafile=str(demo / "webui-cert.pem")),
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )
    with api:

        def post(server: str, action: str) -> dict[str, Any]:
            r = api.post(f"/demo/servers/{server}/{action}")
            assert r.status_code == 200, r.text
            return dict(r.json())

        answer = post("Radiology_DICOM_Srv1", "fail")
        assert answer["failing"] and answer["changed"], answer
        assert "stops listening on 127.10.6.1 ports 4000 and 5000" in answer["message"]
        assert api.get("/demo").json()["failing"] == ["Radiology_DICOM_Srv1"]
        took = until(
            "DICOM Srv1 down", lambda: health(demo)["Radiology_DICOM_Srv1"] == "down", BOUND + 3
        )
        print(f"\nAPI fail: Radiology_DICOM_Srv1 down {took:.1f} s later (bound {BOUND} s)")
        for port in (4000, 5000):  # through the VIP: the other archive answers
            assert echo(port).returncode == 0, echo(port).stderr
        assert api.post("/demo/servers/Nobody/fail").status_code == 404

        assert not post("Radiology_DICOM_Srv1", "recover")["failing"]
        until("DICOM Srv1 up", lambda: health(demo)["Radiology_DICOM_Srv1"] == "up", 8)
        assert api.get("/demo").json()["failing"] == []
        assert post("Radiology_DICOM_Srv1", "toggle")["failing"]  # toggle: fails again
        assert not post("Radiology_DICOM_Srv1", "toggle")["failing"]  # and back


def test_fail_without_a_running_demo_says_so(tmp_path: Path) -> None:
    done = cli(tmp_path, "demo", "--fail", "Radiology_Web_Srv1")
    assert done.returncode == 1 and "no demo runs there: start it with `pacslb demo`" in done.stderr
