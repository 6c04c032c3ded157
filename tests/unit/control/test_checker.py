"""The checker's pure parts: the stable spread of probe slots across the interval."""

from __future__ import annotations

from pacslb.control.checker import spread


def test_spread_is_stable_and_inside_the_interval() -> None:
    assert spread(("Web", "Srv1"), 2.0) == spread(("Web", "Srv1"), 2.0)
    offsets = [spread(("Web", f"Srv{i}"), 2.0) for i in range(1000)]
    assert all(0 <= o < 2.0 for o in offsets)


def test_a_thousand_servers_fill_the_interval_evenly() -> None:
    """No thundering herd: every tenth of the interval gets about a tenth of the servers."""
    offsets = [spread(("DICOM", f"Srv{i}"), 2.0) for i in range(1000)]
    buckets = [0] * 10
    for o in offsets:
        buckets[int(o / 0.2)] += 1
    assert min(buckets) > 70 and max(buckets) < 130, buckets
