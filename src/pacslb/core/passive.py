"""Passive health: which real servers live traffic takes out of rotation, and for how long.

HAProxy's `observe layer4|layer7` with `error-limit N` and `on-error mark-down`, and Envoy's
outlier detection (consecutive errors, ejection time that grows with each repeat, capped, and
a cap on how much of the cluster may be ejected): a server that fails N times in a row in live
traffic is ejected for `ejection` seconds, twice as long for each repeat, up to
`max_ejection`; a server that stayed in rotation for `max_ejection` seconds since its return
starts again from `ejection`. The last available server is never ejected: a failing server
still serves some clients, none at all serves nobody.

Decisions only (time comes in as `now`); the proxy counts the failures and applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacslb.core.plan import PlanPassive

__all__ = ["Ejection", "PassiveHealth"]


@dataclass(frozen=True, slots=True)
class Ejection:
    """A server taken out of rotation until `until` (the `count`-th time in a row)."""

    server: str
    seconds: float
    until: float
    count: int


@dataclass(slots=True)
class _Record:
    count: int = 0  # ejections in a row (reset after max_ejection seconds in rotation)
    until: float = 0.0  # ejected until (0: in rotation)
    returned: float = 0.0  # when it last came back


class PassiveHealth:
    """The ejection state of one virtual service's servers (in one proxy worker)."""

    def __init__(self, policy: PlanPassive) -> None:
        self.policy = policy
        self._servers: dict[str, _Record] = {}

    def ejected(self, server: str) -> bool:
        record = self._servers.get(server)
        return record is not None and record.until > 0

    def failed(
        self, server: str, consecutive: int, others_available: bool, now: float
    ) -> Ejection | None:
        """`server` failed for the `consecutive`-th time in a row: the Ejection, or None when
        it stays (below the limit, passive health off, already out, or the last one left)."""
        limit = self.policy.consecutive_failures
        if not limit or consecutive < limit or not others_available or self.ejected(server):
            return None
        record = self._servers.setdefault(server, _Record())
        policy = self.policy
        if record.count and now - record.returned >= policy.max_ejection:
            record.count = 0  # long enough back in rotation: forgiven
        record.count += 1
        seconds = min(policy.ejection * 2 ** min(record.count - 1, 30), policy.max_ejection)
        record.until = now + seconds
        return Ejection(server, seconds, record.until, record.count)

    def returned(self, server: str, now: float) -> bool:
        """Back in rotation (its time is over, or nothing else is left); False if it was not out."""
        record = self._servers.get(server)
        if record is None or not record.until:
            return False
        record.until = 0.0
        record.returned = now
        return True

    def due(self, now: float) -> list[str]:
        """The ejected servers whose time is over."""
        return [s for s, r in self._servers.items() if r.until and r.until <= now]

    def out(self) -> list[str]:
        """Every server ejected now."""
        return [s for s, r in self._servers.items() if r.until]

    def forget(self, keep: set[str]) -> None:
        """Drop the records of servers no longer in the service."""
        for server in [s for s in self._servers if s not in keep]:
            del self._servers[server]
