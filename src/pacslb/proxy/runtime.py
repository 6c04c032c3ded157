"""Per-virtual-service state inside the proxy process: the Plan's view, live counts, decisions.

The listeners (tcp.py, http.py) ask a ServiceRuntime which real server takes a connection or a
request, report when it ends, and register their connections so that a halt can close them.
A new Plan swaps the service view in place: balancer state (persistence entries, round-robin
position) and the counts of connections already open survive it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pacslb.config import Mode
from pacslb.core.balancer import Balancer
from pacslb.core.passive import PassiveHealth
from pacslb.core.persistence import StickyTable, TitleStickyTable
from pacslb.core.plan import PlanEndpoint, PlanRealServer, PlanService
from pacslb.core.schedule import make_scheduler
from pacslb.core.state import AdminState, Health
from pacslb.proxy.notices import notice

log = logging.getLogger(__name__)

# Why connections are cut, as the events say it (l7-dicom words its A-ABORT with these).
HALTED = "the real server was halted"
REMOVED = "the real server was removed"
STOPPING = "the proxy is stopping"


class Closable(Protocol):
    def abort(self, reason: str = "") -> None:
        """Close the connection now; `reason` (e.g. "the real server was halted") is what a
        protocol that can say why (l7-dicom's A-ABORT event) reports."""


@dataclass
class ServerStats:
    """Counters of one real server (or the fallback), as `pacslb status` and /metrics show."""

    active: int = 0
    total: int = 0
    bytes_in: int = 0  # client -> server
    bytes_out: int = 0  # server -> client
    connect_failures: int = 0
    requests: int = 0
    # responses by class, counted as classes[status // 100] (1xx..5xx, 6xx..9xx as 5xx; index 0
    # unused): a list index is the cheapest count per request. as_dict() names them. The
    # proxy's own 502/504 about this server count here too, as HAProxy counts them.
    classes: list[int] = field(default_factory=lambda: [0] * 6)
    retries: int = 0  # requests that failed here before any response byte and were sent again
    failing: int = 0  # passive health: failures in a row (a response or relayed byte: 0)
    ejections: int = 0  # times passive health took the server out of rotation
    ejected: bool = False  # out of rotation now (passive health, this worker)
    # l7-dicom (proxy/dicom.py), as exported under these names (see STATUS/docs):
    associations: int = 0  # A-ASSOCIATE-RQs forwarded here
    assoc_active: int = 0
    assoc_rejected: int = 0  # A-ASSOCIATE-RJ: the proxy's own, or the server's
    assoc_aborted: int = 0  # ended by an A-ABORT, from any side (the proxy's included)
    pdata_pdus: int = 0  # P-DATA-TF PDUs relayed, both directions
    assoc_seconds: float = 0.0  # durations of the associations that ended, summed

    def as_dict(self) -> dict[str, object]:
        return {
            "active": self.active,
            "total": self.total,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connect_failures": self.connect_failures,
            "requests": self.requests,
            "responses": {f"{c}xx": n for c, n in enumerate(self.classes) if n},
            "retries": self.retries,
            "ejections": self.ejections,
            "ejected": int(self.ejected),
        } | (
            self.dicom_dict()
            if self.associations or self.assoc_rejected or self.assoc_aborted
            else {}
        )

    def dicom_dict(self) -> dict[str, object]:
        return {
            "associations": self.associations,
            "assoc_active": self.assoc_active,
            "assoc_rejected": self.assoc_rejected,
            "assoc_aborted": self.assoc_aborted,
            "pdata_pdus": self.pdata_pdus,
            "assoc_seconds": round(self.assoc_seconds, 3),
        }


FALLBACK = "__fallback__"
# The row of requests no server could take (the proxy's 503, as HAProxy counts a backend
# without servers): `pacslb status` shows its 5xx as the service's `no_server`.
NO_SERVER = "__no_server__"
# l7-dicom: the counters of one calling AE title are the row "ae:" + title (no real server
# label has a colon); at most MAX_CALLING_AES titles per service, the rest share "ae:*", so a
# client sending random titles cannot grow the worker's memory.
CALLING_AE_ROW = "ae:"
MAX_CALLING_AES = 256


class LiveServer:
    """A real server as schedulers see it (schedule.ServerView), kept up to date in place:
    the Plan's view on update(), the active count on opened()/closed(). Building frozen
    Candidates per request cost ~4 of the ~5 us a pick took."""

    __slots__ = (
        "active",
        "admin",
        "health",
        "inactive",
        "key",
        "max_connections",
        "min_connections",
        "weight",
    )

    def __init__(self, rs: PlanRealServer, active: int = 0) -> None:
        self.key = rs.label
        self.weight = rs.effective_weight
        self.admin = rs.admin
        self.health = rs.health
        self.active = active
        self.inactive = 0
        self.max_connections = rs.max_connections
        self.min_connections = rs.min_connections

    @property
    def overhead(self) -> int:
        return self.active * 256 + self.inactive


def cookie_id(service: str, server: str) -> str:
    """The opaque value of the persistence cookie: stable across restarts and HA nodes, and no
    internal address or name leaks to the browser."""
    digest = hashlib.blake2b(server.encode(), digest_size=6, person=service.encode()[:16])
    return digest.hexdigest()


class ServiceRuntime:
    def __init__(self, service: PlanService) -> None:
        self.service = service
        self.stats: dict[str, ServerStats] = {}
        self.connections: dict[str, set[Closable]] = {}
        self.balancer = self._balancer(service)
        self.persistent = self.balancer.sticky is not None  # release() has work to do
        self._cookies: dict[str, str] = {}
        self._servers: dict[str, PlanRealServer] = {}
        self._live: list[LiveServer] = []
        self._live_by_label: dict[str, LiveServer] = {}
        self._expired_at = 0.0
        self.cookie_name: bytes | None = None
        self.passive = PassiveHealth(service.passive)
        self._returns: dict[str, asyncio.TimerHandle] = {}  # ejected server -> its return
        self.drained_since: dict[str, float] = {}  # drained or leaving server -> since when
        self.drain_is_final = False  # l7-dicom: no new association at all on a drained server
        self._calling_aes = 0
        self.update(service)

    @staticmethod
    def _balancer(service: PlanService) -> Balancer:
        p = service.persistence
        sticky: StickyTable | None = None
        if p.kind == "source-ip":
            sticky = StickyTable(float(p.timeout), p.granularity, p.granularity_v6)
        elif p.kind == "calling-ae":
            sticky = TitleStickyTable(float(p.timeout))
        return Balancer(make_scheduler(str(service.scheduler)), sticky)

    def update(self, service: PlanService) -> None:
        """Take a new view of the service; halted servers lose their connections now."""
        old = self.service
        if (old.scheduler, old.persistence) != (service.scheduler, service.persistence):
            self.balancer = self._balancer(service)
            self.persistent = self.balancer.sticky is not None
        self.service = service
        p = service.persistence
        # the persistence cookie's name as the HTTP code reads it (None: no cookie persistence)
        self.cookie_name = p.cookie.encode() if p.kind == "http-cookie" else None
        self._servers = {rs.label: rs for rs in service.real_servers}
        self._cookies = {
            cookie_id(service.label, rs.label): rs.label for rs in service.real_servers
        }
        self._live = [
            LiveServer(rs, self.stats.setdefault(rs.label, ServerStats()).active)
            for rs in service.real_servers
        ]
        self._live_by_label = {live.key: live for live in self._live}
        self.passive.policy = passive = service.passive
        # l7-http reads this per response: the server's own 5xx count as failures too
        self.passive_5xx = passive.server_errors and passive.consecutive_failures > 0
        self.passive.forget(set(self._servers))
        for label in [k for k in self._returns if k not in self._servers]:
            self._returns.pop(label).cancel()
        for label in self.passive.out():
            self._live_by_label[label].health = Health.DOWN  # still out of rotation
        if self.passive.out() and not self._available():
            # Nothing else is left (the others went down or were halted): a server that
            # failed in traffic is better than none.
            for label in self.passive.out():
                self._return(label, "no other server is available")
        now = time.monotonic()
        draining = {AdminState.DRAIN, AdminState.REMOVING}
        self.drained_since = {
            rs.label: self.drained_since.get(rs.label, now)
            for rs in service.real_servers
            if rs.admin in draining
        }
        # l7-dicom: drain means no new association (issue 19), not even from a modality whose
        # persistence entry names the drained server (the balancer keeps those for l7-tcp and
        # l4, as IPVS does): else a busy modality keeps landing there, the drain never ends,
        # and the drain cap aborts associations begun a moment before it. Here, in pick(),
        # for every l7-dicom listener (plain and TLS).
        self.drain_is_final = service.mode is Mode.L7_DICOM
        for rs in service.real_servers:
            if not rs.keeps_existing:
                self.balancer.server_lost(rs.label)
            if rs.admin is AdminState.HALT:
                self.close_server(rs.label, HALTED)
        for label in [k for k in self.connections if k not in self._servers and k != FALLBACK]:
            self.close_server(label, REMOVED)  # removed from the config: nothing more goes there

    def close_server(self, label: str, reason: str) -> int:
        conns = self.connections.pop(label, set())
        for conn in list(conns):
            conn.abort(reason)
        return len(conns)

    # --- decisions -----------------------------------------------------------------------

    def candidates(self, exclude: Iterable[str] = ()) -> list[LiveServer]:
        if not exclude:
            return self._live
        skip = set(exclude)
        return [live for live in self._live if live.key not in skip]

    def pick(
        self,
        client_ip: str,
        exclude: Iterable[str] = (),
        now: float | None = None,
        allowed: Collection[str] = (),
    ) -> PlanRealServer | None:
        """The real server for a new connection (persistence, then the scheduler), or None.

        `client_ip` is the persistence key: the client's address, or for calling-ae
        persistence the calling AE title. `allowed`, when not empty, limits the choice to
        these labels (l7-dicom routes by called AE).
        A returned server is a placed connection: call `release()` when it ends."""
        sticky = self.balancer.sticky
        if sticky is None:
            now = 0.0  # only persistence reads the clock
        else:
            now = time.monotonic() if now is None else now
            if now - self._expired_at > 1.0:
                self._expired_at = now
                sticky.expire(now)  # bounded memory: drop entries of clients long gone
        if self.drain_is_final and self.drained_since:
            exclude = [*exclude, *self.drained_since]  # the entry then moves (see update)
        if allowed:
            skip = set(exclude)
            candidates = [v for v in self._live if v.key in allowed and v.key not in skip]
        else:
            candidates = self._live if not exclude else self.candidates(exclude)
        label = self.balancer.pick(candidates, client_ip, now)
        return None if label is None else self._servers[label]

    def release(self, client_ip: str, server: str, now: float | None = None) -> None:
        if self.balancer.sticky is not None:  # only persistence keeps per-client state
            self.balancer.closed(client_ip, time.monotonic() if now is None else now, server)

    def by_cookie(self, value: str) -> PlanRealServer | None:
        """The server a persistence cookie names, if it may still serve that client: online or
        drained (a drained server keeps its cookie clients), not halted or down."""
        label = self._cookies.get(value)
        if label is None:
            return None
        rs = self._servers[label]
        if self._returns and label in self._returns:
            return None  # ejected by passive health: the client is scheduled anew
        return rs if rs.keeps_existing else None

    def server(self, label: str) -> PlanRealServer | None:
        return self._servers.get(label)

    @property
    def fallback(self) -> PlanEndpoint | None:
        return self.service.fallback

    # --- accounting ----------------------------------------------------------------------

    def opened(self, label: str, conn: Closable | None = None) -> ServerStats:
        stats = self.stats.get(label)
        if stats is None:
            stats = self.stats[label] = ServerStats()
        stats.active += 1
        stats.total += 1
        live = self._live_by_label.get(label)
        if live is not None:
            live.active = stats.active
        if conn is not None:
            conns = self.connections.get(label)
            if conns is None:
                conns = self.connections[label] = set()
            conns.add(conn)
        return stats

    def closed(self, label: str, conn: Closable | None = None) -> None:
        stats = self.stats.get(label)
        if stats is not None and stats.active > 0:
            stats.active -= 1
            live = self._live_by_label.get(label)
            if live is not None:
                live.active = stats.active
        if conn is not None:
            conns = self.connections.get(label)
            if conns is not None:
                conns.discard(conn)

    def calling_ae_stats(self, title: str) -> ServerStats:
        """The counters row of a calling AE title (bounded, see MAX_CALLING_AES)."""
        key = CALLING_AE_ROW + title
        stats = self.stats.get(key)
        if stats is None:
            if self._calling_aes >= MAX_CALLING_AES:
                key = CALLING_AE_ROW + "*"
                stats = self.stats.get(key)
                if stats is not None:
                    return stats
            else:
                self._calling_aes += 1
            stats = self.stats[key] = ServerStats()
        return stats

    def connect_failed(self, label: str, reason: str = "connect failed") -> None:
        self.stats.setdefault(label, ServerStats()).connect_failures += 1
        self.failed(label, reason)

    # --- passive health ------------------------------------------------------------------

    def failed(self, label: str, reason: str) -> None:
        """A failure of `label` in live traffic (core/passive.py says which count): after
        `passive.consecutive_failures` in a row it leaves this worker's rotation for a while."""
        stats = self.stats.get(label)
        if stats is None or label == FALLBACK:
            return
        stats.failing += 1
        now = time.monotonic()
        ejection = self.passive.failed(label, stats.failing, self._available(label), now)
        if ejection is None:
            return
        live = self._live_by_label.get(label)
        if live is not None:
            live.health = Health.DOWN  # what every scheduler and persistence skip
        stats.ejections += 1
        stats.ejected = True
        self.balancer.server_lost(label)  # its source-ip clients are scheduled anew
        service = self.service.label
        message = (
            f"ejected from rotation for {ejection.seconds:g} s by passive health: "
            f"{stats.failing} failures in a row, the last: {reason}"
        )
        log.warning("%s/%s %s", service, label, message)
        notice(message, service, label, key=f"passive-out/{service}/{label}")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test of the runtime alone): it stays out
            return
        self._returns[label] = loop.call_later(ejection.seconds, self._return, label)

    def _return(self, label: str, why: str = "its ejection time is over") -> None:
        handle = self._returns.pop(label, None)
        if handle is not None:
            handle.cancel()  # a no-op when it is the one running now
        if not self.passive.returned(label, time.monotonic()):
            return
        stats = self.stats.get(label)
        if stats is not None:
            stats.failing = 0
            stats.ejected = False
        live = self._live_by_label.get(label)
        rs = self._servers.get(label)
        if live is not None and rs is not None:
            live.health = rs.health
        service = self.service.label
        log.warning("%s/%s back in rotation: %s", service, label, why)
        message = f"back in rotation after its ejection: {why}"
        notice(message, service, label, key=f"passive-back/{service}/{label}")

    def _available(self, but: str = "") -> bool:
        """Whether a server other than `but` takes new connections now."""
        online, down = AdminState.ONLINE, Health.DOWN
        return any(
            live.key != but and live.admin is online and live.health is not down and live.weight
            for live in self._live
        )
