"""Alerts end to end: a real `pacslb run`, real health-checked servers stopped and started, and
real peers receiving: aiosmtpd (plain, and STARTTLS with AUTH), syslog collectors (UDP, TCP
with octet counting, TLS) whose lines a strict RFC 5424 parser reads, and a webhook receiver
that fails before it takes the JSON. All on h18a's block, 127.10.2.0/24."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.alert_peers import (
    BLOCK,
    Listener,
    free_port,
    smtp_relay,
    syslog_stream,
    syslog_udp,
    tls_files,
    webhook,
)
from tests.peers.procs import running, wait_until

CLI = [sys.executable, "-m", "pacslb.cli"]
RELAY, COLLECTOR, HOOK, WEB = f"{BLOCK}.2", f"{BLOCK}.3", f"{BLOCK}.4", f"{BLOCK}.5"
VIP = f"{BLOCK}.30"
PASSWORD = "alert test password"


def config_text(
    state: Path, servers: list[Listener], alerts: str, web_port: int | None = None
) -> str:
    rows = "\n".join(
        f"      - {{label: Srv{i:02d}, address: {s.host}, port: {s.port}}}"
        for i, s in enumerate(servers, start=1)
    )
    web = f'{{listen: "{WEB}:{web_port}"}}' if web_port else "{enabled: false}"
    return f"""version: 1
node:
  state_dir: {state}
  webui: {web}
  alerts:
{alerts}
virtual_services:
  - label: Rack
    vip: {VIP}
    ports: [{free_port(VIP)}]
    mode: l7-tcp
    health_check: {{type: connect, interval: 0.3, timeout: 0.25, rise: 1, fall: 1}}
    real_servers:
{rows}
"""


class Pacslb:
    """`pacslb run` on a config; the CLI pointed at its state directory."""

    def __init__(self, tmp: Path, text: str, stack: ExitStack) -> None:
        self.state = tmp / "state"
        self.config = tmp / "pacslb.yaml"
        self.config.write_text(text)
        self.log = tmp / "run.log"
        argv = [*CLI, "run", str(self.config), "--state-dir", str(self.state)]
        self.proc = stack.enter_context(running(argv, log=self.log))
        wait_until(lambda: self.events("config"), 20, "the control process to start")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args, "--state-dir", str(self.state)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Events of `kind` from the log on disk (written and fsync'd as they happen)."""
        assert self.proc.poll() is None, self.log.read_text()
        try:
            lines = (self.state / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        found = [json.loads(line) for line in lines if line.endswith("}")]
        return [e for e in found if e["kind"] == kind]


@pytest.fixture
def servers() -> Iterator[list[Listener]]:
    made = [Listener(f"{BLOCK}.{10 + i}", free_port(f"{BLOCK}.{10 + i}")) for i in range(20)]
    for s in made:
        s.start()
    yield made
    for s in made:
        s.stop()


def test_a_server_going_down_and_back_mails_syslogs_and_posts(
    tmp_path: Path, servers: list[Listener]
) -> None:
    smtp, udp, hook = free_port(RELAY), free_port(COLLECTOR), free_port(HOOK)
    alerts = f"""    email: {{host: {RELAY}, port: {smtp}, security: none,
             sender: pacslb@lb.example, recipients: [pacs-team@hospital.example]}}
    syslog: {{transport: udp, host: {COLLECTOR}, port: {udp}, facility: local3}}
    webhook: {{url: "http://{HOOK}:{hook}/alerts", headers: {{X-Site: radiology}}}}
    group_window: 0.5"""
    one = servers[:1]
    with (
        smtp_relay(RELAY, smtp) as box,
        syslog_udp(COLLECTOR, udp) as collector,
        webhook(HOOK, hook) as receiver,
        ExitStack() as stack,
    ):
        run = Pacslb(tmp_path, config_text(tmp_path / "state", one, alerts), stack)
        wait_until(lambda: run.events("health"), 10, "the first health result")
        one[0].stop()  # the real server goes down
        wait_until(lambda: len(box.mails) == 1, 15, "the PROBLEM mail")
        one[0].start()  # and comes back
        wait_until(lambda: len(box.mails) == 2, 15, "the RESOLVED mail")

        down, up = box.subjects()
        assert "PROBLEM" in down and "Rack/Srv01" in down, down
        assert "RESOLVED" in up and "Rack/Srv01" in up, up
        first, second = box.bodies()
        assert "PROBLEM   Rack/Srv01: up -> down" in first, first
        assert "RESOLVED  Rack/Srv01: down -> up" in second, second
        assert box.mails[0]["To"] == "pacs-team@hospital.example"

        wait_until(lambda: len(collector.lines) >= 2, 5, "two syslog lines")
        problem, resolved = collector.parsed()[:2]
        assert (problem["facility"], problem["severity"]) == (19, 3), problem  # local3, err
        assert (resolved["facility"], resolved["severity"]) == (19, 5), resolved  # notice
        assert problem["app_name"] == "pacslb" and problem["msgid"] == "PROBLEM"
        assert problem["sd"]["alert@32473"]["problem"] == "1", problem
        assert "Rack/Srv01" in problem["msg"]

        wait_until(lambda: len(receiver.received) >= 2, 5, "two webhook posts")
        (headers, body), (_, back) = receiver.received[:2]
        assert headers["Content-Type"] == "application/json" and headers["X-Site"] == "radiology"
        assert body["state"] == "problem" and body["items"][0]["subject"] == "Rack/Srv01"
        assert body["items"][0]["topic"] == "health", body
        assert back["state"] == "resolved", back
        # the mail's text too: what a chat incoming webhook (Slack, Mattermost) shows
        assert body["text"].startswith("[pacslb ") and "PROBLEM   Rack/Srv01" in body["text"]

        delivered = [e for e in run.events("alert") if (e.get("data") or {}).get("delivered")]
        assert {e["data"]["channel"] for e in delivered} == {"email", "syslog", "webhook"}


def test_twenty_servers_failing_in_one_second_send_one_message(
    tmp_path: Path, servers: list[Listener]
) -> None:
    smtp = free_port(RELAY)
    alerts = f"""    email: {{host: {RELAY}, port: {smtp}, security: none,
             sender: pacslb@lb.example, recipients: [pacs-team@hospital.example]}}
    group_window: 3"""
    with smtp_relay(RELAY, smtp) as box, ExitStack() as stack:
        run = Pacslb(tmp_path, config_text(tmp_path / "state", servers, alerts), stack)
        wait_until(lambda: len(run.events("health")) >= 20, 15, "all twenty checked")
        started = time.monotonic()
        for s in servers:  # the rack loses power
            s.stop()
        assert time.monotonic() - started < 1.0
        wait_until(lambda: len(run.events("health")) >= 40, 10, "twenty down events")
        wait_until(lambda: box.mails, 10, "the mail")
        time.sleep(3.5)  # a second message would have come by now
        assert len(box.mails) == 1, box.subjects()
        (subject,), (body,) = box.subjects(), box.bodies()
        assert "PROBLEM: 20 problem" in subject, subject
        for i in range(1, 21):
            assert f"PROBLEM   Rack/Srv{i:02d}: up -> down" in body, body

        for s in servers:  # power back
            s.start()
        wait_until(lambda: len(box.mails) == 2, 15, "the RESOLVED mail")
        time.sleep(3.5)
        assert len(box.mails) == 2, box.subjects()
        assert "RESOLVED: 20 resolved" in box.subjects()[1]
        assert box.bodies()[1].count("RESOLVED  Rack/Srv") == 20


def test_alert_test_over_starttls_auth_tcp_syslog_and_a_webhook_that_fails_first(
    tmp_path: Path, servers: list[Listener]
) -> None:
    smtp, tcp, hook = free_port(RELAY), free_port(COLLECTOR), free_port(HOOK)
    cert, key = tls_files(tmp_path, RELAY)
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret relay password\n")
    secret.chmod(0o600)
    alerts = f"""    email: {{host: {RELAY}, port: {smtp}, security: starttls, ca_file: {cert},
             username: alerts, password_file: {secret},
             sender: pacslb@lb.example, recipients: [a@hospital.example, b@hospital.example]}}
    syslog: {{transport: tcp, host: {COLLECTOR}, port: {tcp}, app_name: pacslb-test}}
    webhook: {{url: "http://{HOOK}:{hook}/hook", retries: 2, backoff: 0.2}}"""
    login = ("alerts", "s3cret relay password")
    with (
        smtp_relay(RELAY, smtp, tls=(cert, key), login=login) as box,
        syslog_stream(COLLECTOR, tcp) as collector,
        webhook(HOOK, hook, fail_first=1) as receiver,
        ExitStack() as stack,
    ):
        run = Pacslb(tmp_path, config_text(tmp_path / "state", servers[:1], alerts), stack)
        # A test message tries each channel once and answers at once: the webhook's 500 is
        # the answer (no retry); the next test goes through.
        done = run.cli("alert", "test")
        assert done.returncode == 1 and "webhook: failed: HTTP 500" in done.stdout, done.stdout
        done = run.cli("alert", "test")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines() == [
            "email: delivered",
            "syslog: delivered",
            "webhook: delivered",
        ], done.stdout
        assert box.users == ["alerts", "alerts"] and "TEST" in box.subjects()[0]
        assert box.mails[0]["To"] == "a@hospital.example, b@hospital.example"
        line, _ = collector.parsed()
        assert line["msgid"] == "TEST" and line["app_name"] == "pacslb-test", line
        assert receiver.answered == [500, 200]  # one attempt per test
        assert receiver.received[0][1]["test"] is True

        # A wrong password: the relay's refusal is the reason, and the exit status says so.
        secret.write_text("wrong\n")
        done = run.cli("alert", "test")
        assert done.returncode == 1, done.stdout
        assert done.stdout.splitlines()[0].startswith("email: failed: the relay answered 535"), (
            done.stdout
        )
        failed = [e for e in run.events("alert") if "not delivered" in str(e["message"])]
        assert failed and failed[-1]["data"]["channel"] == "email", failed


def test_syslog_over_tls_and_the_rest_api_test_endpoint(
    tmp_path: Path, servers: list[Listener]
) -> None:
    port, web = free_port(COLLECTOR), free_port(WEB)
    cert, key = tls_files(tmp_path, COLLECTOR)
    alerts = f"""    syslog: {{transport: tls, host: {COLLECTOR}, port: {port}, ca_file: {cert}}}"""
    text = config_text(tmp_path / "state", servers[:1], alerts, web_port=web)
    subprocess.run(
        [*CLI, "passwd", "--password-stdin", "--state-dir", str(tmp_path / "state")],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    with syslog_stream(COLLECTOR, port, tls=(cert, key)) as collector, ExitStack() as stack:
        Pacslb(tmp_path, text, stack)
        with httpx.Client(base_url=f"https://{WEB}:{web}", verify=False, timeout=30) as client:
            wait_until(lambda: _answers(client), 15, "the REST API")
            login = client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
            csrf = login.json()["csrf_token"]
            answer = client.post("/api/v1/alerts/test", headers={"X-CSRF-Token": csrf})
            counts = client.get("/api/v1/alerts").json()["channels"]["syslog"]
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"channels": {"syslog": {"delivered": True, "reason": ""}}}
        assert (counts["delivered"], counts["failed"], counts["dropped"]) == (1, 0, 0), counts
        wait_until(lambda: collector.lines, 5, "the line over TLS")
        assert collector.parsed()[0]["msgid"] == "TEST"


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/api/v1/session").status_code in (200, 401)
    except httpx.HTTPError:
        return False
