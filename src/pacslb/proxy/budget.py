"""A service's connection budget inside a proxy worker (the numbers: pacslb.core.budget).

Listeners of the service take from its budget as they accept and give back as connections
close. A listener that finds no room stops accepting (its reader is removed: the kernel's
accept queue holds the clients, as HAProxy's per-frontend maxconn pauses its listener) and
waits here; the first connection of the service that closes wakes it. Reaching the budget is
noticed (rate-limited), so a flood is an event, not a silence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
from collections.abc import Iterable
from typing import Protocol

from pacslb.proxy import notices

UNLIMITED = 1 << 62


class Pausable(Protocol):
    def resume_accepting(self) -> None:
        """Room again in the budget: accept what the kernel's queue holds."""


class ServiceBudget:
    """How many client connections one service holds in this worker, and its limit."""

    __slots__ = ("label", "limit", "peak", "used", "waiting")

    def __init__(self, label: str, limit: int = UNLIMITED) -> None:
        self.label = label
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most `used` since the FloodTrimmer last looked
        self.waiting: list[Pausable] = []  # listeners paused for want of room

    def room(self) -> int:
        return self.limit - self.used

    def take(self, n: int = 1) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def give(self, n: int = 1) -> None:
        self.used -= n
        if self.waiting and self.used < self.limit:
            self._wake()

    def set_limit(self, limit: int) -> None:
        """A new Plan's budget; a raised one lets the paused listeners go on at once."""
        self.limit = limit
        if self.waiting and self.used < limit:
            self._wake()

    def wait(self, listener: Pausable, where: str) -> None:
        """`listener` (a port of this service, `where`) stopped accepting: wake it when a
        connection closes, and tell the operator."""
        if listener not in self.waiting:
            self.waiting.append(listener)
        notices.notice(
            f"at its connection budget of {self.limit} in proxy worker {os.getpid()}: "
            f"{where} accepts no more until a connection closes (new clients wait in the "
            "kernel's accept queue); raise the service's max_connections or LimitNOFILE=",
            service=self.label,
            key=f"budget/{self.label}",
        )

    def stop_waiting(self, listener: Pausable) -> None:
        """A listener that closes no longer waits."""
        if listener in self.waiting:
            self.waiting.remove(listener)

    def _wake(self) -> None:
        waiting, self.waiting = self.waiting, []
        for listener in waiting:
            listener.resume_accepting()


def out_of_descriptors(label: str, where: str, error: OSError) -> None:
    """accept() failed for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    notices.notice(
        f"out of descriptors or memory in proxy worker {os.getpid()}: accept on {where} failed "
        f"({os.strerror(error.errno or 0)}; descriptor limit {soft}); new clients wait in the "
        "kernel's accept queue. Raise LimitNOFILE= or lower the services' max_connections",
        service=label,
        key=f"emfile/{label}",
    )


def raise_descriptor_limit() -> int:
    """The soft descriptor limit raised to the hard one (a process may always do that);
    returns the limit now in force. Called once per process: by `pacslb run` (its proxy
    workers inherit the limit) and by `pacslb proxy` (a worker started otherwise, e.g. by
    hand, must not depend on it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else UNLIMITED


TRIM_AFTER = 1000  # connections fewer than the peak: a flood has ended, memory is given back
TRIM_INTERVAL = 5.0  # seconds between two looks at the connection count


class FloodTrimmer:
    """Gives a flood's memory back once it has ended.

    After 5,000-connection floods a worker's RSS grew 41 -> 46 -> 49 -> 51 MB (bench/faults.py
    --only flood): the connections' objects refer to each other, and with the collector tuned
    for speed (server.tune_gc: young collections every 50,000 allocations, old ones rarer
    still) their cycles outlive them in the old generations; glibc then keeps the freed heap. A full
    collection and malloc_trim(0) when the count has fallen by TRIM_AFTER from its peak keep
    it near 45-46 MB (measured there) and cost a pause only when a flood ends, never per
    connection."""

    def __init__(self) -> None:
        self._malloc_trim = _malloc_trim()

    def observe(self, budgets: Iterable[ServiceBudget]) -> bool:
        """A look at the services' connections (each budget's peak since the last look, and
        now); True when memory was given back."""
        peak = now = 0
        for budget in budgets:
            peak += budget.peak
            now += budget.used
            budget.peak = budget.used
        if peak - now < TRIM_AFTER:
            return False
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        return True


def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    """glibc's malloc_trim (None elsewhere: musl or another libc)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
