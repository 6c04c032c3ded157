"""A bounded pool of idle connections per key, newest first, aged out after a timeout."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class IdlePool(Generic[K, T]):
    """Idle connections per key (a real server), without I/O: last in, first out, so that the
    most recently used (most surely alive) is reused and the others age out. What `put`
    refuses and what `expire` and `clear` return is for the caller to close."""

    def __init__(self, max_idle: int, timeout: float) -> None:
        self.max_idle = max_idle
        self.timeout = timeout
        self._idle: dict[K, list[tuple[float, T]]] = {}

    def get(self, key: K) -> T | None:
        idle = self._idle.get(key)
        return idle.pop()[1] if idle else None

    def put(self, key: K, item: T, now: float) -> bool:
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        elif len(idle) >= self.max_idle:
            return False
        idle.append((now, item))
        return True

    def discard(self, key: K, item: T) -> None:
        idle = self._idle.get(key)
        if idle:
            idle[:] = [entry for entry in idle if entry[1] is not item]

    def expire(self, now: float, gone: Callable[[K], bool] = lambda key: False) -> list[T]:
        """Remove what idled longer than `timeout`, and everything of keys that are `gone`."""
        out: list[T] = []
        limit = now - self.timeout
        for key, idle in list(self._idle.items()):
            drop = gone(key)
            out += [item for since, item in idle if drop or since < limit]
            idle[:] = [] if drop else [(since, item) for since, item in idle if since >= limit]
            if not idle:
                del self._idle[key]
        return out

    def clear(self) -> list[T]:
        out = [item for idle in self._idle.values() for _, item in idle]
        self._idle.clear()
        return out
