"""The watchdog's decisions: when a worker counts as hung, and counters that survive its
replacement (issue 14, items 2 and 3)."""

from __future__ import annotations

from typing import Any

from pacslb.core.workers import HANG_MISSES, CounterSum, PingWatch


def stats(total: int, active: int = 0, **responses: int) -> dict[str, Any]:
    return {
        "active": active,
        "total": total,
        "bytes_in": 10 * total,
        "bytes_out": 100 * total,
        "connect_failures": 0,
        "requests": total,
        "responses": {f"{k[1:]}xx": v for k, v in responses.items()},
    }


def test_hung_only_after_consecutive_misses_over_time() -> None:
    watch = PingWatch(last_answer=0.0)
    assert not watch.missed(1.0) and not watch.missed(2.0)
    watch.answered(2.5)  # one answer resets the count: a slow moment is not a hang
    assert [watch.missed(3.5 + i) for i in range(HANG_MISSES)] == [False, False, True]
    # a control process that stalled and then timed out three pings at once is not enough
    stalled = PingWatch(last_answer=10.0)
    assert [stalled.missed(10.1) for _ in range(HANG_MISSES)] == [False] * HANG_MISSES


def test_totals_survive_a_replacement_and_active_does_not() -> None:
    sums = CounterSum()
    a = {"Web": {"Srv1": stats(100, active=3, _2=90, _5=10)}}
    b = {"Web": {"Srv1": stats(50, active=2, _2=50)}}
    before = sums.sum([a, b])[("Web", "Srv1")]
    assert before.values["total"] == 150 and before.values["active"] == 5
    sums.retire(a)  # worker a crashed; its replacement has counted nothing yet
    after = sums.sum([None, b])[("Web", "Srv1")]
    assert after.values["total"] == 150 and after.values["active"] == 2
    assert after.responses == {"2xx": 140, "5xx": 10}
    later = sums.sum([{"Web": {"Srv1": stats(5, active=1, _2=5)}}, b])[("Web", "Srv1")]
    assert later.values["total"] == 155 and later.values["bytes_out"] == 15_500
    assert later.values["active"] == 3
    # a server only the retired worker knew is still reported
    sums.retire({"Web": {"Old": stats(7)}})
    assert sums.sum([])[("Web", "Old")].values["requests"] == 7
