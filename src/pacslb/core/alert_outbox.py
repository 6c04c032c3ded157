"""A channel's outbox: the messages waiting to be delivered, and when to try a failed one again.

Pure: time comes in as `now` (monotonic seconds); control/alerts.py's channel worker takes
what is due, delivers it and says how it went. One mechanism for every channel (mail, syslog,
webhook): a message that failed for a passing reason (a relay restarting, an SMTP 4xx, a
refused or reset connection, a timeout) goes back into the outbox with a due time, `backoff`
seconds later and doubled for each next attempt, at most `retries` times. Meanwhile the
messages behind it go out: a retry waits for its time, the queue never waits for a retry. Among
those due, the oldest goes first, so a relay back after a pause gets them in their order;
and once one message went through, the retries waiting are tried at once (the peer answers
again). The outbox is bounded: past `size` messages a new one is refused (and said).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pacslb.core.alerts import Message


@dataclass(frozen=True, slots=True)
class Pending:
    """A message in the outbox: how often it was tried, when it is due, its place in line."""

    message: Message
    seq: int
    due: float
    attempts: int = 0


class Outbox:
    def __init__(self, size: int, retries: int, backoff: float) -> None:
        self.size = size
        self.retries = retries
        self.backoff = backoff
        self._waiting: list[Pending] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def retrying(self) -> int:
        """Messages waiting for another attempt."""
        return sum(1 for p in self._waiting if p.attempts)

    def put(self, message: Message, now: float) -> bool:
        """Queue a new message, due now; False when the outbox is full (not queued)."""
        if len(self._waiting) >= self.size:
            return False
        self._seq += 1
        self._waiting.append(Pending(message, self._seq, now))
        return True

    def take(self, now: float) -> Pending | None:
        """The oldest message due at `now`, out of the outbox; None when none is due."""
        due = [p for p in self._waiting if p.due <= now]
        if not due:
            return None
        first = min(due, key=lambda p: p.seq)
        self._waiting.remove(first)
        return first

    def next_due(self) -> float | None:
        return min((p.due for p in self._waiting), default=None)

    def failed(self, pending: Pending, now: float, passing: bool) -> float | None:
        """`pending` was tried and not delivered. Seconds until its next attempt (it is back
        in the outbox, in its old place in line), or None: given up (the reason is not a
        passing one, or the attempts are spent)."""
        attempts = pending.attempts + 1
        if not passing or attempts > self.retries:
            return None
        wait = self.backoff * 2.0 ** (attempts - 1)
        self._waiting.append(replace(pending, due=now + wait, attempts=attempts))
        return wait

    def delivered(self, now: float) -> None:
        """A message went through: the peer answers again, so the retries waiting are due."""
        self.hurry(now)

    def hurry(self, now: float) -> None:
        """Make every waiting message due now (a delivery went through; a stop's last try)."""
        self._waiting = [replace(p, due=min(p.due, now)) for p in self._waiting]
