"""Schedulers: pick the real server for a new connection of one virtual service.

Each scheduler is a small object with per-virtual-service state (overload flags, round-robin
position, smooth-WRR current weights). It sees the real servers as `Candidate` values taken at
decision time and returns the chosen key, or None when nothing is eligible -- "no server" is an
expected outcome for the caller (fallback server, RST, 503), never an exception.

The semantics follow the Linux IPVS schedulers (net/netfilter/ipvs/ip_vs_{wlc,lc,rr}.c) so that
the built-in proxy and the kernel engine balance the same way, and nginx's smooth weighted
round-robin (src/http/ngx_http_upstream_round_robin.c, ngx_http_upstream_get_peer) for `wrr`.
One departure: `wlc`/`lc` ties take turns as in HAProxy's leastconn instead of going to the
first server (see _LeastBase), so that clients coming one after another use every server.
Server keys must be unique within one call (the plan guarantees it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pacslb.core.state import AdminState, Health

__all__ = [
    "SCHEDULER_NAMES",
    "Candidate",
    "LeastConnection",
    "RoundRobin",
    "Scheduler",
    "ServerView",
    "SmoothWeightedRoundRobin",
    "SourceHash",
    "WeightedLeastConnection",
    "make_scheduler",
]

MAX_WEIGHT = 65535  # IPVS keeps weights in an int, ipvsadm accepts 0..65535


class ServerView(Protocol):
    """What schedulers read of a real server: a Candidate, or the proxy's live per-server
    record (updated in place, so that no object is built per decision on the hot path)."""

    @property
    def key(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def admin(self) -> AdminState: ...
    @property
    def health(self) -> Health: ...
    @property
    def active(self) -> int: ...
    @property
    def inactive(self) -> int: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def min_connections(self) -> int: ...
    @property
    def overhead(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """What a scheduler sees of one real server at decision time."""

    key: str  # stable identity (the real server label)
    weight: int  # effective weight 0..65535 (0 = takes no new connections)
    admin: AdminState = AdminState.ONLINE
    health: Health = Health.UNKNOWN
    active: int = 0  # established connections now
    inactive: int = 0  # other (e.g. half-open/closing) connections now
    max_connections: int = 0  # 0 = unlimited (IPVS u_threshold)
    min_connections: int = 0  # 0 = unset (IPVS l_threshold)

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"{self.key}: weight {self.weight} outside 0..{MAX_WEIGHT}")
        for name in ("active", "inactive", "max_connections", "min_connections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{self.key}: {name} must be >= 0")

    @property
    def overhead(self) -> int:
        # ip_vs_dest_conn_overhead(): an active connection costs 256 inactive ones, because
        # inactive (FIN_WAIT/SYN_RECV) entries cost the server next to nothing.
        return (self.active << 8) + self.inactive


class Scheduler(Protocol):
    def choose(self, candidates: Sequence[ServerView], flow_key: bytes = b"") -> str | None: ...


_NO_FLAGS: dict[str, tuple[bool, int]] = {}  # no server has a limit (never written to)


class _Base:
    """Eligibility and IPVS overload hysteresis, shared by every scheduler."""

    name = ""

    def __init__(self) -> None:
        # key -> (overloaded, u_threshold the flag was computed with)
        self._overload: dict[str, tuple[bool, int]] = {}

    def overloaded(self, key: str) -> bool:
        """Whether `key` was overloaded at the last decision (for status views)."""
        return self._overload.get(key, (False, 0))[0]

    def choose(self, candidates: Sequence[ServerView], flow_key: bytes = b"") -> str | None:
        eligible = self._eligible(candidates)
        if not any(eligible):
            return None
        return self._pick(candidates, eligible, flow_key)

    def _pick(
        self, candidates: Sequence[ServerView], eligible: list[bool], flow_key: bytes
    ) -> str | None:
        raise NotImplementedError

    def _eligible(self, candidates: Sequence[ServerView]) -> list[bool]:
        # Rebuilt every call so that servers that left the list leave no stale state behind.
        # A server without a connection limit is never overloaded and keeps no flag (absent
        # reads as "not overloaded" everywhere): the usual decision builds no dict entry.
        previous = self._overload
        current: dict[str, tuple[bool, int]] | None = None
        eligible: list[bool] = []
        online = AdminState.ONLINE
        down = Health.DOWN
        for c in candidates:
            ok = c.admin is online and c.health is not down and c.weight > 0
            limit = c.max_connections
            if limit:
                over = _update_overload(c, previous.get(c.key))
                if current is None:
                    current = {}
                current[c.key] = (over, limit)
                ok = ok and not over
            eligible.append(ok)
        self._overload = current if current is not None else _NO_FLAGS
        return eligible


def _update_overload(c: ServerView, previous: tuple[bool, int] | None) -> bool:
    """IPVS IP_VS_DEST_F_OVERLOAD, evaluated from the counts at decision time.

    ip_vs_bind_dest() sets the flag once active+inactive >= u_threshold; ip_vs_unbind_dest()
    clears it only below l_threshold when that is set, else below 3/4 of u_threshold, so that a
    server at its limit does not flap in and out of the rotation with every closed connection.
    __ip_vs_update_dest() clears the flag when u_threshold is removed or raised.
    """
    if c.max_connections == 0:
        return False
    over, old_max = previous if previous is not None else (False, c.max_connections)
    if c.max_connections > old_max:
        over = False
    total = c.active + c.inactive
    if total >= c.max_connections:
        return True
    if over:
        if c.min_connections:
            return total >= c.min_connections
        return total * 4 >= c.max_connections * 3
    return False


# The tie rotation (see _LeastBase). A server of weight w moves 1/w on per choice; floats, not
# fractions or big integers, because this runs per l7-http request (big integers alone cost
# 60 ns a pick). Places are moved back to near 0 before they grow past _REBASE, where a
# double still tells 1/65535 steps apart to 1 part in 60,000.
_REBASE = float(1 << 20)


class _LeastBase(_Base):
    """Least-connection with HAProxy's leastconn tie rule instead of IPVS's "first in list".

    IPVS keeps a tie on the first server, so clients that come one after another (each finds
    every server idle) all land on it, and with persistence they stay there. HAProxy's
    leastconn tree puts a server that just took a connection behind the others of equal load,
    so they take turns. Here each server has a place in the rotation (stride scheduling,
    Waldspurger 1995): the chosen one moves 1/weight on, and a tie goes to the server whose
    place comes first (list order if equal) -- equal servers alternate, a 3:1 pair takes 3:1
    of the ties. A server that was busy, drained or new may be far behind: it takes the next
    tie, then moves on from the place of the latest choice like the others (HAProxy queues a
    returning server behind its equals), so it gets one turn, not a burst of catching up.
    Places are read only on ties and written once per decision.
    """

    def __init__(self) -> None:
        super().__init__()
        self._turns: dict[str, float] = {}  # server key -> its place (absent: 0.0, the start)
        self._clock = 0.0  # the latest place a choice was made at (never goes back)

    def _took(self, candidates: Sequence[ServerView], key: str, turn: float, step: float) -> str:
        """`key` was chosen at place `turn` (>= 0): its next place is `step` further on."""
        clock = self._clock
        if turn > clock:
            if turn > _REBASE:
                self._clock = turn
                self._rebase(candidates)
                return self._took(candidates, key, self._turns.get(key, 0.0), step)
            self._clock = clock = turn
        # From the later of its place and the clock: one behind the rotation (busy, drained,
        # new) moves on from now, with no burst of catching up.
        self._turns[key] = clock + step
        return key

    def _rebase(self, candidates: Sequence[ServerView]) -> None:
        """Move every place back by the clock's (places stay >= 0): floats keep their
        precision, and servers no longer in the list are forgotten (bounded memory)."""
        shift = self._clock
        present = {c.key for c in candidates}
        self._turns = {k: max(v - shift, 0.0) for k, v in self._turns.items() if k in present}
        self._clock = 0.0


class WeightedLeastConnection(_LeastBase):
    """ip_vs_wlc: least overhead/weight, compared by cross-multiplication; ties take turns."""

    name = "wlc"

    def choose(self, candidates: Sequence[ServerView], flow_key: bytes = b"") -> str | None:
        # Eligibility and the comparison in one pass: l7-http runs this for every request, and
        # the two passes of _Base.choose cost twice as much (0.6 against 0.3 us for 2 servers).
        previous = self._overload
        current: dict[str, tuple[bool, int]] | None = None
        online = AdminState.ONLINE
        down = Health.DOWN
        turns = self._turns
        least: ServerView | None = None
        least_overhead = least_weight = 0
        least_turn = -1.0  # its place, read when a tie needs it (-1: not yet; places are >= 0)
        for c in candidates:
            limit = c.max_connections
            if limit:
                over = _update_overload(c, previous.get(c.key))
                if current is None:
                    current = {}
                current[c.key] = (over, limit)
                if over:
                    continue
            weight = c.weight
            if c.admin is not online or c.health is down or weight <= 0:
                continue
            overhead = (c.active << 8) + c.inactive  # ServerView.overhead, without the call
            # loh/lw > doh/dw  <=>  loh*dw > doh*lw (weights > 0). Integers, so equal ratios
            # really are equal and a tie is a tie. A more loaded server (the usual case with
            # many) costs one comparison, as before ties took turns.
            if least is None or (more := least_overhead * weight) >= (
                less := overhead * least_weight
            ):
                if least is None or more > less:
                    least, least_overhead, least_weight = c, overhead, weight  # 3: no tuple
                    least_turn = -1.0
                else:  # a tie: whose turn comes first
                    if least_turn < 0.0:
                        least_turn = turns.get(least.key, 0.0)
                    turn = turns.get(c.key, 0.0)
                    if turn < least_turn:
                        least, least_overhead, least_weight = c, overhead, weight
                        least_turn = turn
        self._overload = current if current is not None else _NO_FLAGS
        if least is None:
            return None
        key = least.key
        if least_turn < 0.0:
            least_turn = turns.get(key, 0.0)
        # _took() inlined for the usual case (a method call costs a third of the tie rule)
        clock = self._clock
        if least_turn > clock:
            if least_turn > _REBASE:
                return self._took(candidates, key, least_turn, 1.0 / least_weight)
            self._clock = clock = least_turn
        turns[key] = clock + 1.0 / least_weight
        return key


class LeastConnection(_LeastBase):
    """ip_vs_lc: least overhead; weight only decides eligibility; ties take equal turns."""

    name = "lc"

    def choose(self, candidates: Sequence[ServerView], flow_key: bytes = b"") -> str | None:
        eligible = self._eligible(candidates)
        turns = self._turns
        least: ServerView | None = None
        least_overhead = 0
        least_turn = -1.0
        for c, ok in zip(candidates, eligible, strict=True):
            if not ok:
                continue
            overhead = (c.active << 8) + c.inactive
            if least is None or overhead < least_overhead:
                least, least_overhead, least_turn = c, overhead, -1.0
            elif overhead == least_overhead:
                if least_turn < 0.0:
                    least_turn = turns.get(least.key, 0.0)
                turn = turns.get(c.key, 0.0)
                if turn < least_turn:
                    least, least_turn = c, turn
        if least is None:
            return None
        if least_turn < 0.0:
            least_turn = turns.get(least.key, 0.0)
        return self._took(candidates, least.key, least_turn, 1.0)


class RoundRobin(_Base):
    """ip_vs_rr: the next eligible server after the last one chosen, in list order."""

    name = "rr"

    def __init__(self) -> None:
        super().__init__()
        self._last_key: str | None = None
        self._last_index = -1

    def choose(self, candidates: Sequence[ServerView], flow_key: bytes = b"") -> str | None:
        # _pick finds no eligible server by itself: no any() pass first (l7-http per request)
        return self._pick(candidates, self._eligible(candidates), flow_key)

    def _pick(
        self, candidates: Sequence[ServerView], eligible: list[bool], flow_key: bytes
    ) -> str | None:
        n = len(candidates)
        start = 0
        last = self._last_index
        if 0 <= last < n and candidates[last].key == self._last_key:
            start = last + 1  # the usual case: the list did not change since the last pick
        elif self._last_key is not None:
            for i, c in enumerate(candidates):
                if c.key == self._last_key:
                    start = i + 1
                    break
            else:
                # The last server left: the one that took its index is the one that followed
                # it, like ip_vs_rr_del_dest() stepping the cursor back one entry.
                start = self._last_index
        for step in range(n):
            i = (start + step) % n
            if eligible[i]:
                self._last_key = candidates[i].key
                self._last_index = i
                return candidates[i].key
        return None


class SmoothWeightedRoundRobin(_Base):
    """nginx smooth weighted round-robin.

    Every eligible server adds its weight to its current weight, the largest current weight
    wins (first on ties) and pays back the total. Over sum(weights) picks with a stable set
    each server is chosen exactly `weight` times, interleaved (5,1,1 -> a a b a c a a) instead
    of in bursts as IPVS wrr does. Like nginx, a server that is temporarily ineligible keeps its
    current weight; one that leaves the list is forgotten and comes back at 0 like a new peer.
    """

    name = "wrr"

    def __init__(self) -> None:
        super().__init__()
        self._current: dict[str, int] = {}

    def _pick(
        self, candidates: Sequence[ServerView], eligible: list[bool], flow_key: bytes
    ) -> str | None:
        current = {c.key: self._current.get(c.key, 0) for c in candidates}
        best: str | None = None
        total = 0
        for c, ok in zip(candidates, eligible, strict=True):
            if not ok:
                continue
            current[c.key] += c.weight
            total += c.weight
            if best is None or current[c.key] > current[best]:
                best = c.key
        if best is not None:
            current[best] -= total
        self._current = current
        return best


class SourceHash(_Base):
    """Consistent source hashing: weighted rendezvous (highest random weight) hashing.

    Each eligible server scores -weight / ln(u) with u in (0, 1) drawn from blake2b(server,
    flow); the highest score wins. A server taking part or not changes only the keys whose
    winner it is: when one of N servers leaves, exactly its ~1/N of the flows move, and the
    weighted score gives each server a share proportional to its weight (Schindelhauer &
    Schomaker, "Weighted distributed hash tables", 2005). Rendezvous rather than Maglev or a
    ring: no table to build or rebuild, no virtual nodes to tune, and O(N) per decision is
    nothing for the handful of servers behind one VIP. blake2b, never hash(), so that both nodes
    of an HA pair and every restart map each client to the same server.
    """

    name = "sh"

    def _pick(
        self, candidates: Sequence[ServerView], eligible: list[bool], flow_key: bytes
    ) -> str | None:
        best: str | None = None
        best_score = -1.0
        for c, ok in zip(candidates, eligible, strict=True):
            if not ok:
                continue
            score = -c.weight / math.log(_unit(c.key, flow_key))
            if score > best_score:
                best, best_score = c.key, score
        return best


def _unit(key: str, flow_key: bytes) -> float:
    """A uniform float in the open interval (0, 1), stable across processes and hosts."""
    raw = key.encode()
    h = hashlib.blake2b(digest_size=8, person=b"pacslb-sh")
    # Length prefix so that ("ab", b"c") and ("a", b"bc") hash differently.
    h.update(len(raw).to_bytes(4, "big"))
    h.update(raw)
    h.update(flow_key)
    # 52 bits keep (n + 0.5) / 2**52 exact in a double: never 0 and never 1, so ln(u) < 0.
    n = int.from_bytes(h.digest(), "big") >> 12
    return (n + 0.5) / (1 << 52)


_SCHEDULERS: dict[str, type[_Base]] = {
    "wlc": WeightedLeastConnection,
    "wrr": SmoothWeightedRoundRobin,
    "lc": LeastConnection,
    "rr": RoundRobin,
    "sh": SourceHash,
}

SCHEDULER_NAMES: tuple[str, ...] = tuple(_SCHEDULERS)


def make_scheduler(name: str) -> Scheduler:
    """A fresh scheduler (with its own state) for one virtual service."""
    try:
        cls = _SCHEDULERS[name]
    except KeyError:
        raise ValueError(
            f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULER_NAMES)}"
        ) from None
    return cls()
