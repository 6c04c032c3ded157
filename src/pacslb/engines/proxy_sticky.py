"""The control process's copy of the proxy workers' source-IP persistence entries, so that a
worker's clients keep their servers when it is replaced, and the peer node can learn them.

Each worker keeps its own table (proxy/runtime.py), and the kernel steers every client to one
worker by address (core/steering.py). Two events still move clients between workers: a worker
that dies takes its table with it, and its socket's place in the SO_REUSEPORT group is filled
by another worker's socket (the kernel moves the last one into the hole), so that worker's
clients reach the replacement. The mirror reads every worker's changes each second (the
watchdog) and, when a worker is replaced, hands every worker all entries: the replacement gets
them before its first Plan, so before it listens.

For the peer node (H3's control/statesync.py): `export(since)` lists the entries changed after
an engine cursor, `learn(entries)` hands entries from the peer to every worker (an existing
live entry of a worker is kept). An entry with connections open is listed again every half
timeout, so that the peer's copy lives as long as the client's connections do here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pacslb.core.plan import Plan
from pacslb.errors import EngineError
from pacslb.proxy.server import wanted_listeners
from pacslb.proxy.sticky_share import SharedEntry, is_address, parse_entries

# The per-second read and share run in the watchdog's loop: a worker that stops answering must
# not hold it up for long (its pings decide whether it is hung). 10,000 entries took 0.1-0.3 s
# to list and 0.2-0.5 s to learn on a loaded machine.
READ_TIMEOUT = 3.0
PUSH_TIMEOUT = 10.0  # a seed or a peer's entries, outside the watchdog's loop
PURGE_INTERVAL = 10.0
# Entries learnt from the peer: a bound on the mirror (a peer gone wrong must not grow it
# without end), and the longest ttl taken before a Plan tells the services' timeouts.
MAX_HELD = 500_000
# Persistence whose entries the workers (and the HA pair) share: source-ip, and l7-dicom's
# calling-ae (a modality's associations may be accepted by any worker: the kernel cannot
# steer by AE title, so sharing is what keeps a modality on one archive across workers).
SHARED_KINDS = ("source-ip", "calling-ae")
MAX_LEARNT_TTL = 86_400.0


def replaces_steered_listeners(old: Plan | None, new: Plan) -> bool:
    """Whether `new` replaces a listening socket of a source-ip service (a new certificate,
    another mode): each worker binds the new socket, which joins the group at its end, then
    closes the old one, whose place the last socket takes. Two workers doing so at once can
    end up in each other's places (worker A adds, B adds, A closes: B's new socket moves to
    A's place), and their clients with them. One worker after another, each new socket ends
    in its old one's place. Measured: ~1 ms between a worker's bind and close."""
    if old is None:
        return False
    before = wanted_listeners(old)
    steered = {s.label for s in new.services if s.persistence.kind in SHARED_KINDS}
    return any(
        addr in before and before[addr] != spec and spec.service in steered
        for addr, spec in wanted_listeners(new).items()
    )


async def outcome(give: Awaitable[None]) -> BaseException | None:
    """What asyncio.gather(..., return_exceptions=True) gives for one awaitable."""
    try:
        await give
    except Exception as exc:
        return exc
    return None


class StickyWorker(Protocol):
    name: str
    pid: int | None

    async def call(self, payload: dict[str, Any], timeout: float = 10.0) -> Any: ...


@dataclass(slots=True)
class _Held:
    seq: int
    server: str
    expires_at: float  # monotonic; for an open entry: when it was read plus the timeout
    timeout: float  # the ttl an open entry was listed with (its service's timeout)
    open: bool
    worker: str  # whose entry it is ("" when learnt from the peer)
    listed_at: float


class StickyMirror:
    def __init__(self) -> None:
        self.seq = 0  # the engine's change cursor
        # (service, key) -> entry, in the order of `seq` (a changed entry moves to the end)
        self._held: dict[tuple[str, str], _Held] = {}
        self._cursors: dict[str, tuple[int, Any]] = {}  # worker name -> (its pid, its cursor)
        self._purged_at = 0.0
        self._pushes: set[asyncio.Task[None]] = set()
        # service -> its shared persistence timeout, from the Plan in force (None: no Plan
        # yet); a learnt entry lives no longer than its service's timeout.
        self.timeouts: dict[str, float] | None = None
        self.by_title: set[str] = set()  # services whose keys are calling AE titles
        self.skipped: Counter[str] = Counter()  # learnt entries not taken, by reason
        self.last_skip = ""  # why the last one was not taken

    def plan_applied(self, plan: Plan) -> None:
        shared = [s for s in plan.services if not s.mode.is_kernel]
        shared = [s for s in shared if s.persistence.kind in SHARED_KINDS]
        self.timeouts = {s.label: float(s.persistence.timeout) for s in shared}
        self.by_title = {s.label for s in shared if s.persistence.kind == "calling-ae"}

    def __len__(self) -> int:
        return len(self._held)

    # --- reading the workers ---------------------------------------------------------------

    async def collect(self, workers: Iterable[StickyWorker], share: bool = True) -> None:
        """Read every worker's changes since its own cursor (all, for a new process) and,
        with `share`, hand each worker the others' changes: when a worker dies, the kernel
        sends its clients to the others at once (core/steering.py), which must know them
        already rather than after its replacement has been seeded."""
        workers = list(workers)
        news = await asyncio.gather(*(self._collect_one(w) for w in workers))
        now = time.monotonic()
        relisted = self._relist_open(now)
        if now - self._purged_at >= PURGE_INTERVAL:
            self._purged_at = now
            self._purge(now)
        if not share or len(workers) < 2:
            return
        for entry in relisted:
            whose = entry.pop("worker")
            for worker, own in zip(workers, news, strict=True):
                if worker.name == whose:
                    own.append(entry)
        pushes = []
        for worker in workers:
            others = [
                e for w, own in zip(workers, news, strict=True) if w is not worker for e in own
            ]
            if others and worker.pid is not None:
                payload = {"cmd": "sticky-import", "entries": others}
                pushes.append(worker.call(payload, READ_TIMEOUT))
        await asyncio.gather(*pushes, return_exceptions=True)  # a dead one is seeded anyway

    async def _collect_one(self, worker: StickyWorker) -> list[dict[str, Any]]:
        """The worker's changes, now in the mirror; returned as read (its new entries)."""
        pid = worker.pid
        if pid is None:
            return []
        known = self._cursors.get(worker.name)
        since = known[1] if known is not None and known[0] == pid else {}
        try:
            result = await worker.call({"cmd": "sticky-export", "since": since}, READ_TIMEOUT)
            entries = parse_entries(result["entries"])
            opens = [bool(item.get("open")) for item in result["entries"]]
        except (OSError, EngineError, TimeoutError, ValueError, KeyError, TypeError):
            return []  # the watchdog tells about a worker that does not answer
        if worker.pid != pid:
            return []  # replaced meanwhile: this is the dead one's
        self._cursors[worker.name] = (pid, result["cursor"])
        now = time.monotonic()
        for entry, is_open in zip(entries, opens, strict=True):
            self._put(entry, now, worker.name, is_open)
        return list(result["entries"])

    def _put(self, entry: SharedEntry, now: float, worker: str, is_open: bool) -> None:
        self.seq += 1
        ident = (entry.service, entry.key)
        self._held.pop(ident, None)
        self._held[ident] = _Held(
            self.seq, entry.server, now + entry.ttl, entry.ttl, is_open, worker, now
        )

    def _relist_open(self, now: float) -> list[dict[str, Any]]:
        """An open entry is not a change in its worker until it closes: list it again every
        half timeout, so that copies elsewhere do not expire while the client is connected.
        Returns them (with "worker": whose) for the other workers."""
        stale = [
            ident
            for ident, held in self._held.items()
            if held.open and now - held.listed_at >= held.timeout / 2
        ]
        out = []
        for ident in stale:
            held = self._held.pop(ident)
            self.seq += 1
            held.seq, held.listed_at, held.expires_at = self.seq, now, now + held.timeout
            self._held[ident] = held
            out.append(
                {
                    "service": ident[0],
                    "key": ident[1],
                    "server": held.server,
                    "ttl": held.timeout,
                    "worker": held.worker,
                }
            )
        return out

    def worker_lost(self, name: str) -> None:
        """A worker died: its connections are gone, so its open entries count down from now."""
        now = time.monotonic()
        self._cursors.pop(name, None)
        for held in self._held.values():
            if held.worker == name and held.open:
                held.open, held.expires_at = False, now + held.timeout

    def _purge(self, now: float) -> None:
        dead = [i for i, h in self._held.items() if not h.open and h.expires_at <= now]
        for ident in dead:
            del self._held[ident]

    # --- the peer node ---------------------------------------------------------------------

    def export(self, since: int) -> tuple[list[dict[str, Any]], int]:
        """Live entries changed after cursor `since` (0: all), and the next cursor. Learnt
        entries are not listed (they came from the peer)."""
        now = time.monotonic()
        out = []
        for ident in reversed(self._held):
            held = self._held[ident]
            if held.worker == "":
                continue  # learnt (seq 0, out of order): not ours to list
            if held.seq <= since:
                break
            if not held.open and held.expires_at <= now:
                continue
            ttl = held.timeout if held.open else round(held.expires_at - now, 3)
            out.append({"service": ident[0], "key": ident[1], "server": held.server, "ttl": ttl})
        out.reverse()
        return out, self.seq

    def learn(self, raw: Any, workers: Iterable[StickyWorker]) -> int:
        """Entries from the peer: kept here (a replaced worker gets them too) and handed to
        every worker in the background; the number taken. Each entry is checked on its own:
        a bad one (malformed, a service without source-ip persistence here, the table full)
        is skipped and counted in `skipped`, and the others are taken. A ttl beyond the
        service's persistence timeout is cut to it."""
        if not isinstance(raw, list):
            raise ValueError(f"sticky entries must be a list, got {type(raw).__name__}")
        now = time.monotonic()
        taken = []
        for i, item in enumerate(raw):
            try:
                [entry] = parse_entries([item])
            except ValueError as exc:
                self._skip("malformed", str(exc).replace("sticky entry [0]", f"sticky entry [{i}]"))
                continue
            ident = (entry.service, entry.key)
            held = self._held.get(ident)
            if held is not None and held.worker and (held.open or held.expires_at > now):
                continue  # a live entry of this node's workers is kept, in every worker
            limit = self._limit(entry.service)
            if limit is None:
                self._skip("unknown-service", f"{entry.service}: no shared persistence here")
                continue
            if (entry.service in self.by_title) == is_address(entry.key):
                what = "an IP address" if entry.service in self.by_title else "no IP address"
                self._skip("malformed", f"sticky entry [{i}].key: {what} for {entry.service}")
                continue
            ttl = min(entry.ttl, limit)
            if ttl <= 0:
                continue  # it expired on its way here
            if ident not in self._held and len(self._held) >= MAX_HELD:
                self._purge(now)
                if len(self._held) >= MAX_HELD:
                    self._skip("full", f"{MAX_HELD} entries held: {entry.key} not taken")
                    continue
            self._held.pop(ident, None)
            self._held[ident] = _Held(0, entry.server, now + ttl, ttl, False, "", now)
            taken.append(SharedEntry(entry.service, entry.key, entry.server, ttl))
        if taken:
            self._push(taken, list(workers))
        return len(taken)

    def _limit(self, service: str) -> float | None:
        """The longest a learnt entry of `service` may live; None: not taken."""
        if self.timeouts is None:
            return MAX_LEARNT_TTL  # no Plan yet: kept for the first one, bounded anyway
        return self.timeouts.get(service)

    def _skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.last_skip = detail

    def _push(self, entries: list[SharedEntry], workers: list[StickyWorker]) -> None:
        payload = {"cmd": "sticky-import", "entries": [e.as_dict() for e in entries]}

        async def push() -> None:
            await asyncio.gather(
                *(w.call(payload, PUSH_TIMEOUT) for w in workers if w.pid is not None),
                return_exceptions=True,  # a worker replaced meanwhile is seeded from here
            )

        task = asyncio.get_running_loop().create_task(push())
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    def cancel(self) -> None:
        """Drop the pushes under way (the engine is closing)."""
        for task in list(self._pushes):
            task.cancel()

    async def settled(self) -> None:
        """Until every push of learnt entries has reached the workers (tests, shutdown)."""
        while self._pushes:
            await asyncio.gather(*list(self._pushes), return_exceptions=True)

    # --- a replaced worker -----------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every live entry, with the seconds it has left (an open one: its timeout)."""
        now = time.monotonic()
        return [
            {
                "service": ident[0],
                "key": ident[1],
                "server": held.server,
                "ttl": held.timeout if held.open else round(held.expires_at - now, 3),
            }
            for ident, held in self._held.items()
            if held.open or held.expires_at > now
        ]

    async def seed(self, workers: Iterable[StickyWorker]) -> list[str]:
        """Hand every entry to each of `workers` (each keeps its own live entries); returns
        the problems (a worker that did not take them)."""
        entries = self.entries()
        if not entries:
            return []
        payload = {"cmd": "sticky-import", "entries": entries}
        targets = [w for w in workers if w.pid is not None]
        results = await asyncio.gather(
            *(w.call(payload, PUSH_TIMEOUT) for w in targets), return_exceptions=True
        )
        return [
            f"{w.name} did not take {len(entries)} persistence entries: {r}"
            for w, r in zip(targets, results, strict=True)
            if isinstance(r, BaseException)
        ]
