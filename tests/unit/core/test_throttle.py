"""At most one event per kind of trouble a minute, with the count held back."""

from __future__ import annotations

from pacslb.core.throttle import Throttle


def test_one_event_per_kind_per_period_with_the_count_held_back() -> None:
    t = Throttle(period=60.0)
    said = [t.text("stale", f"stale {i}", 1000.0 + i * 0.1) for i in range(100)]  # 10 a second
    assert said[0] == "stale 0" and all(s is None for s in said[1:])
    assert t.text("bad-mac", "forged", 1005.0) == "forged"  # another kind: its own budget
    assert t.text("stale", "stale again", 1061.0) == (
        "stale again (and 99 more like it in the last 60 s)"
    )
    assert t.text("stale", "stale later", 1200.0) == "stale later"
    assert t.held_total == {"stale": 99}
