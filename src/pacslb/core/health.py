"""Health state of one real server from a stream of check results (rise/fall hysteresis).

HAProxy semantics (doc/configuration.txt, "rise" and "fall" server options): a server that is
UP goes DOWN after `fall` consecutive failed checks, one that is DOWN comes back UP after
`rise` consecutive successful ones, and a result of the other kind resets the streak. One
departure: a server starts UNKNOWN (usable, as keepalived and HAProxy treat new servers) and
the very first result decides UP or DOWN at once, so that a freshly started balancer knows
its servers after one check interval instead of rise * interval. The checker shell does the
probing; this class only counts, with time passed in as `now`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacslb.core.state import Health

__all__ = ["HealthTracker", "Transition"]


@dataclass(frozen=True, slots=True)
class Transition:
    """The tracked server changed health."""

    previous: Health
    current: Health
    reason: str  # the reason given with the observation that tipped it
    at: float
    streak: int  # consecutive results of the new kind, including the deciding one


class HealthTracker:
    def __init__(self, rise: int, fall: int) -> None:
        self.rise = self.fall = 1
        self.retune(rise, fall)
        self._state = Health.UNKNOWN
        self._successes = 0
        self._failures = 0
        self._last_ok: bool | None = None
        self._last_reason = ""
        self._last_at: float | None = None

    def retune(self, rise: int, fall: int) -> None:
        """New thresholds (a config edit): the state and the current streak are kept, and the
        next result is judged against the new numbers."""
        if rise < 1:
            raise ValueError(f"rise must be >= 1, got {rise}")
        if fall < 1:
            raise ValueError(f"fall must be >= 1, got {fall}")
        self.rise = rise
        self.fall = fall

    def observe(self, ok: bool, reason: str, now: float) -> Transition | None:
        """Record one check result; returns the transition it caused, if any."""
        self._last_ok = ok
        self._last_reason = reason
        self._last_at = now
        if ok:
            self._successes += 1
            self._failures = 0
        else:
            self._failures += 1
            self._successes = 0

        previous = self._state
        if previous is Health.UNKNOWN:
            current = Health.UP if ok else Health.DOWN
        elif previous is Health.UP and self._failures >= self.fall:
            current = Health.DOWN
        elif previous is Health.DOWN and self._successes >= self.rise:
            current = Health.UP
        else:
            return None
        self._state = current
        streak = self._successes if ok else self._failures
        return Transition(previous, current, reason, now, streak)

    @property
    def state(self) -> Health:
        return self._state

    @property
    def last_ok(self) -> bool | None:
        """The last result, None before the first."""
        return self._last_ok

    @property
    def last_reason(self) -> str:
        return self._last_reason

    @property
    def last_at(self) -> float | None:
        return self._last_at

    @property
    def successes(self) -> int:
        """Consecutive successful results up to now (0 after a failure)."""
        return self._successes

    @property
    def failures(self) -> int:
        """Consecutive failed results up to now (0 after a success)."""
        return self._failures
