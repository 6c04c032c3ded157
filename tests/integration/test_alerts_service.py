"""The alert service behind an EventLog (control/alerts.py), in this process: the events that
the control process records for HA role changes, engine failures and admin changes reach a
real syslog socket (transport local: a Unix datagram socket, as /dev/log is) in the local
socket's format (as glibc's syslog(3) writes it), grouped; and a certificate near its
expiry alerts once."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.alert_peers import free_port, parse_local_syslog, silent_relay

from pacslb.control.alerts import AlertService
from pacslb.control.events import Event, EventLog
from pacslb.core.alerts import delivery_test_message
from pacslb.core.certs import self_signed
from pacslb.core.validate import load_text


def config(tmp: Path, sock: Path, extra: str = "") -> str:
    return f"""version: 1
node:
  state_dir: {tmp / "state"}
  webui: {{certificate: {tmp / "web.pem"}, key: {tmp / "web.key"}}}
  alerts:
    syslog: {{transport: local, socket: {sock}, facility: local7}}
    group_window: 0.3
{extra}"""


def web_certificate(tmp: Path, days: int) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert, key = self_signed("lb1", now, days=days)
    (tmp / "web.pem").write_bytes(cert)
    (tmp / "web.key").write_bytes(key)


@contextlib.contextmanager
def local_syslog(path: Path) -> Iterator[socket.socket]:
    """A Unix datagram socket at `path`, as /dev/log is: what transport local sends to."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as collector:
        collector.bind(str(path))
        collector.setblocking(False)
        yield collector


def local_line(line: bytes) -> dict[str, object]:
    """A datagram of the local socket parsed strictly, and its title's kind (PROBLEM...)."""
    parsed = parse_local_syslog(line)
    head = re.match(r"\[pacslb \S+\] ([A-Z]+): ", parsed["msg"])
    assert head is not None, parsed
    return {**parsed, "head": head[1]}


async def receive(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    loop = asyncio.get_running_loop()
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await loop.sock_recv(sock, 65536))
    return got


def test_ha_engine_and_admin_events_reach_local_syslog_grouped(tmp_path: Path) -> None:
    web_certificate(tmp_path, days=400)  # far from expiry: no certificate alert
    path = tmp_path / "log.sock"
    with local_syslog(path) as collector:

        async def scenario() -> list[bytes]:
            log = EventLog(tmp_path / "events.jsonl")
            service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), node="lb1")
            log.observers.append(service.observe)
            service.configure(load_text(config(tmp_path, path)), tmp_path, tmp_path / "state")
            ha = {"previous": "active", "role": "fault", "vrrp": "FAULT"}
            log.record(Event("ha", "role active -> fault (VRRP FAULT)", data=ha))
            failed = {"engine": "kernel", "error": "nft: Operation not permitted"}
            log.record(Event("engine", "kernel: apply failed: ...", data=failed))
            halt = {"previous": "online", "state": "halt"}
            log.record(Event("admin", "online -> halt by admin", "Rack", "Srv01", data=halt))
            log.record(Event("config", "applying revision 2"))  # not an alert
            first = await receive(collector, 1)
            back = {"engine": "kernel", "recovered": True}
            log.record(Event("engine", "kernel: plan applied again", data=back))
            second = await receive(collector, 1)
            await service.close()
            kinds = [e.data.get("delivered") for e in log.query(kind="alert")]
            assert kinds == [True, True], log.query(kind="alert")
            return first + second

        lines = asyncio.run(scenario())
    problem, resolved = (local_line(line) for line in lines)
    assert (problem["facility"], problem["severity"], problem["head"]) == (23, 3, "PROBLEM")
    assert (problem["tag"], problem["pid"]) == ("pacslb", os.getpid()), problem
    assert "PROBLEM: 3 problem:" in problem["msg"], problem  # one message, three lines
    for subject in (
        "this node: role active -> fault",
        "kernel: kernel: apply failed",
        "Rack/Srv01",
    ):
        assert subject in problem["msg"], problem["msg"]
    assert resolved["head"] == "RESOLVED" and "kernel: plan applied again" in resolved["msg"]


def test_a_certificate_near_expiry_alerts_once(tmp_path: Path) -> None:
    web_certificate(tmp_path, days=5)  # inside 30 and 7: one alert, not two
    path = tmp_path / "log.sock"
    with local_syslog(path) as collector:

        async def scenario() -> list[bytes]:
            log = EventLog(tmp_path / "events.jsonl")
            service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), "lb1")
            log.observers.append(service.observe)
            loaded = load_text(config(tmp_path, path))
            service.configure(loaded, tmp_path, tmp_path / "state")
            got = await receive(collector, 1)
            service.configure(loaded, tmp_path, tmp_path / "state")  # a reload: no repeat
            await asyncio.sleep(1.0)
            await service.close()
            return got

        (line,) = asyncio.run(scenario())
        with contextlib.suppress(BlockingIOError):
            extra = collector.recv(65536)
            raise AssertionError(f"a second certificate alert: {extra!r}")
    parsed = local_line(line)
    assert parsed["head"] == "PROBLEM", parsed
    assert f"{tmp_path / 'web.pem'}: expires in 5 days" in parsed["msg"], parsed["msg"]


def health(previous: str, current: str, server: str) -> Event:
    """A health event as control/app.py records it."""
    data = {"previous": previous, "current": current, "ok": current == "up"}
    return Event("health", f"{previous} -> {current}: check", "Rack", server, data=data)


def test_an_open_problem_is_resolved_after_its_check_is_edited_or_its_server_removed(
    tmp_path: Path,
) -> None:
    """Srv01's check is edited while it is down (the checker starts it again from unknown, so
    it comes back as unknown -> up); Srv02 is taken out of the config while down. Both
    PROBLEMs get their RESOLVED; the re-checked server still down is no second PROBLEM."""
    web_certificate(tmp_path, days=400)
    path = tmp_path / "log.sock"
    servers = """virtual_services:
  - label: Rack
    vip: 127.10.6.30
    ports: [80]
    mode: l7-tcp
    real_servers:
"""
    both = servers + "      - {label: Srv01, address: 127.10.6.31}\n"
    both += "      - {label: Srv02, address: 127.10.6.32}\n"
    one = servers + "      - {label: Srv01, address: 127.10.6.31}\n"
    with local_syslog(path) as collector:

        async def scenario() -> list[bytes]:
            log = EventLog(tmp_path / "events.jsonl")
            service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), "lb1")
            log.observers.append(service.observe)
            service.configure(load_text(config(tmp_path, path, both)), tmp_path, tmp_path)
            log.record(health("up", "down", "Srv01"))
            log.record(health("up", "down", "Srv02"))
            got = await receive(collector, 1)
            # A reload with Srv02 gone and Srv01's check edited: its tracker starts again.
            service.configure(load_text(config(tmp_path, path, one)), tmp_path, tmp_path)
            got += await receive(collector, 1)
            log.record(health("unknown", "down", "Srv01"))  # still down: said already
            log.record(health("unknown", "up", "Srv01"))
            got += await receive(collector, 1)
            await service.close()
            return got

        lines = asyncio.run(scenario())
    problem, removed, back = (local_line(line) for line in lines)
    assert problem["head"] == "PROBLEM" and "PROBLEM: 2 problem:" in problem["msg"], problem
    assert removed["head"] == "RESOLVED", removed
    assert "Rack/Srv02: no longer in the configuration" in removed["msg"], removed["msg"]
    assert back["head"] == "RESOLVED" and "RESOLVED: 1 resolved:" in back["msg"], back
    assert "resolved Rack/Srv01: unknown -> up" in back["msg"], back["msg"]


def test_close_waits_for_the_channels_a_reload_replaced(tmp_path: Path) -> None:
    """A reload that changes node.alerts closes the old channels in the background (their
    queued messages still go out, within the grace); the process's stop must wait for those
    too and leave no task behind (a task destroyed pending loses its messages). The old
    channel's relay hangs, so its queued message takes its whole timeout."""
    host = "127.10.9.22"
    port = free_port(host)
    email = "{{host: {h}, port: {p}, security: none, sender: a@lb.example, "
    email += "recipients: [b@x.example], timeout: {t}}}"

    def settings(timeout: float) -> str:
        return f"""version: 1
node:
  state_dir: {tmp_path / "state"}
  webui: {{enabled: false}}
  alerts:
    email: {email.format(h=host, p=port, t=timeout)}
"""

    async def scenario() -> tuple[set[asyncio.Task[object]], list[str]]:
        log = EventLog(tmp_path / "events.jsonl")
        service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), "lb1")
        service.configure(load_text(settings(1.0)), tmp_path, tmp_path)
        service.channels[0].put(delivery_test_message("lb1", "2026-12-07T03:00:00+00:00"))
        await asyncio.sleep(0.1)  # its worker took it and waits on the relay
        service.configure(load_text(settings(2.0)), tmp_path, tmp_path)  # replaced
        await service.close()
        left = asyncio.all_tasks() - {asyncio.current_task()}
        return left, [e.message for e in log.query(kind="alert")]  # type: ignore[return-value]

    with silent_relay(host, port):
        left, said = asyncio.run(scenario())
    assert left == set(), left
    assert any("email: not delivered: no delivery within 1 s" in m for m in said), said


def test_stop_right_after_a_change_returns_and_sends_it(tmp_path: Path) -> None:
    """A change noted just before the stop (a server going down as the checker stops) wakes
    the ticker in the same turn as close() cancels it: on Python 3.11 asyncio.wait_for then
    swallowed the cancellation and close() waited for ever. It must return, having sent it."""
    web_certificate(tmp_path, days=400)
    path = tmp_path / "log.sock"
    with local_syslog(path) as collector:

        async def scenario() -> list[bytes]:
            log = EventLog(tmp_path / "events.jsonl")
            service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), "lb1")
            log.observers.append(service.observe)
            service.configure(load_text(config(tmp_path, path)), tmp_path, tmp_path)
            await asyncio.sleep(0.2)  # the ticker waits for its next due time
            log.record(health("up", "down", "Srv01"))
            started = time.monotonic()
            closing = asyncio.ensure_future(service.close())
            done, _ = await asyncio.wait([closing], timeout=10)
            # bounded by its grace (2 s), not the ticker's 60 s sleep nor for ever
            assert done, "close() still runs after 10 s"
            assert time.monotonic() - started < 5, time.monotonic() - started
            return await receive(collector, 1)

        (line,) = asyncio.run(scenario())
    parsed = local_line(line)
    assert parsed["head"] == "PROBLEM" and "Rack/Srv01" in parsed["msg"], parsed


def test_a_test_message_during_a_reload_reports_the_channels_it_went_through(
    tmp_path: Path,
) -> None:
    """`pacslb alert test` while a reload replaces the channels (here: the mail relay, which
    hangs, is dropped and syslog added): the answer names the channels the test went through,
    not the new ones, and does not fail on the changed count."""
    host = "127.10.9.24"
    port = free_port(host)
    email = (
        f"email: {{host: {host}, port: {port}, security: none, sender: a@lb.example, "
        "recipients: [b@x.example], timeout: 1}"
    )
    web_certificate(tmp_path, days=400)
    path = tmp_path / "log.sock"

    async def scenario() -> dict[str, dict[str, object]]:
        log = EventLog(tmp_path / "events.jsonl")
        service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), "lb1")
        before = config(tmp_path, path, "").replace("    syslog:", f"    {email}\n    syslog:")
        service.configure(load_text(before), tmp_path, tmp_path)
        testing = asyncio.ensure_future(service.test(by="r18"))
        await asyncio.sleep(0.2)  # the mail waits on the relay
        after = config(tmp_path, path, "").replace(
            "    syslog:", "    webhook: {url: 'http://127.10.9.24:9/'}\n    syslog:"
        )
        service.configure(load_text(after), tmp_path, tmp_path)
        result = await testing
        await service.close()
        return result

    with silent_relay(host, port), local_syslog(path):
        result = asyncio.run(scenario())
    assert set(result) == {"email", "syslog"}, result
    assert result["syslog"]["delivered"] is True, result
    assert result["email"]["reason"] == "no delivery within 1 s", result
