"""How the kernel engine spreads new flows: a slot table per service, dealt to the real servers.

The kernel picks a slot for every new flow (`numgen inc mod N`, a round-robin counter) and
the slot names the server. So the slot table *is* the scheduler: proportional to the weights
for `wrr`/`rr`, and for `wlc`/`lc` re-dealt about once a second from the live connection counts
(water-filling: new flows go where `active / weight` is lowest, as IPVS's WLC would send them
one by one). The slots are interleaved (the smooth weighted round-robin order of nginx), so a
burst of new flows alternates between servers instead of filling one range at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pacslb import config as c
from pacslb.core.plan import PlanService

FALLBACK = "\0fallback"  # the fallback server's key in slot tables

SLOTS = 100  # a split's resolution; fixed, so a new split is an element update, not a rule


def apportion(shares: Mapping[str, float], total: int = SLOTS) -> dict[str, int]:
    """Integer slots proportional to `shares` (largest remainder); zero shares get none."""
    positive = {k: v for k, v in shares.items() if v > 0}
    whole = sum(positive.values())
    if not positive or whole <= 0:
        return {}
    exact = {k: v * total / whole for k, v in positive.items()}
    counts = {k: int(x) for k, x in exact.items()}
    order = list(positive)  # ties go to the first listed, as the schedulers' do
    by_remainder = sorted(order, key=lambda k: (-(exact[k] - counts[k]), order.index(k)))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return {k: n for k, n in counts.items() if n > 0}


def interleave(counts: Mapping[str, int]) -> tuple[str, ...]:
    """The smooth weighted round-robin order (nginx) of `counts`: exact over one cycle."""
    current = dict.fromkeys(counts, 0)
    total = sum(counts.values())
    order: list[str] = []
    for _ in range(total):
        for k, n in counts.items():
            current[k] += n
        best = max(counts, key=lambda k: current[k])  # first of equals, stable
        current[best] -= total
        order.append(best)
    return tuple(order)


def weighted(weights: Mapping[str, int]) -> tuple[str, ...]:
    """Slots in proportion to the weights (`wrr`; `rr` passes equal weights)."""
    return interleave(apportion({k: float(w) for k, w in weights.items()}))


def least_connection(
    weights: Mapping[str, int], active: Mapping[str, int], expected_new: float
) -> tuple[str, ...]:
    """Slots for the next interval's `expected_new` flows, as WLC would place them.

    Water-filling: raise a level L until the servers below it (by active/weight) can take the
    expected flows, each up to L x weight; a server already above L gets no slot. With no
    backlog this is plain weighted; with one busy server the others get its share until even.
    """
    usable = {k: w for k, w in weights.items() if w > 0}
    if not usable:
        return ()
    load = {k: float(active.get(k, 0)) for k in usable}
    expected = max(float(expected_new), 1.0)
    room = _fill(usable, load, expected)
    return interleave(apportion(room))


def _fill(weights: Mapping[str, int], load: Mapping[str, float], amount: float) -> dict[str, float]:
    """How much each server takes when `amount` is poured in at the lowest load/weight."""
    order = sorted(weights, key=lambda k: load[k] / weights[k])
    level = 0.0
    for i in range(len(order)):
        below = order[: i + 1]
        w_sum = sum(weights[j] for j in below)
        # The level that would absorb `amount` across the servers below it.
        level = (amount + sum(load[j] for j in below)) / w_sum
        nxt = order[i + 1] if i + 1 < len(order) else None
        if nxt is None or level <= load[nxt] / weights[nxt]:
            break
    return {k: max(0.0, level * weights[k] - load[k]) for k in weights}


def expected_new_flows(new_last_interval: int, active: Sequence[int]) -> float:
    """What to plan the next interval for: twice the last interval's arrivals, or a quarter of
    the open connections, whichever is more (so one quiet second does not pile a burst onto
    the least-loaded server)."""
    return max(2.0 * new_last_interval, 0.25 * sum(active), 1.0)


def service_slots(
    svc: PlanService, active: Mapping[str, int] | None = None, new_last_interval: int = 0
) -> tuple[str, ...]:
    """A kernel service's slot table from its Plan and (for `wlc`/`lc`) live connection counts.

    `rr` and `lc` treat every usable server alike; a server at its `max_connections` gets no
    slot until it drops below; the fallback takes every slot when no real server can."""
    equal = svc.scheduler in (c.SchedulerName.RR, c.SchedulerName.LC)
    counts = active or {}
    usable = {
        rs.label: (1 if equal else rs.effective_weight)
        for rs in svc.real_servers
        if rs.effective_weight > 0
        and not (rs.max_connections and counts.get(rs.label, 0) >= rs.max_connections)
    }
    if not usable:
        return (FALLBACK,) * SLOTS if svc.fallback is not None else ()
    if active is not None and svc.scheduler in (c.SchedulerName.WLC, c.SchedulerName.LC):
        expected = expected_new_flows(new_last_interval, list(active.values()))
        return least_connection(usable, active, expected)
    return weighted(usable)
