"""The health checker: probes every real server on its interval and reports transitions.

Each target runs its own small loop on a fixed-rate schedule, offset by a stable hash of its name
so that a thousand servers with the same interval are spread across it instead of all being
probed at once (no thundering herd). A semaphore bounds how many probes run at once; each probe
bounds itself with its timeout, so a hanging server delays nobody else. Decisions (rise/fall)
are the sans-I/O HealthTracker's; this module only does the timing and the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pacslb import config as c
from pacslb.control.probes import ProbeResult, run_check, target_for
from pacslb.core.health import HealthTracker, Transition
from pacslb.core.plan import ServerKey
from pacslb.core.state import Health

OnTransition = Callable[[ServerKey, Transition, ProbeResult], None]

# Probe slots sit on a grid of this step, so the probes due in one tick share one wake-up of the
# event loop: measured (bench/checks_1000.py) 1,000 connect checks every 2 s fell from 14 % to
# 7-8 % of a core on uvloop, for a few ms of lateness; with ~40 ticks per interval there is still
# no herd.
TICK = 0.05
FD_RESERVE = 512  # descriptors kept for listeners, clients and files, whatever the checks need


Schedule = tuple[float, float] | None  # (interval, timeout); None: no check, never probed


@dataclass
class TargetState:
    """What the checker knows of one real server (mutable: the loop updates it)."""

    key: ServerKey
    tracker: HealthTracker
    signature: str
    schedule: Schedule
    last: ProbeResult | None = None
    last_at: float | None = None  # wall clock of the last result
    checks: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def spread(key: ServerKey, interval: float) -> float:
    """A stable offset in [0, interval): the same server keeps its slot across restarts."""
    digest = hashlib.blake2b("/".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


# How often and how patiently a check runs, and how many results decide: an edit of these
# alone changes the schedule, never what the server's last result said.
TIMING = frozenset({"interval", "timeout", "rise", "fall"})


def _without_timing(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_timing(v) for k, v in data.items() if k not in TIMING}
    if isinstance(data, list):
        return [_without_timing(v) for v in data]
    return data


def _what(check: c.HealthCheck) -> str:
    """What a probe's answer depends on in the check itself: its kind and settings (path,
    expected text, AE titles, ...), timing left out. Computed once per service."""
    return json.dumps(_without_timing(check.model_dump(mode="json")), sort_keys=True)


def _signature(what: str, vs: c.VirtualService, rs: c.RealServer) -> str:
    """`what` (_what) and where the probe goes. Only an edit of these resets the server's
    health; a weight, threshold or interval edit keeps it, so a server does not turn 'not
    checked yet' (usable) because the operator slowed its checks down."""
    return "|".join((what, repr(target_for(vs, rs, vs.health_check))))


def _schedule(check: c.HealthCheck) -> Schedule:
    """When a probe runs and how long it may take: a change restarts the server's loop on the
    new schedule (a new slot), with the same tracker. rise and fall are not in it: they are
    the tracker's alone, retuned in place, so the loop and its slot stay."""
    return None if isinstance(check, c.NoCheck) else (check.interval, check.timeout)


def _thresholds(check: c.HealthCheck) -> tuple[int, int]:
    return (1, 1) if isinstance(check, c.NoCheck) else (check.rise, check.fall)


class HealthChecker:
    def __init__(self, on_transition: OnTransition, concurrency: int | None = None) -> None:
        self._on_transition = on_transition
        self._fixed_concurrency = concurrency
        self._semaphore = asyncio.Semaphore(concurrency or 256)
        self._targets: dict[ServerKey, TargetState] = {}
        # Lateness of each probe start against its slot, in seconds: the jitter figure.
        self.lateness: deque[float] = deque(maxlen=10000)

    def configure(self, config: c.Config) -> None:
        """Start loops for new servers, restart changed ones, stop removed ones.

        A server whose check and address are unchanged keeps its tracker and its loop, so a
        config edit elsewhere does not reset its health; one whose check only runs at another
        interval or timeout keeps its tracker and last result on a new loop; a rise or fall
        edit retunes the tracker in place (the loop and its slot stay)."""
        wanted: dict[ServerKey, tuple[c.VirtualService, c.RealServer, str]] = {}
        schedules: dict[str, Schedule] = {}
        for vs in config.virtual_services:  # a service's check is looked at once, not per server
            what = _what(vs.health_check)
            schedules[vs.label] = _schedule(vs.health_check)
            for rs in vs.real_servers:
                wanted[(vs.label, rs.label)] = (vs, rs, _signature(what, vs, rs))
        for key in list(self._targets):
            state = self._targets[key]
            entry = wanted.get(key)
            if entry is None or entry[2] != state.signature:
                self._stop(key)
                continue
            vs, rs, _ = entry
            if schedules[vs.label] != state.schedule:
                self._reschedule(state, vs, rs, schedules[vs.label])
            elif _thresholds(vs.health_check) != (state.tracker.rise, state.tracker.fall):
                state.tracker.retune(*_thresholds(vs.health_check))  # the loop keeps its slot
        self._size_semaphore(len(wanted))
        for key, (vs, rs, signature) in wanted.items():
            if key in self._targets:
                continue
            tracker = HealthTracker(*_thresholds(vs.health_check))
            state = TargetState(key, tracker, signature, schedules[vs.label])
            self._targets[key] = state
            self._start(state, vs, rs)

    def _start(self, state: TargetState, vs: c.VirtualService, rs: c.RealServer) -> None:
        state.task = asyncio.get_running_loop().create_task(
            self._loop(state, vs, rs), name=f"check {state.key[0]}/{state.key[1]}"
        )

    def _reschedule(
        self, state: TargetState, vs: c.VirtualService, rs: c.RealServer, schedule: Schedule
    ) -> None:
        """Same probe, new interval or timeout: the loop restarts, the health and last result
        stay."""
        if state.task is not None:
            state.task.cancel()
        state.tracker.retune(*_thresholds(vs.health_check))
        state.schedule = schedule
        self._start(state, vs, rs)

    def _size_semaphore(self, targets: int) -> None:
        """Room for every target's probe at once (timeout <= interval means at most one each),
        so that many hanging servers cannot queue the healthy ones; bounded by descriptors."""
        if self._fixed_concurrency is not None:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        budget = max(64, soft - FD_RESERVE) if soft != resource.RLIM_INFINITY else targets
        # In-flight probes keep the semaphore they acquired; new ones take this one.
        self._semaphore = asyncio.Semaphore(max(64, min(targets + 16, budget)))

    def _stop(self, key: ServerKey) -> None:
        state = self._targets.pop(key)
        if state.task is not None:
            state.task.cancel()

    async def close(self) -> None:
        tasks = [s.task for s in self._targets.values() if s.task is not None]
        for key in list(self._targets):
            self._stop(key)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def health(self) -> dict[ServerKey, Health]:
        return {key: state.tracker.state for key, state in self._targets.items()}

    def target(self, key: ServerKey) -> TargetState | None:
        return self._targets.get(key)

    def __len__(self) -> int:
        return len(self._targets)

    async def _loop(self, state: TargetState, vs: c.VirtualService, rs: c.RealServer) -> None:
        check = vs.health_check
        if isinstance(check, c.NoCheck):
            self._observe(state, ProbeResult(True, "none: always up", 0.0))
            return
        loop = asyncio.get_running_loop()
        interval = check.interval
        target = target_for(vs, rs, check)
        tick = min(TICK, interval / 20)
        slot = (
            math.ceil(loop.time() / tick) * tick + round(spread(state.key, interval) / tick) * tick
        )
        while True:
            await asyncio.sleep(max(0.0, slot - loop.time()))
            async with self._semaphore:
                self.lateness.append(loop.time() - slot)
                try:
                    result = await run_check(check, vs, rs, target)
                except Exception as exc:  # a probe bug must not end this server's checks
                    result = ProbeResult(False, f"{check.type}: probe error: {exc!r}", 0.0)
            self._observe(state, result)
            # Fixed rate: the next slot is one interval after this one's, not after the end of
            # the probe; slots missed by a long probe are skipped, never run in a burst.
            slot += interval
            behind = loop.time() - slot
            if behind > 0:
                slot += interval * (behind // interval + 1)

    def _observe(self, state: TargetState, result: ProbeResult) -> None:
        state.last, state.last_at = result, time.time()
        state.checks += 1
        transition = state.tracker.observe(result.ok, result.reason, time.monotonic())
        if transition is not None:
            self._on_transition(state.key, transition, result)
