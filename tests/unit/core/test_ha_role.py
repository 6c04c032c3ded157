"""HaState: one listener's exception neither stops the others nor leaves the role half set."""

from __future__ import annotations

import pytest

from pacslb.core.ha_role import HaState, ListenerError, Role


def test_a_failing_listener_does_not_keep_the_others_from_hearing() -> None:
    state = HaState(Role.PASSIVE)
    heard: list[tuple[Role, Role]] = []

    def broken(old: Role, new: Role) -> None:
        raise RuntimeError("conntrackd's commit could not be scheduled")

    state.subscribe(broken)
    state.subscribe(lambda old, new: heard.append((old, new)))
    state.subscribe(broken)
    with pytest.raises(ListenerError) as exc:
        state.set(Role.ACTIVE)
    assert heard == [(Role.PASSIVE, Role.ACTIVE)]
    assert state.role is Role.ACTIVE
    assert len(exc.value.errors) == 2 and "conntrackd's commit" in str(exc.value)
    assert state.set(Role.ACTIVE) is False  # no change: nobody is called


def test_listeners_are_told_in_order_when_none_fails() -> None:
    state = HaState(Role.STARTING)
    heard: list[str] = []
    state.subscribe(lambda old, new: heard.append(f"a:{new}"))
    state.subscribe(lambda old, new: heard.append(f"b:{new}"))
    assert state.set(Role.PASSIVE) is True
    assert heard == ["a:passive", "b:passive"]
