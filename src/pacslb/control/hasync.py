"""What keeps flows across an HA takeover, started beside the control process: state sync
(control/statesync.py) and, for l4-nat and l4-snat, conntrackd (control/conntrackd.py).

Both run only when `node.ha` is enabled; either failing to start is an event, never a reason
for the control process to stop (the node still serves, it only loses flows at a takeover). A
start that fails (at boot the HA interface may have no address yet; on a restart the port may
still be taken) is tried again with growing pauses, as the keepalived supervisor does, and
until it succeeds the node says so: a `degraded` line (status, /metrics pacslb_degraded, the
banner) and the gauge pacslb_ha_sync_up. Degraded, not "not ready": the node forwards with
the config in force; what it lacks is that its flows would not survive a takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pacslb import config as c
from pacslb.core import conntrackd as conntrackd_conf
from pacslb.core.ha_role import ha_enabled

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess
    from pacslb.control.conntrackd import ConntrackdSupervisor
    from pacslb.control.statesync import StateSync


REJECT_REASONS = (
    "bad-mac",
    "replay",
    "stale",
    "reflected",
    "misdirected",
    "malformed",
    "not-sync",
    "unknown-peer",
)


RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # seconds between tries of a failed start
PARTS = {"statesync": "state sync", "conntrackd": "conntrackd"}  # attribute: its name


Note = Callable[[str], None]


class HaSync:
    def __init__(self) -> None:
        self.statesync: StateSync | None = None
        self.conntrackd: ConntrackdSupervisor | None = None
        self.wanted: set[str] = set()  # the parts this config runs (PARTS' keys)
        self.failing: dict[str, str] = {}  # part -> why its last start failed
        self.tries: dict[str, int] = {}
        self._retries: list[asyncio.Task[None]] = []

    def degraded(self) -> list[str]:
        """One line per part that should run and does not (control/app.py's degraded())."""
        return [
            f"{PARTS[part]} is not running, so flows will not survive a takeover: {why} "
            f"(tried {self.tries.get(part, 0)} times; trying again)"
            for part, why in sorted(self.failing.items())
        ]

    async def flush(self) -> None:
        """One last round of state sync (a graceful stop of the active node), at most 1 s."""
        if self.statesync is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.statesync.round(), 1.0)

    async def close(self) -> None:
        for task in self._retries:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._retries = []
        for part in (self.statesync, self.conntrackd):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.close()

    def status(self) -> dict[str, Any]:
        return {
            "state_sync": self.statesync.status() if self.statesync else None,
            "conntrackd": self.conntrackd.status() if self.conntrackd else None,
            "failing": dict(self.failing),
        }


async def reconfigure_ha_sync(
    process: ControlProcess, sync: HaSync | None, old: c.Config
) -> HaSync | None:
    """A config applied at run time: state sync and conntrackd start again when what they run
    with changed (node.ha, or the NAT services' addresses that conntrackd's filter names)."""
    new = process.config
    if old.node.ha == new.node.ha and conntrackd_conf.inputs(old) == conntrackd_conf.inputs(new):
        return sync
    if sync is not None:
        await sync.close()
    if ha_enabled(new) or sync is not None:
        process._record("ha", "HA settings or NAT services changed: state sync restarted")
    return await start_ha_sync(process)


async def start_ha_sync(process: ControlProcess) -> HaSync | None:
    config = process.config
    ha = config.node.ha
    if ha is None or not ha_enabled(config):
        return None
    from pacslb.control.conntrackd import ConntrackdSupervisor
    from pacslb.control.statesync import StateSync

    sync = HaSync()

    def note(message: str) -> None:
        process._record("ha", message)

    def make_statesync() -> StateSync:
        return StateSync(ha, process.ha, process.engines, note)

    def make_conntrackd() -> ConntrackdSupervisor:
        return ConntrackdSupervisor(config, process.state_dir, process.ha, note)

    await _start_part(sync, "statesync", make_statesync, note)
    if conntrackd_conf.wanted(config):
        await _start_part(sync, "conntrackd", make_conntrackd, note)
    return sync


async def _start_part(sync: HaSync, part: str, make: Callable[[], Any], note: Note) -> None:
    """Start one part now; when that fails, keep trying in the background (RETRY_DELAYS)."""
    sync.wanted.add(part)
    if await _try_start(sync, part, make, note):
        return

    async def retry() -> None:
        for turn in itertools.count():
            await asyncio.sleep(RETRY_DELAYS[min(turn, len(RETRY_DELAYS) - 1)])
            if await _try_start(sync, part, make, note):
                return

    sync._retries.append(asyncio.get_running_loop().create_task(retry()))


async def _try_start(sync: HaSync, part: str, make: Callable[[], Any], note: Note) -> bool:
    sync.tries[part] = sync.tries.get(part, 0) + 1
    try:
        started = make()
        await started.start()
    except (OSError, ValueError) as exc:
        why = str(exc)
        if sync.failing.get(part) != why:  # an event per distinct cause, not per try
            lost = "flows" if part == "statesync" else "NAT flows"
            note(
                f"{PARTS[part]} not started ({lost} will not survive a takeover): {why}; "
                "trying again"
            )
        sync.failing[part] = why
        return False
    setattr(sync, part, started)
    if sync.failing.pop(part, None) is not None:
        note(f"{PARTS[part]} started at try {sync.tries[part]}")
    return True


def metrics(sync: HaSync) -> Iterator[Metric]:
    """/metrics: whether each part runs, datagrams of state sync, and conntrackd's restarts
    and commits."""
    up = GaugeMetricFamily(
        "pacslb_ha_sync_up",
        "1 while the part that carries flows across a takeover runs (statesync, conntrackd); "
        "0 while its start fails and is tried again (status: degraded says why)",
        labels=["part"],
    )
    for part in sorted(sync.wanted):
        up.add_metric([part], float(getattr(sync, part) is not None))
    yield up
    s = sync.statesync
    if s is not None:
        sent = CounterMetricFamily(
            "pacslb_sync_sent", "state sync datagrams sent (one per peer and datagram)"
        )
        sent.add_metric([], float(s.sent))
        received = CounterMetricFamily(
            "pacslb_sync_received", "state sync datagrams received and accepted"
        )
        received.add_metric([], float(s.received))
        rejected = CounterMetricFamily(
            "pacslb_sync_rejected",
            "state sync datagrams dropped, by reason (bad-mac: not this group's secret; "
            "replay; stale: clocks more than 30 s apart; reflected: this node's own datagram "
            "sent back, or one addressed to its sender; misdirected: addressed to other nodes; "
            "malformed; not-sync; unknown-peer)",
            labels=["reason"],
        )
        for reason in REJECT_REASONS:
            rejected.add_metric([reason], float(s.rejected.get(reason, 0)))
        held = CounterMetricFamily(
            "pacslb_sync_events_held_back",
            "state sync troubles not recorded as events (at most one per kind a minute), by kind",
            labels=["kind"],
        )
        for kind, count in sorted(s.throttle.held_total.items()):
            held.add_metric([kind], float(count))
        imported = CounterMetricFamily(
            "pacslb_sync_imported_entries", "flow and persistence entries taken from peers"
        )
        imported.add_metric([], float(s.imported))
        interval = GaugeMetricFamily(
            "pacslb_sync_interval_seconds", "seconds between rounds of sending (on the active node)"
        )
        interval.add_metric([], s.interval)
        yield from (sent, received, rejected, held, imported, interval)
        mirror = next((e.sticky for e in s.engines if hasattr(e, "sticky")), None)
        if mirror is not None and hasattr(mirror, "skipped"):
            skipped = CounterMetricFamily(
                "pacslb_sync_sticky_skipped",
                "l7 sticky entries from the peer not taken, by reason (malformed; "
                "unknown-service: no source-ip persistence here; full: the table's bound)",
                labels=["reason"],
            )
            for reason in ("malformed", "unknown-service", "full"):
                skipped.add_metric([reason], float(mirror.skipped.get(reason, 0)))
            yield skipped
    d = sync.conntrackd
    if d is not None:
        up = GaugeMetricFamily("pacslb_conntrackd_up", "1 while conntrackd runs")
        up.add_metric([], float(bool(d.status()["running"])))
        restarts = CounterMetricFamily("pacslb_conntrackd_restarts", "conntrackd restarted")
        restarts.add_metric([], float(d.restarts))
        commits = CounterMetricFamily(
            "pacslb_conntrackd_commits", "external caches committed into the kernel (takeovers)"
        )
        commits.add_metric([], float(d.commits))
        yield from (up, restarts, commits)
