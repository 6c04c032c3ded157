"""What the control process decides about its proxy workers, without I/O: when a worker that
does not answer counts as hung, and counters that survive a worker's replacement.

A hung worker (stopped, deadlocked, swapping) still holds its SO_REUSEPORT listening sockets,
so the kernel keeps queueing new connections to it: it must be found and killed. A worker's
counters live in its own memory, so a replaced worker starts again from zero; the totals it had
counted are kept as a retired base and added to every later sum, so totals never go backwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pacslb.core.plan import ServerKey

# Hung after this many consecutive unanswered pings (one a second, each with a 1 s timeout),
# and no answer for at least HANG_AFTER seconds. One missed ping is not enough: a worker may
# stall for a moment (a large Plan with many TLS certificates, a full garbage collection, a
# busy host), and so may the control process itself, which would time out a ping that was in
# fact answered. Killing a worker costs every connection it holds (a C-STORE in progress), so
# it takes three misses in a row; a hang still costs at most ~4 s of the new connections the
# kernel deals to that worker.
HANG_MISSES = 3
HANG_AFTER = 2.5

# ServerStats.as_dict() fields that add up across workers; `active` and `ejected` (in how many
# workers passive health has the server out now) are not totals: a replaced worker's
# connections and ejections are gone with it, so they are not carried over.
# The l7-dicom counters (proxy/runtime.ServerStats) likewise; `assoc_seconds` is a float.
TOTALS = (
    "total",
    "bytes_in",
    "bytes_out",
    "connect_failures",
    "requests",
    "retries",
    "ejections",
    "associations",
    "assoc_rejected",
    "assoc_aborted",
    "pdata_pdus",
    "assoc_seconds",
)
SUMMED = ("active", "ejected", "assoc_active", *TOTALS)
_FLOATS = frozenset({"assoc_seconds"})

# One worker's counters ({"cmd": "counters"}, or "counters" in {"cmd": "report"}):
# {service: {server: ServerStats.as_dict()}}.
WorkerCounters = Mapping[str, Mapping[str, Mapping[str, Any]]]


@dataclass(slots=True)
class PingWatch:
    """Consecutive unanswered pings of one worker."""

    last_answer: float  # monotonic time of the last answer (or of the start)
    misses: int = 0

    def answered(self, now: float) -> None:
        self.last_answer, self.misses = now, 0

    def missed(self, now: float) -> bool:
        """Count a ping without an answer; True once the worker counts as hung."""
        self.misses += 1
        return self.misses >= HANG_MISSES and now - self.last_answer >= HANG_AFTER


@dataclass(slots=True)
class ServerTally:
    values: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(SUMMED, 0))
    responses: dict[str, int] = field(default_factory=dict)

    def add(self, stats: Mapping[str, Any], names: Iterable[str]) -> None:
        for name in names:
            value = stats.get(name, 0)
            self.values[name] += float(value) if name in _FLOATS else int(value)
        for cls, n in stats.get("responses", {}).items():
            self.responses[cls] = self.responses.get(cls, 0) + int(n)


class CounterSum:
    """Counters of all workers, live and replaced: sum() never goes backwards as long as each
    worker's own counters do not, and a worker's last read is retired before it is replaced."""

    def __init__(self) -> None:
        self.retired: dict[ServerKey, ServerTally] = {}

    def retire(self, last: WorkerCounters | None) -> None:
        """Keep the totals (not `active`) of a worker that is being replaced."""
        for key, stats in _entries(last or {}):
            self.retired.setdefault(key, ServerTally()).add(stats, TOTALS)

    def sum(self, live: Iterable[WorkerCounters | None]) -> dict[ServerKey, ServerTally]:
        out: dict[ServerKey, ServerTally] = {}
        for key, base in self.retired.items():
            out[key] = ServerTally(dict(base.values), dict(base.responses))
        for counters in live:
            for key, stats in _entries(counters or {}):
                out.setdefault(key, ServerTally()).add(stats, SUMMED)
        return out


def _entries(counters: WorkerCounters) -> Iterable[tuple[ServerKey, Mapping[str, Any]]]:
    for service, servers in counters.items():
        for server, stats in servers.items():
            yield (service, server), stats
