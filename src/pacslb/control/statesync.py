"""State sync between the nodes of an HA group: UDP datagrams on `node.ha.sync_port`.

The active node sends, to every address in `node.ha.peers`, the kernel's DR per-flow entries
and source-IP persistence entries (DR and NAT) that are new since the last round or still in
use, everything again every FULL_EVERY seconds, and the built-in proxy's sticky entries when
its engine offers them (`export_sticky`). Every node takes what its peers send into its own
maps with the time they have left (control of what to send, the codec and the replay window
are pure: core/syncwire.py, core/syncmaps.py). So the node that takes over already holds the
flows and the persistent clients of the one it replaces.

How often: listing a map costs 15-30 us an entry (0.3-0.6 s at 20k, measured). So a round
lists only the DR flows of the last few seconds (the `_recent` maps, nft.RECENT_TIMEOUT) and the
persistence maps, every BASE_INTERVAL while that is cheap and every 4 listings' worth when it is
not (a quarter of a core at most); the whole flow maps (for the expiry of flows still in use)
every COMPLETE_EVERY s or 4 listings' worth. A new flow is thus known to the peers within about
BASE_INTERVAL of its first packet however many are open; one younger than that at a takeover
is picked by the deterministic table (core/hashslots.py), which every node computes alike.

Failures (a peer that cannot be reached, nftables refusing an import, a forged datagram) are
counted in /metrics and reported as events once per distinct trouble and at most once a minute
per kind (with the count held back: a peer's clock 30 s off must not make an event per
datagram); they never stop the control loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from pacslb import config as c
from pacslb.control.hostaddr import global_addresses
from pacslb.core.ha_role import HaState, Role
from pacslb.core.syncwire import Deltas, Entry, MapEntry, Opener, Sealer, StickyEntry, WireError
from pacslb.core.throttle import Throttle

BASE_INTERVAL = 0.1  # seconds between rounds while listing the recent flows is cheap
MAX_INTERVAL = 5.0
LISTING_SHARE = 4  # a round at least every this many listings' time: <= 25 % of a core
PACE_OVER = 3  # listings whose least cost paces the rounds
FULL_EVERY = 10.0  # seconds between rounds that send every entry
COMPLETE_EVERY = 2.0  # seconds (at least) between listings of the whole flow maps
HELLO_EVERY = 1.0  # seconds between heartbeats of a node standing by
IMPORT_GATHER = 0.02  # seconds datagrams are gathered into one import (one transaction)
BURST = 64  # datagrams sent before yielding to the loop

Note = Callable[[str], None]


class StateSync:
    def __init__(
        self,
        settings: c.HASettings,
        ha: HaState,
        engines: Sequence[Any],
        note: Note,
        node: str | None = None,
    ) -> None:
        if not settings.secret:
            raise ValueError("node.ha.secret is needed to authenticate state sync")
        self.settings = settings
        self.ha = ha
        self.engines = engines
        self.note = note
        self.peers = {str(ipaddress.ip_address(p)) for p in settings.peers}
        self.port = int(settings.sync_port)
        self.boot = secrets.randbits(62)
        # This node's identity on the wire: its HA address (node.ha.address, else the HA
        # interface's primary address, read at start), unique in the group where host names
        # may not be (nodes in namespaces share one).
        self.addresses = frozenset({str(settings.address)} if settings.address else ())
        self.node = node or (str(settings.address) if settings.address else socket.gethostname())
        self._keys()
        self._deltas = Deltas(FULL_EVERY)
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush: asyncio.Task[None] | None = None
        self._pending: list[Entry] = []
        self._sticky_cursor = 0
        self._boots: dict[str, int] = {}  # peer node (authenticated) -> its boot id, last heard
        self._last_hello = 0.0
        self.interval = BASE_INTERVAL
        self.last_listing_s = 0.0  # the last complete listing's cost
        self.last_recent_s = 0.0  # the last round's listing of recent flows
        self._complete_costs: deque[float] = deque([0.0, 0.0], maxlen=PACE_OVER)
        self._recent_costs: deque[float] = deque([0.0, 0.0], maxlen=PACE_OVER)
        self._next_complete = 0.0
        self.last_round_entries = 0
        # /metrics: datagrams sent and received, and rejected ones by reason.
        self.sent = 0
        self.received = 0
        self.imported = 0
        self.rejected: Counter[str] = Counter()
        self._said: dict[str, str] = {}  # trouble kind -> last message (once per distinct one)
        self.throttle = Throttle()  # and at most one event per kind a minute, with a count

    def _keys(self) -> None:
        secret = self.settings.secret
        assert secret is not None
        self._sealer = Sealer(secret, self.node, self.boot, receivers=sorted(self.peers))
        self._opener = Opener(secret, self.node, self.boot, self.addresses)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and send. OSError when it cannot (yet): no address on the HA interface at
        boot, the port still taken by the last run; control/hasync.py tries again."""
        loop = asyncio.get_running_loop()
        host = str(self.settings.address) if self.settings.address else None
        if host is None and self.settings.interface:
            found = await global_addresses(self.settings.interface)
            if not found:
                raise OSError(f"node.ha.interface {self.settings.interface} has no address yet")
            self.addresses = frozenset(found)
            self.node = found[0]
            self._keys()
        family = socket.AF_INET
        if any(":" in p for p in self.peers) or (host and ":" in host):
            family = socket.AF_INET6
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self),
            local_addr=(host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), self.port),
            family=family,
            reuse_port=False,
        )
        self._transport = transport
        self._task = loop.create_task(self._run())
        self.note(
            f"state sync on UDP port {self.port} with {', '.join(sorted(self.peers)) or 'no peer'}"
        )

    async def close(self) -> None:
        for task in (self._task, self._flush):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._flush = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            await asyncio.sleep(0)  # the socket closes on the loop's next turn: free the port

    # --- sending -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.round()
            except Exception as exc:  # any trouble is reported, and the next round tries again
                self._trouble("send", f"state sync round failed: {exc!r}")
            else:
                self._said.pop("send", None)

    async def round(self) -> int:
        """One round of sending (on the active node); the number of entries sent. A node
        standing by sends only a heartbeat now and then, so that the active node learns of a
        peer that has (re)started and sends it everything at once."""
        if self._transport is None:
            return 0
        if self.ha.role is not Role.ACTIVE:
            now = time.monotonic()
            if now - self._last_hello >= HELLO_EVERY:
                self._last_hello = now
                self._send(self._sealer.seal([], time.time()))
            return 0
        loop = asyncio.get_running_loop()
        entries: list[Entry] = []
        listed: list[MapEntry] = []
        kernel = self._engine("kernel", "export_state")
        now = loop.time()
        # The whole flow map now and then (its cost grows with the open flows); the flows of
        # the last seconds (nft.RECENT_TIMEOUT) and the persistence maps every round.
        complete = self._deltas.full_due(time.time()) or now >= self._next_complete
        if kernel is not None:
            listed = await asyncio.to_thread(kernel.export_state, complete)
            # Paced by the least of the last few costs, not the last one: a listing slowed by
            # a busy moment (or the first, cold one) must not hold the next rounds back for
            # seconds; a cost that lasts does pace them.
            cost = loop.time() - now
            costs = self._complete_costs if complete else self._recent_costs
            costs.append(cost)
            if complete:
                self.last_listing_s = cost
                wait = max(COMPLETE_EVERY, LISTING_SHARE * min(costs))
                self._next_complete = now + wait
            else:
                self.last_recent_s = cost
                self.interval = min(MAX_INTERVAL, max(BASE_INTERVAL, LISTING_SHARE * min(costs)))
        changed, full = self._deltas.round(listed, time.time(), complete)
        entries += changed
        if full:
            self._sticky_cursor = 0  # the proxy's sticky entries in full as well
        entries += await self._stickies()
        datagrams = self._sealer.seal(entries, time.time())
        for start in range(0, len(datagrams), BURST):
            self._send(datagrams[start : start + BURST])
            await asyncio.sleep(0)  # a full refresh of 20k entries must not stall the loop
        self.last_round_entries = len(entries)
        return len(entries)

    def _send(self, datagrams: list[bytes]) -> None:
        if self._transport is None:
            return
        for datagram in datagrams:
            for peer in sorted(self.peers):
                try:
                    self._transport.sendto(datagram, (peer, self.port))
                except OSError as exc:
                    self._trouble(f"peer {peer}", f"state sync to {peer} failed: {exc}")
                else:
                    self.sent += 1

    async def _stickies(self) -> list[Entry]:
        """The proxy's sticky entries new since the last round, when it offers them."""
        proxy = self._engine("proxy", "export_sticky")
        if proxy is None:
            return []
        got = proxy.export_sticky(self._sticky_cursor)
        if inspect.isawaitable(got):
            got = await got
        items, self._sticky_cursor = got
        out: list[Entry] = []
        for item in items:
            out.append(
                StickyEntry(
                    str(item["service"]), str(item["key"]), str(item["server"]), float(item["ttl"])
                )
            )
        return out

    # --- receiving -----------------------------------------------------------------------

    def received_datagram(self, data: bytes, source: str) -> None:
        source = source.removeprefix("::ffff:")
        if source not in self.peers:
            self.rejected["unknown-peer"] += 1
            self._trouble("unknown-peer", f"state sync: datagram from {source}, not a peer")
            return
        try:
            got = self._opener.open(data, time.time(), source)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            self._trouble(exc.reason, f"state sync: a datagram from {source} rejected: {exc}")
            return
        self.received += 1
        if self._boots.get(got.node) != got.boot:  # a peer new to us, or restarted
            self._boots[got.node] = got.boot
            self._deltas.force_full()
        if got.entries:
            self._pending.extend(got.entries)
            if self._flush is None or self._flush.done():
                self._flush = asyncio.get_running_loop().create_task(self._import())

    async def _import(self) -> None:
        """Gather the datagrams of a round, then add them in few transactions (on a thread:
        nftables calls block)."""
        await asyncio.sleep(IMPORT_GATHER)
        while self._pending:
            entries, self._pending = self._pending, []
            maps = [e for e in entries if isinstance(e, MapEntry)]
            stickies = [e.as_dict() for e in entries if isinstance(e, StickyEntry)]
            try:
                await self._import_maps(maps)
                await self._import_stickies(stickies)
            except Exception as exc:
                self._trouble("import", f"state sync: import failed: {exc!r}")
            else:
                self._said.pop("import", None)

    async def _import_maps(self, maps: list[MapEntry]) -> None:
        kernel = self._engine("kernel", "import_state")
        if not maps or kernel is None:
            return
        # Standing by: a peer's newer expiry replaces ours. Active: what we hold stands.
        replace = self.ha.role is not Role.ACTIVE
        self.imported += await asyncio.to_thread(kernel.import_state, maps, replace)
        self._deltas.known(maps, time.time())

    async def _import_stickies(self, stickies: list[dict[str, Any]]) -> None:
        proxy = self._engine("proxy", "import_sticky")
        if not stickies or proxy is None:
            return
        done = proxy.import_sticky(stickies)
        if inspect.isawaitable(done):
            await done

    # --- helpers -------------------------------------------------------------------------

    def _engine(self, name: str, method: str) -> Any:
        for engine in self.engines:
            if engine.name == name and callable(getattr(engine, method, None)):
                return engine
        return None

    def _trouble(self, kind: str, message: str) -> None:
        """An event once per distinct message of a kind, and at most one per kind a minute
        (a count of the ones held back goes with the next; all are in /metrics)."""
        if self._said.get(kind) == message:
            self.throttle.hold(kind)
            return
        text = self.throttle.text(kind, message, time.monotonic())
        if text is not None:
            self._said[kind] = message
            self.note(text)

    def status(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "peers": sorted(self.peers),
            "interval_s": round(self.interval, 3),
            "last_listing_ms": round(self.last_listing_s * 1000, 1),
            "last_recent_listing_ms": round(self.last_recent_s * 1000, 1),
            "last_round_entries": self.last_round_entries,
            "sent": self.sent,
            "received": self.received,
            "imported": self.imported,
            "rejected": dict(self.rejected),
            "events_held_back": dict(self.throttle.held_total),
        }


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, sync: StateSync) -> None:
        self.sync = sync

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self.sync.received_datagram(data, str(addr[0]))
        except Exception as exc:  # a datagram must never take the loop down
            self.sync._trouble("receive", f"state sync: a datagram could not be handled: {exc!r}")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is down: expected, and said once.
        self.sync._trouble("icmp", f"state sync: {exc}")
