from __future__ import annotations

from pacslb.core.passive import PassiveHealth
from pacslb.core.plan import PlanPassive


def test_ejected_after_consecutive_failures_and_back_when_due() -> None:
    p = PassiveHealth(PlanPassive(consecutive_failures=3, ejection=30, max_ejection=300))
    assert p.failed("A", 1, True, 0.0) is None
    assert p.failed("A", 2, True, 0.0) is None
    ejection = p.failed("A", 3, True, 1.0)
    assert ejection is not None and (ejection.seconds, ejection.until) == (30, 31.0)
    assert p.ejected("A") and p.out() == ["A"]
    assert p.failed("A", 4, True, 2.0) is None  # already out
    assert p.due(30.0) == [] and p.due(31.0) == ["A"]
    assert p.returned("A", 31.0) and not p.ejected("A")
    assert not p.returned("A", 31.0)


def test_repeats_double_up_to_the_cap_and_are_forgiven_after_it() -> None:
    p = PassiveHealth(PlanPassive(consecutive_failures=1, ejection=30, max_ejection=100))
    seconds = []
    now = 0.0
    for _ in range(4):
        ejection = p.failed("A", 1, True, now)
        assert ejection is not None
        seconds.append(ejection.seconds)
        now = ejection.until
        p.returned("A", now)
        now += 1  # fails again soon after its return
    assert seconds == [30, 60, 100, 100]
    ejection = p.failed("A", 1, True, now + 100)  # 100 s in rotation: a first ejection again
    assert ejection is not None and ejection.seconds == 30 and ejection.count == 1


def test_never_the_last_server_and_off_with_zero() -> None:
    p = PassiveHealth(PlanPassive(consecutive_failures=2))
    assert p.failed("A", 9, False, 0.0) is None
    off = PassiveHealth(PlanPassive(consecutive_failures=0))
    assert off.failed("A", 1000, True, 0.0) is None


def test_forget_drops_removed_servers() -> None:
    p = PassiveHealth(PlanPassive(consecutive_failures=1))
    assert p.failed("A", 1, True, 0.0) is not None
    p.forget({"B"})
    assert not p.ejected("A") and p.out() == []
