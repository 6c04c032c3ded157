"""At most one event per kind of trouble per period, with the count of the ones held back
(no I/O: `now` comes in). A trouble that repeats on every datagram or round must not push the
health and admin history out of events.jsonl."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

PERIOD = 60.0  # seconds


@dataclass
class Throttle:
    period: float = PERIOD
    _last: dict[str, float] = field(default_factory=dict)  # kind -> when last said
    _held: Counter[str] = field(default_factory=Counter)  # kind -> held back since then
    held_total: Counter[str] = field(default_factory=Counter)  # kind -> ever held back

    def admit(self, kind: str, now: float) -> tuple[bool, int]:
        """(say it now?, how many of this kind were held back since it was last said)."""
        last = self._last.get(kind)
        if last is not None and now - last < self.period:
            self._held[kind] += 1
            self.held_total[kind] += 1
            return False, 0
        self._last[kind] = now
        return True, self._held.pop(kind, 0)

    def hold(self, kind: str) -> None:
        """Count one held back without asking (the caller already said this very message)."""
        self._held[kind] += 1
        self.held_total[kind] += 1

    def text(self, kind: str, message: str, now: float) -> str | None:
        """The event's text, or None when held back: `message`, and the count held back."""
        say, held = self.admit(kind, now)
        if not say:
            return None
        if held:
            return f"{message} (and {held} more like it in the last {self.period:g} s)"
        return message
