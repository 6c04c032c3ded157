"""Faults of the control plane's HTTPS API (issue 14, items 1, 7 and 10): a caller with a
read-only token, or none at all, must not be able to freeze the control process, guess
passwords without limit, lock the real admin out or learn which files exist on the host.

Where the fault lives in the server (uvicorn's reading of bodies and headers, the control
process's memory and health checks) a real `pacslb run` serves HTTPS with its generated
certificate on 127.10.1.1; the rest drives the same ASGI app in-process (tests/webapp.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from pacslb.control.auth import AuthStore
from pacslb.core.auth import Role
from tests.peers.procs import free_port, http_peer, running, wait_until
from tests.webapp import PASSWORD, READONLY_PASSWORD, headers, login, web_client

WEB = "127.10.1.1"  # the WebUI; 127.10.1.0/24 is this test module's own loopback block
VIP = "127.10.1.30"
RIP = "127.10.1.40"
PROMETHEUS = "127.10.1.200"  # the only address in metrics_allow
PROXY = "127.10.1.3"  # the only address in trusted_proxies (where a test sets it)
MB = 1024 * 1024


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    base: str
    state: Path
    tls: ssl.SSLContext
    readonly: str  # an API token with the readonly role
    port: int

    def client(self, source: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(verify=self.tls, local_address=source)
        return httpx.Client(base_url=self.base, transport=transport, timeout=20)

    def peak_rss_kib(self) -> int:
        """VmHWM: the most resident memory the control process ever had."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def checks_of_srv1(self) -> int:
        with self.client() as c:
            rs = c.get("/api/v1/status", headers=self.bearer).json()["services"][0]
        last = rs["real_servers"][0]["last_check"]
        return int(last["checks"]) if last else 0

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.readonly}"}


@contextlib.contextmanager
def pacslb(tmp_path: Path, webui_extra: str = "") -> Iterator[Run]:
    """`pacslb run` with one l7-http service whose real server is checked every 0.2 s."""
    rip = free_port(RIP)
    with http_peer(RIP, rip, "/ok=200:OK"):
        web = free_port(WEB)
        config = tmp_path / "pacslb.yaml"
        config.write_text(
            f"""version: 1
node:
  webui: {{listen: "{WEB}:{web}", metrics_allow: [{PROMETHEUS}/32]{webui_extra}}}
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [{free_port(VIP)}]
    mode: l7-http
    health_check: {{type: http, path: /ok, expect: OK, interval: 0.2, timeout: 0.15}}
    real_servers:
      - {{label: Srv1, address: {RIP}, port: {rip}}}
"""
        )
        state = tmp_path / "state"
        store = AuthStore(state)
        store.set_password("admin", PASSWORD, Role.ADMIN)
        store.set_password("viewer", READONLY_PASSWORD, Role.READONLY)
        _, readonly = store.create_token("looker", Role.READONLY, "test")
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
        with running(argv, WEB, web, log=tmp_path / "run.log") as proc:
            tls = ssl.create_default_context(cafile=str(state / "webui-cert.pem"))
            yield Run(proc, f"https://{WEB}:{web}", state, tls, readonly, web)


def tls_socket(run: Run) -> ssl.SSLSocket:
    sock = socket.create_connection((WEB, run.port), timeout=10)
    return run.tls.wrap_socket(sock, server_hostname=WEB)


def answer_while_sending(sock: ssl.SSLSocket, head: bytes, body_part: bytes) -> bytes:
    """Send the head and part of the body, never the rest, and read what the server says:
    a server that waits for the whole body before it answers times out here (10 s)."""
    sock.sendall(head + body_part)
    reply = b""
    with contextlib.suppress(TimeoutError):
        while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    return reply


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


# --- item 1: bounded bodies, checked before they are read --------------------------------


def test_50mb_body_from_a_readonly_token_is_refused_at_once_and_checks_go_on(
    tmp_path: Path,
) -> None:
    with pacslb(tmp_path) as run:
        wait_until(lambda: run.checks_of_srv1() >= 3, 15, "the first health checks")
        before_rss, before_checks = run.peak_rss_kib(), run.checks_of_srv1()
        body = b'{"virtual_services": [' + b'{"label": "x"},' * (50 * MB // 16) + b"{}]}"
        with run.client() as c:
            h = {**run.bearer, "Content-Type": "application/json"}
            sized = c.post("/api/v1/config/validate", content=body, headers=h)
            assert sized.status_code == 413, sized.text
            assert "max_body" in sized.json()["detail"]

            def pieces() -> Iterator[bytes]:  # no Content-Length: chunked, stopped on the way
                for i in range(0, len(body), MB):
                    yield body[i : i + MB]

            chunked = c.post("/api/v1/config/validate", content=pieces(), headers=h)
            assert chunked.status_code == 413, chunked.text
        # The control process never held the body (2.6 GB before the fix) and its health
        # checks went on: the checker still ticks every 0.2 s.
        assert run.peak_rss_kib() - before_rss < 100 * 1024
        wait_until(lambda: run.checks_of_srv1() >= before_checks + 5, 10, "health checks")


def test_bodies_without_credentials_or_too_big_are_refused_before_they_are_sent(
    tmp_path: Path,
) -> None:
    def head(length: int, *extra: str) -> bytes:
        lines = [
            "POST /api/v1/config/validate HTTP/1.1",
            f"Host: {WEB}",
            "Content-Type: application/json",
            f"Content-Length: {length}",
            *extra,
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    with pacslb(tmp_path) as run:
        # Within the size limit but from nobody: 401 before the body (which never comes).
        with tls_socket(run) as sock:
            reply = answer_while_sending(sock, head(3 * MB), b"[" * 4096)
        assert status_of(reply) == 401, reply[:200]
        # Over the limit, from nobody or from a readonly token: 413 before the body.
        for extra in ((), (f"Authorization: Bearer {run.readonly}",)):
            with tls_socket(run) as sock:
                reply = answer_while_sending(sock, head(50 * MB, *extra), b"[" * 4096)
            assert status_of(reply) == 413, reply[:200]

        # Chunked: the server stops counting at node.webui.max_body, not at the end.
        chunked = (
            f"POST /api/v1/config/validate HTTP/1.1\r\nHost: {WEB}\r\n"
            f"Authorization: Bearer {run.readonly}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"%x\r\n%s\r\n" % (MB, b" " * MB)
        with tls_socket(run) as sock:
            reply = answer_while_sending(sock, chunked, chunk * 6)
        assert status_of(reply) == 413, reply[:200]


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_nested_too_deep_is_a_400_that_says_so(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, _):
        h = headers(login(client, "viewer", READONLY_PASSWORD))
        h["Content-Type"] = "application/json"
        for body in (
            '{"virtual_services": [{"label": ' + deep(900) + "}]}",
            '{"virtual_services": [{"real_servers": [{"label": "a", "address": '
            + deep(600)
            + "}]}]}",
            deep(50_000),
        ):
            r = client.post("/api/v1/config/validate", content=body, headers=h)
            assert r.status_code == 400, r.text
            assert "nested" in r.json()["detail"]
        h = headers(login(client))
        h["Content-Type"] = "application/json"
        service = {"label": "Deep", "vip": "127.10.1.31", "ports": [80], "mode": "l7-tcp"}
        text = json.dumps(service)[:-1] + ', "real_servers": ' + deep(900) + "}"
        for url in ("/api/v1/virtual_services?dry_run=true", "/api/v1/config?dry_run=true"):
            method = "PUT" if url.startswith("/api/v1/config") else "POST"
            content = text if method == "POST" else '{"virtual_services": [' + text + "]}"
            r = client.request(method, url, content=content, headers=h)
            assert r.status_code in (400, 422), (url, r.text)


# --- item 10: /config/validate is no file-existence oracle --------------------------------


def test_readonly_validate_does_not_tell_which_files_exist(tmp_path: Path) -> None:
    def config(certificate: str) -> dict[str, object]:
        return {
            "node": {"webui": {"certificate": certificate, "key": certificate}},
            "virtual_services": [
                {
                    "label": "Ext",
                    "vip": "127.10.1.32",
                    "ports": [80],
                    "mode": "l7-tcp",
                    "health_check": {"type": "external", "command": certificate},
                }
            ],
        }

    exists, missing = "/etc/passwd", "/etc/no-such-file-here"
    with web_client(tmp_path) as (client, _):
        h = headers(login(client, "viewer", READONLY_PASSWORD))
        answers = [
            client.post("/api/v1/config/validate", json=config(path), headers=h).json()
            for path in (exists, missing)
        ]
        assert answers[0] == answers[1]
        assert "no such file" not in json.dumps(answers[1])
        assert "checked when" in json.dumps(answers[1])  # says why nothing was said
        h = headers(login(client))  # an admin keeps the whole check
        r = client.post("/api/v1/config/validate", json=config(missing), headers=h).json()
        assert any("no such file" in p["message"] for p in r["problems"])


# --- item 7: forwarded headers, the login limit and its events ------------------------------


def failed_login(c: httpx.Client, user: str = "admin", **kw: str) -> int:
    r = c.post("/api/v1/session", json={"username": user, "password": "wrong guess"}, headers=kw)
    return r.status_code


def test_x_forwarded_for_is_trusted_only_from_configured_proxies(tmp_path: Path) -> None:
    extra = f", trusted_proxies: [{PROXY}/32]"
    with pacslb(tmp_path, extra) as run:
        # From 127.0.0.1 (what uvicorn trusted by default): a new X-Forwarded-For on every
        # try must not make a new client for the login limit.
        with run.client("127.0.0.1") as c:
            codes = [failed_login(c, **{"X-Forwarded-For": f"198.18.0.{i}"}) for i in range(1, 9)]
            assert 429 in codes, codes
            allowed = {"X-Forwarded-For": PROMETHEUS}
            assert c.get("/metrics", headers=allowed).status_code == 401
        with run.client("127.10.1.4") as c:  # nor from any other address that is no proxy
            assert c.get("/metrics", headers=allowed).status_code == 401
        with run.client(PROXY) as c:  # the configured proxy speaks for its client
            assert c.get("/metrics", headers=allowed).status_code == 200
            assert c.get("/metrics").status_code == 401  # and for itself only when it is one
            other = {"X-Forwarded-For": f"{PROMETHEUS}, 198.18.0.9"}
            assert c.get("/metrics", headers=other).status_code == 401  # right-most counts


def test_failed_logins_and_refusals_are_events_but_cannot_flood_the_log(
    tmp_path: Path,
) -> None:
    with pacslb(tmp_path) as run:
        with run.client("127.10.1.5") as c:
            codes = [failed_login(c) for _ in range(40)]
            assert codes.count(401) >= 5 and 429 in codes, codes
            codes = [failed_login(c, user="nobody") for _ in range(3)]
        argv = [sys.executable, "-m", "pacslb.cli", "events", "--kind", "auth", "--limit", "500"]
        out = subprocess.run(
            [*argv, "--state-dir", str(run.state)],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        assert "failed login as 'admin' from 127.10.1.5" in out, out
        assert "failed login as an unknown user from 127.10.1.5" in out, out
        assert out.count("too many failed logins") == 1, out  # when the lockout began
        assert "wrong guess" not in out
        assert len(out.splitlines()) <= 20, out  # 43 tries, a bounded number of events


def test_admin_with_a_device_cookie_logs_in_after_an_attackers_failures(
    tmp_path: Path,
) -> None:
    with web_client(tmp_path) as (client, _):
        csrf = login(client)  # the admin's browser logged in once: it is a known device
        device = {k: v for k, v in client.cookies.items() if "session" not in k}
        assert device, "no device cookie"
        client.delete("/api/v1/session", headers=headers(csrf))
        client.cookies.clear()
        # An attacker from the same (shared) address guesses admin's password.
        codes = [failed_login(client) for _ in range(10)]  # type: ignore[arg-type]
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 5, codes
        # Unknown devices stay locked out, even with the right password...
        r = client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 429
        # ...another user on the same address is not...
        login(client, "viewer", READONLY_PASSWORD)
        client.cookies.clear()
        # ...and the admin's own browser gets in.
        for name, value in device.items():
            client.cookies.set(name, value)
        login(client)
