"""The event log: what happened, to which service and server, why and when; kept on disk.

One JSON object per line in `state_dir/events.jsonl` (append-only, fsync'd: an engineer reading
it after an incident must find the last transitions), plus the recent events in memory for the
status views. The file is rotated once it passes a size limit, keeping one previous file.
Each event also goes to the system log when one is given (control/journal.py: the journal with
its fields under systemd).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacslb.control.journal import SystemLog

EVENT_KINDS = (
    "health",
    "admin",
    "config",
    "plan",
    "engine",
    "process",
    "auth",
    "webui",
    "ha",
    "alert",
)
MAX_BYTES = 16 * 1024 * 1024
KEEP_IN_MEMORY = 2000


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened. `kind`: health, admin, config, plan, engine, process."""

    kind: str
    message: str
    service: str = ""
    server: str = ""
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(line: str) -> Event:
        raw = json.loads(line)
        return Event(**raw)

    def __str__(self) -> str:
        where = "/".join(p for p in (self.service, self.server) if p)
        return f"{self.at} {self.kind:<7} {where + ': ' if where else ''}{self.message}"


class EventLog:
    def __init__(
        self, path: Path, max_bytes: int = MAX_BYTES, system_log: SystemLog | None = None
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.system_log = system_log
        # Whether the caller also prints events to stdout: not when stdout is the journal the
        # system log has just sent the event to (it would show twice in `journalctl`).
        self.echo = system_log is None or not system_log.duplicates_stdout
        self.recent: deque[Event] = deque(maxlen=KEEP_IN_MEMORY)
        # Called with each event once it is kept (control/alerts.py); an observer must not
        # block, and one that raises loses nothing here.
        self.observers: list[Callable[[Event], None]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        for event in read_events(path):
            self.recent.append(event)

    def record(self, event: Event) -> Event:
        """Keep the event; a full or read-only disk loses its line on disk (said on stderr),
        never the state change being recorded."""
        self.recent.append(event)
        if self.system_log is not None:
            self.system_log.send(event)
        line = (event.to_json() + "\n").encode()
        try:
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                os.replace(self.path, self.path.with_suffix(".jsonl.1"))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError, ValueError):
                print(f"pacslb: cannot write {self.path}: {exc}", file=sys.stderr)
        for observe in self.observers:
            try:
                observe(event)
            except Exception as exc:  # an observer's bug must not lose or stall the record
                with contextlib.suppress(OSError, ValueError):
                    print(f"pacslb: event observer failed: {exc!r}", file=sys.stderr)
        return event

    def query(
        self,
        kind: str | None = None,
        service: str | None = None,
        server: str | None = None,
        limit: int = 200,
    ) -> list[Event]:
        """Newest last, filtered by kind, service and server."""
        found = [
            e
            for e in self.recent
            if (kind is None or e.kind == kind)
            and (service is None or e.service == service)
            and (server is None or e.server == server)
        ]
        return found[-limit:]


def read_events(path: Path) -> Iterable[Event]:
    """Events from a log file; a torn last line (a crash mid-write) is skipped, not fatal."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines[-KEEP_IN_MEMORY:]:
        try:
            out.append(Event.from_json(line))
        except (ValueError, TypeError):
            continue
    return out
