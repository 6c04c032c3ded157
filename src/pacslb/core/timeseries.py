"""Counter history for the Reports page: a fine ring for the last hour, a coarse one for the day.

Sans-I/O: samples carry their time. The data plane's counters are cumulative (connections and
bytes since the engine started), so downsampling keeps the last sample of each coarse step and
rates come from differences; the number of open connections is a gauge, so a coarse point keeps
the highest value seen in its step (a peak must not vanish from the day view).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, replace

HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    active: int = 0  # open connections now
    total: int = 0  # connections since the engine started
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.t,
            self.active + other.active,
            self.total + other.total,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
        )


@dataclass(frozen=True, slots=True)
class Rate:
    """What the graphs draw: per interval between two samples."""

    t: float
    active: float  # open connections at the end of the interval
    connections_per_s: float
    in_per_s: float  # client -> server
    out_per_s: float  # server -> client


class History:
    """Samples of one thing (a VIP or a real server) at two resolutions."""

    def __init__(
        self,
        step: float,
        fine_span: float = HOUR,
        coarse_step: float = 300.0,
        coarse_span: float = DAY,
    ) -> None:
        self.fine_span, self.coarse_step = fine_span, coarse_step
        self.fine: deque[Sample] = deque(maxlen=int(fine_span / step) + 2)
        self.coarse: deque[Sample] = deque(maxlen=int(coarse_span / coarse_step) + 2)
        self._peak = 0  # highest `active` since the last coarse point

    def add(self, sample: Sample) -> None:
        if self.fine and sample.t <= self.fine[-1].t:
            return  # a clock step backwards: keep the series monotonic
        self.fine.append(sample)
        self._peak = max(self._peak, sample.active)
        if not self.coarse or sample.t - self.coarse[-1].t >= self.coarse_step:
            self.coarse.append(replace(sample, active=self._peak))
            self._peak = 0

    def window(self, now: float, span: float) -> list[Sample]:
        """Samples from the last `span` seconds, at the finest resolution that covers them."""
        ring = self.fine if span <= self.fine_span else self.coarse
        return [s for s in ring if s.t >= now - span]


def _grown(before: int, now: int) -> int:
    """A cumulative counter's growth; one that went down (the engine restarted) counts from 0."""
    return now - before if now >= before else now


def rates(samples: list[Sample]) -> list[Rate]:
    """Per-interval rates; a counter that went down (the engine restarted) counts from zero."""
    out: list[Rate] = []
    for prev, cur in itertools.pairwise(samples):
        dt = cur.t - prev.t
        if dt <= 0:
            continue
        conns = _grown(prev.total, cur.total)
        sent_in = _grown(prev.bytes_in, cur.bytes_in)
        sent_out = _grown(prev.bytes_out, cur.bytes_out)
        out.append(Rate(cur.t, cur.active, conns / dt, sent_in / dt, sent_out / dt))
    return out


def downsample(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """At most `most` points for drawing: buckets keep their highest value (spikes stay)."""
    if len(points) <= most or most < 1:
        return points
    size = len(points) / most
    out = []
    for i in range(most):
        bucket = points[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)]
        out.append((bucket[-1][0], max(v for _, v in bucket)))
    return out
