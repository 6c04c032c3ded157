"""Counter history rings, downsampling and rates (time passed in)."""

from __future__ import annotations

import itertools

from pacslb.core.timeseries import History, Sample, downsample, rates


def test_fine_ring_keeps_an_hour_coarse_keeps_a_day() -> None:
    h = History(step=10, fine_span=3600, coarse_step=300, coarse_span=86400)
    for i in range(2 * 8640):  # two days of 10-second samples
        h.add(Sample(float(i * 10), active=i % 7, total=i))
    now = (2 * 8640 - 1) * 10.0
    hour = h.window(now, 3600)
    assert len(hour) == 361 and hour[0].t == now - 3600
    day = h.window(now, 86400)
    assert 288 <= len(day) <= 289
    assert all(b.t - a.t == 300 for a, b in itertools.pairwise(day))


def test_coarse_points_keep_the_peak_of_the_gauge() -> None:
    h = History(step=10, coarse_step=60)
    h.add(Sample(0, active=1))
    for t, active in ((10, 9), (20, 2), (30, 0), (40, 0), (50, 0)):
        h.add(Sample(t, active=active))
    h.add(Sample(60, active=3))
    assert [s.active for s in h.coarse] == [1, 9]  # the spike at t=10 survives in the coarse ring


def test_clock_going_backwards_is_ignored() -> None:
    h = History(step=10)
    h.add(Sample(100))
    h.add(Sample(90))
    assert [s.t for s in h.fine] == [100]


def test_rates_from_cumulative_counters_and_restart() -> None:
    samples = [
        Sample(0, active=1, total=10, bytes_in=100, bytes_out=1000),
        Sample(10, active=2, total=30, bytes_in=200, bytes_out=2900),
        Sample(20, active=0, total=5, bytes_in=50, bytes_out=50),  # the engine restarted
    ]
    r = rates(samples)
    assert [x.connections_per_s for x in r] == [2.0, 0.5]
    assert [x.in_per_s for x in r] == [10.0, 5.0]
    assert [x.out_per_s for x in r] == [190.0, 5.0]
    assert [x.active for x in r] == [2, 0]
    assert rates(samples[:1]) == []


def test_sum_of_samples() -> None:
    total = Sample(5, 1, 2, 3, 4) + Sample(5, 10, 20, 30, 40)
    assert total == Sample(5, 11, 22, 33, 44)


def test_downsample_keeps_spikes() -> None:
    points = [(float(t), 0.0) for t in range(100)]
    points[37] = (37.0, 50.0)
    out = downsample(points, 10)
    assert len(out) == 10
    assert max(v for _, v in out) == 50.0
    assert downsample(points[:5], 10) == points[:5]
