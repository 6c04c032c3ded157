"""What keeps flows across an HA takeover, started beside the control process: state sync
(control/statesync.py) and, for l4-nat and l4-snat, conntrackd (control/conntrackd.py).

Both run only when `node.ha` is enabled; either failing to start is an event, never a reason
for the control process to stop (the node still serves, it only loses flows at a takeover).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
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


class HaSync:
    def __init__(self) -> None:
        self.statesync: StateSync | None = None
        self.conntrackd: ConntrackdSupervisor | None = None

    async def flush(self) -> None:
        """One last round of state sync (a graceful stop of the active node), at most 1 s."""
        if self.statesync is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.statesync.round(), 1.0)

    async def close(self) -> None:
        for part in (self.statesync, self.conntrackd):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.close()

    def status(self) -> dict[str, Any]:
        return {
            "state_sync": self.statesync.status() if self.statesync else None,
            "conntrackd": self.conntrackd.status() if self.conntrackd else None,
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

    try:
        statesync = StateSync(ha, process.ha, process.engines, note)
        await statesync.start()
    except (OSError, ValueError) as exc:
        note(f"state sync not started: {exc}")
    else:
        sync.statesync = statesync
    if conntrackd_conf.wanted(config):
        supervisor = ConntrackdSupervisor(config, process.state_dir, process.ha, note)
        try:
            await supervisor.start()
        except (OSError, ValueError) as exc:
            note(f"conntrackd not started (NAT flows will not survive a takeover): {exc}")
        else:
            sync.conntrackd = supervisor
    return sync


def metrics(sync: HaSync) -> Iterator[Metric]:
    """/metrics: datagrams of state sync, and conntrackd's restarts and commits."""
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
