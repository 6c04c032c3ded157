"""What a proxy worker has to tell an operator: out of descriptors, a service at its connection
budget, a real server taken out by passive health. The worker queues a Notice; the control
process takes the queue (`{"cmd": "notices"}`) with the counters each second and records each
as an event, so a fault inside the data plane is never only a line in the worker's log.

The queue is bounded and repeats are rate-limited per `key`: a flood of EMFILE must cost a few
events, not memory.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass

MAX_PENDING = 256  # notices kept between two polls; older ones are dropped (and counted)
REPEAT_AFTER = 10.0  # seconds before the same key may be noticed again


@dataclass(frozen=True, slots=True)
class Notice:
    message: str
    service: str = ""
    server: str = ""
    at: float = 0.0  # unix time


_pending: deque[Notice] = deque(maxlen=MAX_PENDING)
_last: dict[str, float] = {}
_dropped = 0


def notice(message: str, service: str = "", server: str = "", key: str | None = None) -> bool:
    """Queue a notice; False when the same `key` (default: the message) was noticed less than
    REPEAT_AFTER seconds ago."""
    global _dropped
    now = time.time()
    key = key if key is not None else f"{service}/{server}/{message}"
    if now - _last.get(key, -REPEAT_AFTER) < REPEAT_AFTER:
        return False
    _last[key] = now
    if len(_last) > 4 * MAX_PENDING:  # forget old keys, so the map stays small
        for old in [k for k, t in _last.items() if now - t >= REPEAT_AFTER]:
            del _last[old]
    if len(_pending) == MAX_PENDING:
        _dropped += 1
    _pending.append(Notice(message, service, server, now))
    return True


def take() -> list[dict[str, object]]:
    """Every queued notice (oldest first), as JSON-ready dicts; the queue is emptied."""
    global _dropped
    out: list[dict[str, object]] = [asdict(n) for n in _pending]
    _pending.clear()
    if _dropped:
        out.append(asdict(Notice(f"{_dropped} more notices dropped", at=time.time())))
        _dropped = 0
    return out
