"""A bounded pool of idle connections per key, newest first, aged out after a timeout."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class IdlePool(Generic[K, T]):
    """Idle connections per key (a real server), without I/O: last in, first out, so that the
    most recently used (most surely alive) is reused and the others age out. What `put`
    refuses and what `expire` and `clear` return is for the caller to close.

    `group` bounds keys that share one real server: with `source: client` an l7-http
    upstream is pooled per client address (proxy/http_states.py Key), so a thousand
    workstations would make a thousand keys of up to `max_idle` each. With a group, all the
    keys of a group hold at most `max_idle` together, the oldest idle one making room (handed
    to `evicted`, to close) for the newest. A key whose group is None is bounded alone (and
    costs no bookkeeping: the default source's keys, one a server)."""

    def __init__(
        self,
        max_idle: int,
        timeout: float,
        group: Callable[[K], Hashable | None] | None = None,
        evicted: Callable[[T], None] = lambda item: None,
    ) -> None:
        self.max_idle = max_idle
        self.timeout = timeout
        self._idle: dict[K, list[tuple[float, T]]] = {}
        self._group = group
        self._evicted = evicted
        # group -> its idle items, oldest first (dicts keep insertion order): id(item) -> key
        self._ages: dict[Hashable, dict[int, K]] = {}

    def get(self, key: K) -> T | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        item = idle.pop()[1]
        self._forget(key, item)
        return item

    def put(self, key: K, item: T, now: float) -> bool:
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        elif len(idle) >= self.max_idle:
            return False
        group = self._group(key) if self._group is not None else None
        if group is not None:
            ages = self._ages.setdefault(group, {})
            if len(ages) >= self.max_idle:
                self._evict(ages)
                idle = self._idle.setdefault(key, idle)  # (the oldest may have been its own)
            ages[id(item)] = key
        idle.append((now, item))
        return True

    def discard(self, key: K, item: T) -> None:
        idle = self._idle.get(key)
        if idle:
            before = len(idle)
            idle[:] = [entry for entry in idle if entry[1] is not item]
            if len(idle) != before:
                self._forget(key, item)

    def expire(self, now: float, gone: Callable[[K], bool] = lambda key: False) -> list[T]:
        """Remove what idled longer than `timeout`, and everything of keys that are `gone`."""
        out: list[T] = []
        limit = now - self.timeout
        for key, idle in list(self._idle.items()):
            drop = gone(key)
            old = [item for since, item in idle if drop or since < limit]
            idle[:] = [] if drop else [(since, item) for since, item in idle if since >= limit]
            if not idle:
                del self._idle[key]
            for item in old:
                self._forget(key, item)
            out += old
        return out

    def clear(self) -> list[T]:
        out = [item for idle in self._idle.values() for _, item in idle]
        self._idle.clear()
        self._ages.clear()
        return out

    def __len__(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def _forget(self, key: K, item: T) -> None:
        group = self._group(key) if self._group is not None else None
        if group is not None:
            ages = self._ages.get(group)
            if ages is not None:
                ages.pop(id(item), None)
                if not ages:
                    del self._ages[group]

    def _evict(self, ages: dict[int, K]) -> None:
        """Take the oldest idle item of a full group out and hand it to `evicted`."""
        ident, key = next(iter(ages.items()))
        del ages[ident]
        idle = self._idle[key]
        found = next(i for i, (_, item) in enumerate(idle) if id(item) == ident)
        item = idle.pop(found)[1]
        if not idle:
            del self._idle[key]
        self._evicted(item)
