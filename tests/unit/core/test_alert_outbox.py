"""core/alert_outbox.py with a fake clock: retries with back-off, bounded, never blocking the
messages behind one, the oldest first, and tried again at once when the peer answers."""

from __future__ import annotations

from pacslb.core.alert_outbox import Outbox
from pacslb.core.alerts import Change, Message, compose


def message(name: str) -> Message:
    return compose([Change("health", name, "problem", "down", "t")], "lb1")


def test_a_passing_failure_is_retried_with_backoff_then_given_up() -> None:
    box = Outbox(size=10, retries=3, backoff=2.0)
    assert box.put(message("A"), 0.0)
    waits = []
    now = 0.0
    while (pending := box.take(now)) is not None:
        wait = box.failed(pending, now, passing=True)
        if wait is None:
            break
        waits.append(wait)
        assert box.take(now) is None and box.retrying == 1  # not before its time
        now += wait
    assert waits == [2.0, 4.0, 8.0]  # 4 attempts in all: the first and 3 retries
    assert len(box) == 0 and box.next_due() is None


def test_a_lasting_failure_is_not_retried() -> None:
    box = Outbox(size=10, retries=3, backoff=2.0)
    box.put(message("A"), 0.0)
    pending = box.take(0.0)
    assert pending is not None and box.failed(pending, 0.0, passing=False) is None
    assert len(box) == 0


def test_newer_messages_go_while_one_waits_for_its_retry_and_order_is_kept_when_due() -> None:
    box = Outbox(size=10, retries=3, backoff=2.0)
    box.put(message("A"), 0.0)
    first = box.take(0.0)
    assert first is not None and box.failed(first, 0.5, passing=True) == 2.0
    box.put(message("B"), 1.0)
    box.put(message("C"), 1.0)
    taken = box.take(1.0)
    assert taken is not None and taken.message.lines[0].subject == "B"  # A's retry waits
    assert box.failed(taken, 1.1, passing=True) == 2.0  # due at 3.1
    assert box.next_due() == 1.0  # C
    # at 3.5 A (due 2.5) and B (due 3.1) are due, and C: the oldest first
    order = []
    while (p := box.take(3.5)) is not None:
        order.append(p.message.lines[0].subject)
    assert order == ["A", "B", "C"]


def test_a_delivery_makes_the_waiting_retries_due_at_once() -> None:
    box = Outbox(size=10, retries=3, backoff=30.0)
    box.put(message("A"), 0.0)
    first = box.take(0.0)
    assert first is not None and box.failed(first, 0.0, passing=True) == 30.0
    box.put(message("B"), 5.0)
    assert box.take(5.0) is not None  # B goes (the relay is back)
    box.delivered(6.0)
    again = box.take(6.0)
    assert again is not None and again.attempts == 1 and again.message.lines[0].subject == "A"


def test_the_outbox_is_bounded_retries_included() -> None:
    box = Outbox(size=2, retries=3, backoff=1.0)
    assert box.put(message("A"), 0.0) and box.put(message("B"), 0.0)
    assert not box.put(message("C"), 0.0)  # full: refused, the caller says so
    pending = box.take(0.0)
    assert pending is not None and box.put(message("C"), 0.0)
    assert box.failed(pending, 0.0, passing=True) == 1.0 and len(box) == 3
    assert not box.put(message("D"), 0.0)
