"""Alert delivery: events in (an EventLog observer), grouped messages out to every channel.

The observer only classifies the event and notes the change (core/alerts.py): it never waits,
so recording an event stays as fast as before. A task of its own closes each group window and
offers the message to every channel's rate limit; each channel has a bounded outbox and a
worker that delivers one message at a time within the channel's timeout, and tries a message
that failed for a passing reason again later while the others go out (core/alert_outbox.py).
A channel that is slow, hangs or refuses fills its own outbox (the overflow is dropped, and
said); every outcome is an `alert` event. In an HA pair only the node holding the floating
addresses speaks for the servers (core/alerts.py Intake). Certificates are checked for expiry
once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacslb import config as c
from pacslb.config_alerts import AlertSettings
from pacslb.control.alert_senders import DeliveryFailed, Sender, senders
from pacslb.control.events import Event
from pacslb.core.alert_outbox import Outbox, Pending
from pacslb.core.alerts import (
    Change,
    Gate,
    Intake,
    Message,
    change_of,
    delivery_test_message,
    expiry_changes,
)
from pacslb.core.ha_role import HaState, Role
from pacslb.errors import PacslbError

Record = Callable[[str, dict[str, Any]], None]  # (message, data): an event of kind "alert"
CERT_CHECK = 3600.0  # seconds between certificate expiry checks
MAX_SLEEP = 60.0  # the ticker wakes at least this often
CLOSE_GRACE = 2.0  # seconds a stopping process gives the queues to empty


async def stopped(task: asyncio.Task[Any]) -> None:
    """Wait for a task just cancelled to end. Not `suppress(CancelledError): await task`: that
    would also swallow a cancel of the waiting task itself (a stop with a deadline)."""
    await asyncio.gather(task, return_exceptions=True)


class NoAlertChannels(PacslbError):
    """`pacslb alert test` on a node with no channel configured."""


class Channel:
    """One destination: its sender, rate limit, outbox (bounded, with retries: one mechanism
    for every channel, core/alert_outbox.py) and delivery worker."""

    def __init__(self, sender: Sender, settings: AlertSettings, record: Record) -> None:
        self.sender = sender
        self.gate = Gate(settings.rate_limit)
        self.outbox = Outbox(settings.queue, sender.retries, sender.backoff)
        self.record = record
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.retried = 0
        self.last_error = ""
        self._changed = asyncio.Event()  # a message put, or an attempt ended
        self._busy = False  # an attempt is running
        self.task = asyncio.get_running_loop().create_task(self._work())

    @property
    def name(self) -> str:
        return self.sender.name

    def put(self, message: Message) -> None:
        if self.outbox.put(message, time.monotonic()):
            self._changed.set()
            return
        self.dropped += 1
        self.record(
            f"{self.name}: queue full ({self.outbox.size} messages waiting), dropped: "
            f"{message.title}",
            {"channel": self.name, "dropped": self.dropped},
        )

    async def _work(self) -> None:
        while True:
            now = time.monotonic()
            pending = self.outbox.take(now)
            if pending is None:  # wait for a new message or the next retry's time
                due = self.outbox.next_due()
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if due is None else max(due - now, 0.0)):
                        await self._changed.wait()
                continue
            self._busy = True
            try:
                await self._deliver(pending)
            finally:
                self._busy = False
                self._changed.set()

    async def attempt(self, message: Message) -> tuple[str | None, bool]:
        """One attempt within the channel's timeout: (None, _) delivered, or (the reason it
        failed, whether it may pass)."""
        try:
            async with asyncio.timeout(self.sender.timeout):
                await self.sender.send(message)
        except DeliveryFailed as exc:
            return str(exc), exc.passing
        except TimeoutError:
            return f"no delivery within {self.sender.timeout:g} s", True
        except Exception as exc:  # a bug in a sender must not end the worker
            return repr(exc), False
        return None, False

    async def _deliver(self, pending: Pending) -> None:
        started = time.monotonic()
        message, tries = pending.message, pending.attempts + 1
        reason, may_pass = await self.attempt(message)
        now = time.monotonic()
        data: dict[str, Any] = {"channel": self.name, "delivered": reason is None}
        if tries > 1:
            data["attempts"] = tries
        if reason is None:
            self.delivered += 1
            self.outbox.delivered(now)
            data["seconds"] = round(now - started, 3)
            after = f" (attempt {tries})" if tries > 1 else ""
            self.record(f"{self.name}: delivered{after}: {message.title}", data)
            return
        self.last_error = reason
        data["reason"] = reason
        wait = self.outbox.failed(pending, now, may_pass)
        if wait is not None:
            self.retried += 1
            data["retry_in"] = wait
            again = f"; attempt {tries} of {self.outbox.retries + 1}, again in {wait:g} s"
            self.record(f"{self.name}: not delivered: {reason}{again} ({message.title})", data)
            return
        self.failed += 1
        after = f" after {tries} attempts" if tries > 1 else ""
        self.record(f"{self.name}: not delivered: {reason}{after} ({message.title})", data)

    def record_test(self, message: Message, reason: str | None) -> None:
        """The outcome of a test message: counted and an event, as a delivery's."""
        data: dict[str, Any] = {"channel": self.name, "delivered": reason is None, "test": True}
        if reason is None:
            self.delivered += 1
            self.record(f"{self.name}: delivered: {message.title}", data)
            return
        self.failed += 1
        self.last_error = data["reason"] = reason
        self.record(f"{self.name}: not delivered: {reason} ({message.title})", data)

    async def close(self, grace: float) -> None:
        """Deliver what waits within `grace` (a retry waiting is tried once more, now)."""
        self.outbox.hurry(time.monotonic())
        self._changed.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while len(self.outbox) or self._busy:
                    self._changed.clear()
                    await self._changed.wait()
        self.task.cancel()
        await stopped(self.task)
        self.sender.close()
        if len(self.outbox):
            self.record(
                f"{self.name}: stopped with {len(self.outbox)} messages not delivered",
                {"channel": self.name, "undelivered": len(self.outbox)},
            )


class AlertService:
    def __init__(self, record: Record, node: str | None = None) -> None:
        self.record = record
        self.node = node or socket.gethostname()
        self.settings: AlertSettings | None = None
        self.channels: list[Channel] = []
        # grouping, open problems, and whether this node speaks for the servers (HA role)
        self.intake = Intake(10.0, self.node)
        self.certificates: list[Path] = []
        self._sent_expiry: set[tuple[str, datetime, int]] = set()
        self._next_cert_check = 0.0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._ticker: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()  # replaced channels emptying their queues

    # --- configuration -------------------------------------------------------------------

    def configure(self, config: c.Config, base_dir: Path, state_dir: Path) -> None:
        """Take the alert settings of a config being applied (in the event loop)."""
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        settings = config.node.alerts
        certificates = certificate_files(config, base_dir, state_dir)
        if certificates != self.certificates:  # a new service's certificate: look at it now
            self.certificates, self._next_cert_check = certificates, 0.0
        if settings != self.settings:
            old = self.channels
            self.settings = settings
            self.channels = [] if settings is None else self._channels(settings)
            for channel in old:  # queued messages of a replaced channel go out through it
                self._spawn(channel.close(CLOSE_GRACE))
            self.intake.grouper.window = settings.group_window if settings else 0.0
            self._next_cert_check = 0.0
        # A server taken out while down is checked no more: its open problem is resolved here.
        subjects = {f"{s.label}/{r.label}" for s in config.virtual_services for r in s.real_servers}
        at = datetime.now(UTC).isoformat(timespec="seconds")
        for change in self.intake.open_problems.removed(subjects, at) if self.channels else ():
            self._add(change)
        if self._ticker is None and settings is not None:
            self._ticker = self._loop.create_task(self._tick())
        self._wake.set()

    def _channels(self, settings: AlertSettings) -> list[Channel]:
        made = senders(settings.email, settings.syslog, settings.webhook)
        return [Channel(sender, settings, self.record) for sender in made]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Send what is due (a stopping node's last changes), then stop within CLOSE_GRACE."""
        if self._ticker is not None:
            self._ticker.cancel()
            await stopped(self._ticker)
        self._flush(time.monotonic(), final=True)
        closing = [*(ch.close(CLOSE_GRACE) for ch in self.channels), *self._closing]
        await asyncio.gather(*closing)  # a reload's replaced channels too: none left pending
        self.channels = []

    # --- events in -------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """EventLog observer: note an alertable change; never blocks, never raises."""
        settings = self.settings
        if settings is None or event.kind == "alert" or not self.channels:
            return
        change = change_of(
            event.kind,
            event.message,
            event.service,
            event.server,
            event.data,
            event.at,
            settings.events,
            self.intake.open_problems,  # read from any thread, changed in the loop's
        )
        if change is None or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._add(change)
        else:  # an event recorded from a worker thread
            self._loop.call_soon_threadsafe(self._add, change)

    def _add(self, change: Change) -> None:
        if self.intake.add(change, time.monotonic()):
            self._wake.set()

    def follow(self, ha: HaState) -> None:
        """Take this node's HA role now and at each change (an HaState listener, run in the
        loop before the supervisor records the `ha` event: a takeover's list of servers down
        and its role change go into the same message)."""
        self.role_changed(Role.STANDALONE, ha.role)
        ha.subscribe(self.role_changed)

    def role_changed(self, old: Role, new: Role) -> None:
        at = datetime.now(UTC).isoformat(timespec="seconds")
        if self.intake.role(new, time.monotonic(), at):
            self._wake.set()

    # --- messages out ----------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            now = time.monotonic()
            try:
                self._flush(now)
                if now >= self._next_cert_check:
                    self._next_cert_check = now + CERT_CHECK
                    await self._check_certificates()
            except Exception as exc:  # a bug here must not end alerting for good: said, retried
                self.record(f"alerts: {exc!r}", {"error": repr(exc)})
            dues = [self.intake.grouper.next_due(), self._next_cert_check]
            dues += [ch.gate.next_due() for ch in self.channels]
            soonest = min((d for d in dues if d is not None), default=now + MAX_SLEEP)
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # comes in the turn the event is set (a change just before a stop), and the ticker
            # then ran on, and close() waited for it, for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(soonest - time.monotonic(), 0.0), MAX_SLEEP)):
                    await self._wake.wait()

    def _flush(self, now: float, final: bool = False) -> None:
        message = self.intake.grouper.due(float("inf") if final else now)
        for channel in self.channels:
            ready = channel.gate.offer(message, now) if message else channel.gate.due(now)
            if ready is not None:
                channel.put(ready)

    async def _check_certificates(self) -> None:
        if self.settings is None or "certificate" not in self.settings.events:
            return
        found = await asyncio.to_thread(expiry_dates, self.certificates)
        days = self.settings.certificate_days
        for change in expiry_changes(found, datetime.now(UTC), days, self._sent_expiry):
            self._add(change)

    # --- the test message ------------------------------------------------------------------

    async def test(self, by: str = "") -> dict[str, dict[str, Any]]:
        """Send a test message through every channel now (past grouping and the rate limit);
        per channel: delivered, or the reason it was not."""
        channels = list(self.channels)  # a reload may replace them while the test runs
        if not channels:
            raise NoAlertChannels(
                "no alert channel is configured: add node.alerts.email, syslog or webhook "
                "(docs/alerts.md)"
            )
        who = f" by {by}" if by else ""
        self.record(f"test message sent{who}", {"test": True})
        message = delivery_test_message(self.node, datetime.now(UTC).isoformat(timespec="seconds"))
        # One attempt each, within its timeout, no retry: the person waits for the answer.
        results = await asyncio.gather(*(ch.attempt(message) for ch in channels))
        for ch, (reason, _) in zip(channels, results, strict=True):
            ch.record_test(message, reason)
        return {
            ch.name: {"delivered": reason is None, "reason": reason or ""}
            for ch, (reason, _) in zip(channels, results, strict=True)
        }

    def status(self) -> dict[str, Any]:
        return {
            ch.name: {
                "delivered": ch.delivered,
                "failed": ch.failed,
                "dropped": ch.dropped,
                "queued": len(ch.outbox),
                "retrying": ch.outbox.retrying,
                "held": ch.gate.holding,
                "last_error": ch.last_error,
            }
            for ch in self.channels
        }


def certificate_files(config: c.Config, base_dir: Path, state_dir: Path) -> list[Path]:
    """The certificates whose expiry alerts: the WebUI's (the generated one if none is set)
    and every l7-http service's TLS certificates."""
    webui = config.node.webui
    files = []
    if webui.enabled:
        files.append(webui.certificate or state_dir / "webui-cert.pem")
    for vs in config.virtual_services:
        files += [pair.certificate for pair in vs.tls.certificates] if vs.tls else []
    return list(dict.fromkeys(p if p.is_absolute() else base_dir / p for p in files))


def expiry_dates(paths: list[Path]) -> list[tuple[str, datetime]]:
    """(file, notAfter of its first certificate) of each readable PEM file; others are skipped
    (a missing file is the validator's and the engine's to report)."""
    from cryptography import x509

    out = []
    for path in paths:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        out.append((str(path), cert.not_valid_after_utc))
    return out
