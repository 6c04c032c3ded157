"""Every channel retries a delivery that failed for a passing reason, and a test message does
not: a real SMTP relay (aiosmtpd) that is not running yet when the PROBLEM is sent (refused),
then answers 451 (try later), then takes it; a 550 is not retried; a test message to a
webhook nobody listens on answers at once, not after the retry budget (54 s by default)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.integration.alert_peers import Mailbox, free_port, smtp_relay

from pacslb.control.alerts import AlertService
from pacslb.control.events import Event, EventLog
from pacslb.core.validate import load_text

HOST = "127.10.9.3"


def config(state: Path, channel: str) -> str:
    return f"""version: 1
node:
  state_dir: {state}
  webui: {{enabled: false}}
  alerts:
    {channel}
    group_window: 0
"""


def down(server: str) -> Event:
    data = {"previous": "up", "current": "down", "ok": False}
    return Event("health", "up -> down: check", "Rack", server, data=data)


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)
    assert predicate(), "timed out"  # type: ignore[operator]


def test_a_relay_restarting_and_a_4xx_lose_no_mail_and_a_5xx_is_not_retried(
    tmp_path: Path,
) -> None:
    port = free_port(HOST)
    email = (
        f"email: {{host: {HOST}, port: {port}, security: none, sender: a@lb.example, "
        "recipients: [b@x.example], timeout: 2, backoff: 0.3}"
    )
    box = Mailbox(answers=["451 4.3.0 try again later"])
    log = EventLog(tmp_path / "events.jsonl")

    def said() -> list[str]:
        return [e.message for e in log.query(kind="alert")]

    async def scenario() -> None:
        service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), "lb1")
        log.observers.append(service.observe)
        service.configure(load_text(config(tmp_path, email)), tmp_path, tmp_path)
        log.record(down("Srv01"))
        await until(lambda: said())  # refused: nobody listens yet
        with smtp_relay(HOST, port, box=box):  # the relay is back, busy at first (451)
            await until(lambda: box.mails, 5)
            box.answers.append("550 5.7.1 relaying denied")
            log.record(down("Srv02"))
            await until(lambda: len(said()) >= 4)
            await asyncio.sleep(1.0)  # a retry of the 550 would have come by now
        await service.close()

    asyncio.run(scenario())
    first, busy, delivered, denied = said()
    assert first.startswith("email: not delivered: ") and "Connection refused" in first, first
    assert "attempt 1 of 4, again in 0.3 s" in first, first
    assert busy.startswith("email: not delivered: the relay answered 451 4.3.0 try again"), busy
    assert "attempt 2 of 4, again in 0.6 s" in busy, busy
    assert delivered.startswith("email: delivered (attempt 3): [pacslb lb1] PROBLEM"), delivered
    assert "Rack/Srv01" in box.subjects()[0] and len(box.mails) == 1
    assert denied.startswith("email: not delivered: the relay answered 550 5.7.1"), denied
    assert "again" not in denied and len(box.refused) == 2, denied  # the 451 and the 550


def test_a_test_message_tries_each_channel_once_and_answers_at_once(tmp_path: Path) -> None:
    port = free_port(HOST)  # nobody listens: refused, a passing failure
    hook = f"webhook: {{url: 'http://{HOST}:{port}/hook', timeout: 2}}"  # retries 3, backoff 2

    async def scenario() -> tuple[dict[str, dict[str, object]], float, dict[str, object]]:
        log = EventLog(tmp_path / "events.jsonl")
        service = AlertService(lambda m, d: log.record(Event("alert", m, data=d)), "lb1")
        service.configure(load_text(config(tmp_path, hook)), tmp_path, tmp_path)
        started = time.monotonic()
        result = await service.test()
        seconds = time.monotonic() - started
        status = service.status()["webhook"]
        await service.close()
        return result, seconds, status

    result, seconds, status = asyncio.run(scenario())
    assert result["webhook"]["delivered"] is False, result
    assert "Connection refused" in str(result["webhook"]["reason"]), result
    assert seconds < 1.5, seconds  # not the retries' 2 + 4 + 8 s
    assert (status["failed"], status["queued"], status["retrying"]) == (1, 0, 0), status
