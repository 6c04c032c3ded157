"""A service's connection budget in a worker: counting, pausing and waking its listeners, and
giving a flood's memory back."""

from __future__ import annotations

from pacslb.proxy.budget import FloodTrimmer, ServiceBudget


class Listener:
    def __init__(self) -> None:
        self.resumed = 0

    def resume_accepting(self) -> None:
        self.resumed += 1


def test_a_closing_connection_wakes_the_listeners_waiting_for_room() -> None:
    budget = ServiceBudget("Web", limit=2)
    a, b = Listener(), Listener()
    budget.take(2)
    assert budget.room() == 0
    budget.wait(a, "127.0.0.1:80")
    budget.wait(b, "127.0.0.1:81")
    budget.wait(a, "127.0.0.1:80")  # waits once
    budget.give()
    assert (a.resumed, b.resumed) == (1, 1)
    budget.give()  # nobody waits any more
    assert (a.resumed, b.resumed) == (1, 1)


def test_a_raised_limit_wakes_at_once_and_a_closed_listener_is_not_woken() -> None:
    budget = ServiceBudget("Web", limit=1)
    a, closed = Listener(), Listener()
    budget.take()
    budget.wait(a, "a")
    budget.wait(closed, "b")
    budget.stop_waiting(closed)
    budget.set_limit(5)
    assert (a.resumed, closed.resumed) == (1, 0)


def test_memory_is_given_back_once_a_flood_has_ended() -> None:
    budget = ServiceBudget("Dicom")
    trimmer = FloodTrimmer()
    budget.take(1500)
    assert not trimmer.observe([budget])  # flooded: nothing to give back yet
    budget.give(1500)
    assert trimmer.observe([budget])
    assert not trimmer.observe([budget])  # once
    budget.take(100)
    budget.give(100)
    assert not trimmer.observe([budget])  # ordinary churn
