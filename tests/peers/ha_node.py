"""One real `pacslb run` node of an HA pair, for the pairing and replication tests.

It runs as an operator runs it (`pacslb run CONFIG --state-dir DIR`), optionally behind a
command prefix (`ip netns exec lb1`, or `unshare -m` with a folder hidden from it, so that the
two nodes of a pair on one host need not see the same files). The test talks to it as an
operator does: the CLI and control socket (`pacslb ha ...`, `pacslb drain`, `pacslb reload`),
and, where the test process can reach it, the REST API over HTTPS.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from pacslb.control.auth import AuthStore
from pacslb.control.local import request
from pacslb.core.auth import Role
from pacslb.errors import PacslbError
from tests.peers.procs import ROOT, stop

PASSWORD = "ha pairing test admin"
SECRET = "a shared secret for the test pair"


class HaNode:
    def __init__(self, name: str, folder: Path, web_host: str, web_port: int) -> None:
        self.name = name
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "pacslb.yaml"
        self.state = folder / "state"
        self.log = folder / "run.log"
        self.web_host, self.web_port = web_host, web_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._csrf = ""

    @property
    def address(self) -> str:
        return f"{self.web_host}:{self.web_port}"

    def write(self, node_extra: str, services: str) -> None:
        """The config file: node: (its WebUI, proxy, ha) then the services (YAML text)."""
        self.config.write_text(
            f'version: 1\nnode:\n  webui: {{listen: "{self.address}"}}\n'
            f"  proxy: {{workers: 1, spare: false}}\n{node_extra}"
            f"virtual_services:\n{services}"
        )

    def start(self, prefix: list[str] | None = None, shell: str = "") -> None:
        """Start `pacslb run`; `shell`: commands run first in the same shell (behind the
        prefix), e.g. a mount in the node's own mount namespace."""
        self.state.mkdir(parents=True, exist_ok=True)
        if not (self.state / "webui-users.json").exists():
            AuthStore(self.state).set_password("admin", PASSWORD, Role.ADMIN)
        run = [sys.executable, "-m", "pacslb.cli", "run", str(self.config)]
        run += ["--state-dir", str(self.state)]
        argv = list(prefix or [])
        if shell:
            argv += ["sh", "-c", f"{shell} && exec " + " ".join(run)]
        else:
            argv += run
        out = open(self.log, "ab")  # noqa: SIM115 - the process holds it; closed by its end
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        out.close()
        deadline = time.monotonic() + 30
        while not self.status().get("ready"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                tail = self.log.read_text()[-3000:]
                raise TimeoutError(f"{self.name} never became ready: {tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            stop(self.proc, timeout=15)
            self.proc = None

    # --- the control socket and the CLI ------------------------------------------------------

    def control(self, cmd: str, **more: Any) -> Any:
        return request(self.state, {"cmd": cmd, **more}, timeout=40)

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = self.control("status")
        except (OSError, PacslbError, ValueError):
            return {}
        return status

    def ha(self) -> dict[str, Any]:
        ha: dict[str, Any] = self.control("ha-status")
        return ha

    def cli(
        self, *args: str, check: bool = False, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(self.state)],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
            input=stdin,
            cwd=ROOT,
        )

    def token(self, name: str = "pairing") -> str:
        done = self.cli("token", "create", name, "--role", "admin", check=True)
        return done.stdout.strip()

    def fingerprint(self) -> str:
        return str(self.control("ha-fingerprint")["fingerprint"])

    def admin_states(self) -> dict[str, str]:
        out = {}
        for svc in self.status().get("services", []):
            for rs in svc["real_servers"]:
                out[f"{svc['label']}/{rs['label']}"] = rs["admin"]
        return out

    def servers(self) -> dict[str, list[str]]:
        return {
            svc["label"]: [rs["label"] for rs in svc["real_servers"]]
            for svc in self.status().get("services", [])
        }

    def events(self, kind: str = "ha") -> list[str]:
        return [e["message"] for e in self.control("events", kind=kind, limit=500)]

    # --- the REST API (when the test process can reach the node) --------------------------------

    def api(self, method: str, url: str, body: Any = None) -> httpx.Response:
        if self._client is None:
            trust = ssl.create_default_context(cafile=str(self.state / "webui-cert.pem"))
            trust.check_hostname = False
            base = f"https://{self.address}"
            self._client = httpx.Client(base_url=base, verify=trust, timeout=40)
            r = self._client.post(
                "/api/v1/session", json={"username": "admin", "password": PASSWORD}
            )
            assert r.status_code == 200, r.text
            self._csrf = r.json()["csrf_token"]
        return self._client.request(method, url, json=body, headers={"X-CSRF-Token": self._csrf})


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.02) -> float:
    """Seconds until `predicate()` holds (bounded); AssertionError naming `what` otherwise."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(OSError, PacslbError, ValueError, KeyError):
            if predicate():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(step)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
