"""A real `pacslb run` for fault tests: its WebUI/REST API over HTTPS, an admin logged in.

The admin password is set in the state directory before the first start (as `pacslb passwd`
does), so no test has to fish the generated one out of the log."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from pacslb.control.auth import AuthStore
from pacslb.control.local import request
from pacslb.errors import PacslbError
from tests.peers.procs import running, wait_port

PASSWORD = "fault injection admin"


class Pacslb:
    def __init__(self, config: Path, state: Path, web: tuple[str, int], log: Path) -> None:
        self.config, self.state, self.web, self.log = config, state, web, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: httpx.Client | None = None
        self._csrf = ""

    def start(self, stack: ExitStack) -> None:
        if not (self.state / "webui-users.json").exists():
            AuthStore(self.state).set_password("admin", PASSWORD, "admin")  # type: ignore[arg-type]
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(self.config)]
        argv += ["--state-dir", str(self.state)]
        self.proc = stack.enter_context(running(argv, log=self.log))
        wait_port(*self.web, timeout=20, proc=self.proc)
        deadline = time.monotonic() + 20
        while not self.cli_status().get("ready"):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "pacslb never became ready"
            time.sleep(0.05)
        trust = ssl.create_default_context(cafile=str(self.state / "webui-cert.pem"))
        host, port = self.web
        self.client = stack.enter_context(
            httpx.Client(base_url=f"https://{host}:{port}", verify=trust, timeout=20)
        )
        r = self.client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200, r.text
        self._csrf = r.json()["csrf_token"]

    def api(self, method: str, url: str, body: Any = None) -> httpx.Response:
        assert self.client is not None
        headers = {"X-CSRF-Token": self._csrf}
        return self.client.request(method, f"/api/v1{url}", json=body, headers=headers)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(self.state)],
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def control(self, cmd: str) -> Any:
        """One command over the control socket, as the CLI sends it (without a new Python)."""
        return request(self.state, {"cmd": cmd}, timeout=30)

    def cli_status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = self.control("status")
        except (OSError, PacslbError):
            return {}
        return status

    def events(self, kind: str) -> list[str]:
        r = self.api("GET", f"/events?kind={kind}&limit=500")
        assert r.status_code == 200, r.text
        return [e["message"] for e in r.json()]

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(15)
