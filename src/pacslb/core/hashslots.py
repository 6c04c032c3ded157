"""The deterministic slot table of Direct Routing: where a packet of a flow no node has seen goes.

A DR flow is pinned to its server by the per-flow map (core/nft.py). A packet that finds no
entry there and is not a SYN belongs to a connection that began elsewhere: on the node that
held the VIP before a takeover (HA), on another node behind ECMP (N active nodes), or before
a table was lost. Every node must send it to the same server, so the pick is a pure function
of the Plan: the real servers that keep their existing connections (online or drained, not
down or halted), their configured weights, and the flow (the kernel's `jhash` of the client
address and port, seeded alike everywhere). The live connection counts that deal the `wlc`
slots (core/slots.py) differ from node to node and are never used here.

Weighted rendezvous hashing per slot (Thaler and Ravishankar; weights as in Schindelhauer and
Schomaker's "weighted distributed hash tables"): slot i goes to the server with the highest
`weight / -ln(u(i, server))`, u a uniform hash in (0, 1). So a server that leaves takes only
its own slots with it (each moves to the runner-up of that slot), one that comes back takes
back exactly those, and the rest of the table never moves: held flows on other servers stay.
HASH_SLOTS is a power of two far above any real server count, so each server's share is within
a few per cent of its weight's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

from pacslb.core.plan import PlanService
from pacslb.core.slots import FALLBACK

HASH_SLOTS = 1024  # a plain (not interval) map of this size refills in ~5 ms (measured)
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer (no `hash()`,
    whose value would differ between processes)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _score(slot: int, member: int, weight: float) -> float:
    u = ((_mix((member << 20) ^ slot) >> 11) + 0.5) / float(1 << 53)  # uniform in (0, 1)
    return weight / -math.log(u)


def rendezvous(members: Mapping[int, float], size: int = HASH_SLOTS) -> tuple[int, ...]:
    """Slot -> member id, by weighted rendezvous hashing; () when no member has a weight."""
    return _table(tuple(sorted((m, w) for m, w in members.items() if w > 0)), size)


@functools.lru_cache(maxsize=256)
def _table(usable: tuple[tuple[int, float], ...], size: int) -> tuple[int, ...]:
    """Cached: the engine renders every second (wlc re-deals), the Plan changes far less."""
    if not usable:
        return ()
    return tuple(max(usable, key=lambda mw: _score(i, mw[0], mw[1]))[0] for i in range(size))


def hash_slots(svc: PlanService, ids: Mapping[str, int]) -> tuple[str, ...]:
    """A DR service's deterministic table: HASH_SLOTS server labels (FALLBACK when no server
    keeps connections and there is a fallback), or () when there is nowhere to send.

    `ids` gives each label its stable id (core/nft.py server_id): the hash input, so that a
    label's slots do not depend on the order of the config or on the other servers."""
    # The configured weight (at least 1): a drained server's effective weight is 0, yet its
    # connections live on and their packets must still reach it.
    weights = {
        ids[rs.label]: float(max(rs.weight, 1)) for rs in svc.real_servers if rs.keeps_existing
    }
    if not weights:
        return (FALLBACK,) * HASH_SLOTS if svc.fallback is not None else ()
    label = {ids[rs.label]: rs.label for rs in svc.real_servers}
    return tuple(label[m] for m in rendezvous(weights))
