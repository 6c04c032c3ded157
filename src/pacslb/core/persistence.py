"""Source-IP persistence with IPVS *template* semantics.

IPVS (net/netfilter/ipvs/ip_vs_core.c, ip_vs_sched_persist) keeps one template connection per
masked client address; the real connections it places are "controlled" by the template, and
the template's timer only starts once the last controlled connection is gone
(ip_vs_conn_expire keeps a template alive while cp->n_control > 0). So a DICOM association
that stays open for hours keeps its client on the same archive node however short the
persistence timeout is, and the client comes back to that node for `timeout` seconds after its
last connection closed. `StickyTable` is that table, without clocks: time comes in as `now`.

The table also keeps a change cursor, so that its entries can be shared (between the proxy's
workers, and with the peer node of an HA pair, as HAProxy's `peers` share stick tables):
`changes(since, now)` lists the entries placed, re-pointed, opened or closed after a cursor, and
`learn()` adds an entry learnt elsewhere without overriding a live one of its own (one placed
or used by this table's connections); an entry only learnt is updated by later news.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["StickyChange", "StickyEntry", "StickyTable", "TitleStickyTable"]


@dataclass(frozen=True, slots=True)
class StickyEntry:
    """One persistence entry, for status views."""

    key: str  # masked client address, e.g. "10.0.0.0" for /24
    server: str
    connections: int
    expires_at: float | None  # None while connections are open


class StickyChange(NamedTuple):
    """An entry as another table learns it: `ttl` is the seconds it has left, or the table's
    timeout while it has connections open (it lives at least that long after they close).
    A NamedTuple: a full listing of 10,000 entries is built 3x faster than frozen dataclasses."""

    key: str
    server: str
    ttl: float
    open: bool = False  # has connections now (ttl is then the timeout)


@dataclass(slots=True)
class _Entry:
    server: str
    connections: int
    expires_at: float | None
    learnt: bool = False  # from learn(), no connection of this table has used it yet

    def alive(self, now: float) -> bool:
        # Dead at exactly expires_at, like an IPVS timer that fires at its deadline.
        return self.connections > 0 or (self.expires_at is not None and now < self.expires_at)


class StickyTable:
    """Masked client address -> real server, alive while connected and `timeout` s after.

    Entries are keyed by the client address masked to the granularity prefix (ipvsadm
    --netmask), so that clients behind a pool of proxies or NAT addresses stay together.
    `detach()` must be called once for every `attach()`; `expire(now)` should be called
    periodically to purge dead entries (lookups ignore them either way).
    """

    keys_addresses = True  # keys are (masked) client addresses

    def __init__(self, timeout: float, granularity_v4: int = 32, granularity_v6: int = 128) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"persistence timeout must be a positive number, got {timeout!r}")
        if not 0 <= granularity_v4 <= 32:
            raise ValueError(f"IPv4 granularity must be 0..32, got {granularity_v4}")
        if not 0 <= granularity_v6 <= 128:
            raise ValueError(f"IPv6 granularity must be 0..128, got {granularity_v6}")
        self.timeout = float(timeout)
        self._mask4 = ((1 << granularity_v4) - 1) << (32 - granularity_v4)
        self._mask6 = ((1 << granularity_v6) - 1) << (128 - granularity_v6)
        self._entries: dict[str, _Entry] = {}
        # (expires_at, seq, key) pushed whenever an entry's last connection closes. Revived or
        # forgotten entries leave stale items; they are skipped when popped.
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        # key -> the version at its last change, in the order of change (a key changed again
        # is moved to the end): changes() walks back from the end only as far as its cursor.
        self._changes: dict[str, int] = {}
        self.version = 0

    def _changed(self, key: str) -> None:
        self.version += 1
        self._changes.pop(key, None)
        self._changes[key] = self.version

    def mask(self, client_ip: str) -> str:
        """The client address masked to the granularity prefix (ValueError if not an address)."""
        addr = ipaddress.ip_address(client_ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; they are IPv4 clients
            # and must share entries with the same client seen on an IPv4 socket.
            addr = addr.ipv4_mapped
        # Integer masking also drops an IPv6 zone id (fe80::1%eth0), which ip_network rejects.
        if isinstance(addr, ipaddress.IPv4Address):
            return str(ipaddress.IPv4Address(int(addr) & self._mask4))
        return str(ipaddress.IPv6Address(int(addr) & self._mask6))

    def lookup(self, client_ip: str, now: float) -> str | None:
        """The server of the client's live entry, or None."""
        key = self.mask(client_ip)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.alive(now):
            del self._entries[key]
            self._changes.pop(key, None)
            return None
        return entry.server

    def attach(self, client_ip: str, server_key: str, now: float) -> None:
        """A connection of this client was placed on `server_key`."""
        key = self.mask(client_ip)
        entry = self._entries.get(key)
        if entry is None or not entry.alive(now) or entry.server != server_key:
            # New, dead, or re-pointed: connections still open to an older server are no longer
            # this entry's (their detach names that server and is ignored), so count from 1.
            self._entries[key] = _Entry(server_key, 1, None)
            self._changed(key)
            return
        if entry.connections == 0:
            self._changed(key)  # idle -> open (or learnt -> ours): its ttl is the timeout again
        entry.connections += 1
        entry.expires_at = None
        entry.learnt = False

    def detach(self, client_ip: str, now: float, server_key: str | None = None) -> None:
        """A connection of this client closed; the last one starts the `timeout` countdown.

        With `server_key`, a close of a connection placed on another server than the entry's
        (it was forgotten or re-pointed meanwhile) does not count against the entry.
        """
        key = self.mask(client_ip)
        entry = self._entries.get(key)
        if entry is None or entry.connections == 0:
            return
        if server_key is not None and server_key != entry.server:
            return
        entry.connections -= 1
        if entry.connections == 0:
            entry.expires_at = now + self.timeout
            self._changed(key)
            self._seq += 1
            heapq.heappush(self._heap, (entry.expires_at, self._seq, key))
            if len(self._heap) > 2 * len(self._entries) + 1024:
                self._compact()

    def forget(self, client_ip: str) -> bool:
        """Drop the client's entry (its server is gone); True if there was one."""
        key = self.mask(client_ip)
        self._changes.pop(key, None)
        return self._entries.pop(key, None) is not None

    def forget_server(self, server_key: str) -> int:
        """Drop every entry of `server_key` (halted or down); returns how many."""
        doomed = [k for k, e in self._entries.items() if e.server == server_key]
        for k in doomed:
            del self._entries[k]
            self._changes.pop(k, None)
        return len(doomed)

    def changes(self, since: int, now: float) -> tuple[list[StickyChange], int]:
        """The live entries placed, re-pointed, opened or closed after cursor `since`, and the
        cursor to pass next time. Forgotten and expired entries are not listed: a peer's copy
        expires by its own ttl, and a server that is down or halted is dropped by every table
        that looks it up (Balancer.pick)."""
        out = []
        timeout = self.timeout
        for key in reversed(self._changes):
            if self._changes[key] <= since:
                break
            entry = self._entries.get(key)
            if entry is None or not entry.alive(now):
                continue
            left = entry.expires_at
            ttl = timeout if entry.connections or left is None else left - now
            out.append(StickyChange(key, entry.server, ttl, entry.connections > 0))
        out.reverse()
        return out, self.version

    def learn(self, client: str, server_key: str, ttl: float, now: float) -> bool:
        """Take an entry learnt elsewhere (another worker, the peer node): the client goes to
        `server_key` for `ttl` seconds unless this table already has a live entry of its own
        for it (placed or used by its connections), which is kept (an idle one of the same
        server lives on to the later expiry). An entry only learnt so far takes the news (the
        owner re-pointed its client, or it closed: a new ttl). Not a change of this table: it
        is not listed by changes(), so it never echoes back. True if the entry was added or
        changed; ValueError for a bad address or ttl."""
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"persistence ttl must be a positive number, got {ttl!r}")
        key = self.mask(client)
        expires_at = now + min(ttl, self.timeout)
        entry = self._entries.get(key)
        if entry is not None and entry.alive(now) and not entry.learnt:
            if entry.server != server_key or entry.connections or entry.expires_at is None:
                return False
            if expires_at <= entry.expires_at:
                return False
            entry.expires_at = expires_at
        elif entry is not None and entry.alive(now):
            if (entry.server, entry.expires_at) == (server_key, expires_at):
                return False
            entry.server, entry.expires_at = server_key, expires_at
        else:
            self._entries[key] = _Entry(server_key, 0, expires_at, learnt=True)
            self._changes.pop(key, None)
        self._seq += 1
        heapq.heappush(self._heap, (expires_at, self._seq, key))
        return True

    def expire(self, now: float) -> int:
        """Purge entries dead at `now`; returns how many were removed."""
        removed = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, _, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry.connections == 0 and entry.expires_at == expires_at:
                del self._entries[key]
                self._changes.pop(key, None)
                removed += 1
        return removed

    def entries(self, now: float | None = None) -> list[StickyEntry]:
        """All stored entries, or with `now` only those alive at `now`."""
        return [
            StickyEntry(k, e.server, e.connections, e.expires_at)
            for k, e in self._entries.items()
            if now is None or e.alive(now)
        ]

    def __len__(self) -> int:
        """Stored entries, including dead ones not purged by `expire()` yet."""
        return len(self._entries)

    def _compact(self) -> None:
        # Without regular expire() calls, revive/close churn would grow the heap without bound.
        self._heap = [
            (e.expires_at, i, k)
            for i, (k, e) in enumerate(self._entries.items())
            if e.connections == 0 and e.expires_at is not None
        ]
        heapq.heapify(self._heap)
        self._seq = len(self._heap)


class TitleStickyTable(StickyTable):
    """calling-ae persistence (l7-dicom): the key is the modality's calling AE title, so every
    association of one modality lands on one archive node, whatever address it comes from.
    The same template semantics as source-ip: alive while an association is open and
    `timeout` seconds after the last one ends."""

    keys_addresses = False

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)

    def mask(self, client_ip: str) -> str:
        """The key as given: an AE title has no prefix to mask."""
        return client_ip
