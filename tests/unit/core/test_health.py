"""HealthTracker: first result decides, then HAProxy rise/fall hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacslb.core.health import HealthTracker, Transition
from pacslb.core.state import Health


def test_rejects_bad_rise_fall() -> None:
    with pytest.raises(ValueError, match="rise"):
        HealthTracker(rise=0, fall=3)
    with pytest.raises(ValueError, match="fall"):
        HealthTracker(rise=2, fall=0)


def test_starts_unknown_with_no_result() -> None:
    h = HealthTracker(rise=2, fall=3)
    assert h.state is Health.UNKNOWN
    assert (h.last_ok, h.last_reason, h.last_at, h.successes, h.failures) == (None, "", None, 0, 0)


def test_first_success_is_up_at_once() -> None:
    h = HealthTracker(rise=5, fall=5)
    t = h.observe(True, "connect ok", now=1.0)
    assert t == Transition(Health.UNKNOWN, Health.UP, "connect ok", 1.0, 1)
    assert h.state is Health.UP


def test_first_failure_is_down_at_once() -> None:
    h = HealthTracker(rise=5, fall=5)
    t = h.observe(False, "connection refused", now=2.0)
    assert t == Transition(Health.UNKNOWN, Health.DOWN, "connection refused", 2.0, 1)
    assert h.state is Health.DOWN


def test_up_goes_down_after_fall_consecutive_failures() -> None:
    h = HealthTracker(rise=2, fall=3)
    h.observe(True, "ok", 0)
    assert h.observe(False, "timeout", 5) is None
    assert h.observe(False, "timeout", 10) is None
    assert h.state is Health.UP
    t = h.observe(False, "C-ECHO rejected", 15)
    assert t == Transition(Health.UP, Health.DOWN, "C-ECHO rejected", 15, 3)
    assert h.observe(False, "timeout", 20) is None  # no repeat transition
    assert h.failures == 4


def test_down_comes_up_after_rise_consecutive_successes() -> None:
    h = HealthTracker(rise=2, fall=3)
    h.observe(False, "refused", 0)
    assert h.observe(True, "ok", 5) is None
    assert h.state is Health.DOWN
    assert h.observe(True, "ok again", 10) == Transition(Health.DOWN, Health.UP, "ok again", 10, 2)


def test_opposite_result_resets_the_streak() -> None:
    h = HealthTracker(rise=2, fall=3)
    h.observe(True, "ok", 0)
    h.observe(False, "x", 1)
    h.observe(False, "x", 2)
    h.observe(True, "ok", 3)  # resets the failure streak
    assert (h.successes, h.failures) == (1, 0)
    assert h.observe(False, "x", 4) is None
    assert h.observe(False, "x", 5) is None
    assert h.state is Health.UP
    t = h.observe(False, "x", 6)
    assert t is not None and t.current is Health.DOWN
    h.observe(True, "ok", 7)
    h.observe(False, "x", 8)  # resets the success streak
    assert h.observe(True, "ok", 9) is None
    assert h.successes == 1
    assert str(h.state) == "down"


def test_rise_fall_one_flips_on_every_change() -> None:
    h = HealthTracker(rise=1, fall=1)
    states = []
    for ok in (True, False, True, True, False):
        h.observe(ok, "", 0)
        states.append(h.state)
    assert states == [Health.UP, Health.DOWN, Health.UP, Health.UP, Health.DOWN]


def test_last_result_is_recorded() -> None:
    h = HealthTracker(rise=2, fall=2)
    h.observe(True, "200 OK", 1.5)
    h.observe(False, "HTTP 503", 3.5)
    assert (h.last_ok, h.last_reason, h.last_at) == (False, "HTTP 503", 3.5)


@given(st.integers(1, 4), st.integers(1, 4), st.lists(st.booleans(), max_size=40))
def test_state_is_a_function_of_the_trailing_streak(
    rise: int, fall: int, results: list[bool]
) -> None:
    h = HealthTracker(rise, fall)
    state = Health.UNKNOWN
    for i, ok in enumerate(results):
        t = h.observe(ok, f"r{i}", float(i))
        # reference: count the trailing run of equal results
        run = 0
        for r in reversed(results[: i + 1]):
            if r != ok:
                break
            run += 1
        if state is Health.UNKNOWN or run >= (rise if ok else fall):
            new = Health.UP if ok else Health.DOWN
        else:
            new = state
        if new is state:
            assert t is None
        else:
            assert t == Transition(state, new, f"r{i}", float(i), run)
        state = new
        assert h.state is state


def test_retune_keeps_the_state_and_judges_the_next_result_by_the_new_numbers() -> None:
    tracker = HealthTracker(rise=2, fall=3)
    tracker.observe(True, "ok", 0.0)
    assert tracker.state is Health.UP
    tracker.retune(rise=2, fall=1)
    assert tracker.state is Health.UP  # an edit is not a result
    transition = tracker.observe(False, "refused", 1.0)
    assert transition is not None and tracker.state is Health.DOWN
