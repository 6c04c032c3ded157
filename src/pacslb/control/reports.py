"""The Reports page's data: counters sampled every few seconds, drawn as inline SVG.

The sampler reads `ControlProcess.counters()` (what the engines already report) into
core/timeseries.History rings per real server and per VIP (the sum of its servers), in memory:
an hour at full resolution, a day at five-minute resolution. A restart starts the graphs afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from pacslb.core.svg import Line, line_chart
from pacslb.core.timeseries import DAY, HOUR, History, Sample, rates

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

SPANS = {"hour": HOUR, "day": DAY}
Key = tuple[str, str]  # (service, server); server "" = the whole VIP


class Sampler:
    def __init__(self, process: ControlProcess, interval: float) -> None:
        self.process = process
        self.interval = interval
        self.histories: dict[Key, History] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self, now: float) -> None:
        """One sample of every real server and VIP at `now` (unix seconds)."""
        counters = self.process.counters()
        for vs in self.process.config.virtual_services:
            vip = Sample(now)
            for rs in vs.real_servers:
                count = counters.get((vs.label, rs.label))
                one = Sample(now)
                if count is not None:
                    one = Sample(now, count.active, count.total, count.bytes_in, count.bytes_out)
                self._history((vs.label, rs.label)).add(one)
                vip = vip + one
            self._history((vs.label, "")).add(vip)
        known = {(vs.label, "") for vs in self.process.config.virtual_services} | {
            (vs.label, rs.label)
            for vs in self.process.config.virtual_services
            for rs in vs.real_servers
        }
        for key in [k for k in self.histories if k not in known]:
            del self.histories[key]  # removed from the config

    def _history(self, key: Key) -> History:
        history = self.histories.get(key)
        if history is None:
            history = self.histories[key] = History(self.interval)
        return history

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="report sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a bad sample must not end the graphs
                self.sample(time.time())
            await asyncio.sleep(self.interval)

    def charts(self, service: str, servers: list[str], span: str, now: float) -> list[str]:
        """Open connections (a count: whole-number axis), new connections per second, and
        throughput in (client to server) and out, for a VIP (server "") or its servers."""
        seconds = SPANS.get(span, HOUR)
        active: list[Line] = []
        new: list[Line] = []
        moved: list[Line] = []
        for server in servers:
            history = self.histories.get((service, server))
            samples = history.window(now, seconds) if history else []
            name = server or service
            per = rates(samples)
            active.append(Line(name, [(s.t, float(s.active)) for s in samples]))
            new.append(Line(name, [(r.t, r.connections_per_s) for r in per]))
            moved.append(Line(f"{name} in", [(r.t, r.in_per_s) for r in per]))
            moved.append(Line(f"{name} out", [(r.t, r.out_per_s) for r in per]))
        what = f"{service}" + ("" if servers == [""] else " real servers")
        since, width = now - seconds, 600  # two side by side on a 1280-pixel screen
        return [
            line_chart(f"{what}: open connections", active, since, now, width=width, integer=True),
            line_chart(f"{what}: new connections per second", new, since, now, "/s", width),
            line_chart(f"{what}: throughput in and out", moved, since, now, "B/s", width),
        ]
