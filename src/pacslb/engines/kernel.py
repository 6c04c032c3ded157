"""The kernel engine: layer 4 services (l4-dr, l4-nat, l4-snat) as nftables tables `pacslb`.

`apply(plan)` gathers what the render needs from the host (the DR interface and MACs), deals
each service's slots (core/slots.py), renders (core/nft.py) and runs the script as one
libnftables transaction. When only weights, admin states or health changed, the structure is
the same and only the static sets and maps are refilled. Once a second a loop reads the live
connection counts and counters, and re-deals the slots of `wlc`/`lc` services.

The tables stay when pacslb stops: forwarding goes on, and the next `pacslb run` adopts them
(their dynamic maps, i.e. DR flows and persistence, are kept; only the chains are refilled).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pacslb import config as c
from pacslb.core import nft, syncmaps, tproxy
from pacslb.core.plan import Plan, PlanService, ServerKey
from pacslb.core.slots import service_slots
from pacslb.core.state import Health
from pacslb.core.syncwire import MapEntry
from pacslb.engines.base import Counters
from pacslb.engines.host import Host
from pacslb.engines.nftables import Nft
from pacslb.engines.tproxy import TproxyRules
from pacslb.errors import EngineError

POLL_INTERVAL = 1.0
LINGER_CHECK = 2.0  # seconds between looks at transparent connections finishing (tproxy)
FACTS_EVERY = 10  # polls between re-reading the real servers' MACs
_DECLARATION = re.compile(r"^\t(chain|set|map|counter|ct timeout) (\S+) \{$", re.MULTILINE)


class KernelEngine:
    name = "kernel"

    def __init__(
        self,
        state_dir: Path,
        nft_runner: Nft | None = None,
        host: Host | None = None,
        notify: Callable[[str], None] | None = None,
        place_vips: bool = True,
    ) -> None:
        self.state_dir = state_dir
        # False in an HA pair: keepalived owns every floating address (control/ha.py), and a
        # VIP this engine added would stay on the passive node as well.
        self.place_vips = place_vips
        self._nft = nft_runner
        self.host = host or Host()
        self.notify = notify or (lambda message: None)
        # transparent l7 services' return path (source: client), kept beside the l4 tables
        self.tproxy = TproxyRules(lambda: self.nftables, self.host)
        self._plan: Plan | None = None  # the last Plan applied
        self._view: Plan | None = None  # what was rendered: without DR servers lacking a MAC
        self._unresolved: set[tuple[str, str]] = set()  # those servers (service, label)
        self._facts = nft.KernelFacts()  # as the host told them
        self._seen = nft.KernelFacts()  # as rendered: stand-in MACs for the unresolved
        self._live: nft.LiveObjects | None = None  # None: not read from the kernel yet
        self._shape = ""
        self._slots: dict[str, tuple[str, ...]] = {}
        self._active: dict[ServerKey, int] = {}
        self._totals: dict[ServerKey, int] = {}
        self._new_flows: dict[ServerKey, int] = {}  # per server, in the last poll interval
        self._counters: dict[ServerKey, Counters] = {}
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._lingering: asyncio.Task[None] | None = None  # see _linger()
        self._addresses_file = state_dir / "kernel-addresses.json"
        self.last_update_ms = 0.0  # how long the last nftables transaction took
        self._where: tuple[Any, ...] | None = None  # the addresses the facts were read for

    @property
    def nftables(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    # --- applying ------------------------------------------------------------------------

    async def apply(self, plan: Plan) -> None:
        async with self._lock:
            await self._apply(plan)

    async def _apply(self, plan: Plan, refresh_facts: bool = False) -> None:
        # First, so that the proxy (the next engine) finds the return path in place. A failure
        # there fails this apply (retried, not ready, named) but does not hold back the layer 4
        # services' own changes.
        try:
            for done in await asyncio.to_thread(self.tproxy.apply, tproxy.families(plan)):
                self.notify(done)
        except EngineError:
            await self._apply_layer4(plan, refresh_facts)
            raise
        finally:
            if self.tproxy.lingering and self._lingering is None:
                self._lingering = asyncio.get_running_loop().create_task(self._linger())
        await self._apply_layer4(plan, refresh_facts)

    async def _linger(self) -> None:
        """While a return path no service wants any more is kept for the transparent
        connections that still finish on it, look again now and then; it goes with the last."""
        try:
            while self.tproxy.lingering:
                await asyncio.sleep(LINGER_CHECK)
                async with self._lock:
                    wanted = tproxy.families(self._plan) if self._plan is not None else frozenset()
                    try:
                        done = await asyncio.to_thread(self.tproxy.apply, wanted)
                    except EngineError as exc:
                        done = [f"transparent mode's return path: {exc}"]
                for line in done:
                    self.notify(line)
        finally:
            self._lingering = None

    async def _apply_layer4(self, plan: Plan, refresh_facts: bool) -> None:
        services = nft.kernel_services(plan)
        idle = not services and self._live is None and not self._addresses()
        if idle and not await asyncio.to_thread(self._tables_left):
            self._plan = self._view = plan  # no layer 4 service: no nftables (nor root) needed
            return
        live = self._live
        if live is None:
            live = await asyncio.to_thread(self._read_live)
        # The host is asked (routes, MACs: a few `ip` processes) only when the addresses
        # change or a MAC is still missing; a drain or a health change is then just the
        # nftables transaction.
        where = _endpoints(plan)
        facts = self._facts
        if refresh_facts or where != self._where or self._unresolved:
            facts = await asyncio.to_thread(self._gather_facts, plan)
        view, seen = self._reachable(plan, facts)
        slots = {svc.label: self._deal(svc) for svc in nft.kernel_services(view)}
        ruleset = nft.render(view, seen, slots, live)
        if ruleset.shape != self._shape:
            await self._run(ruleset.script)
        else:
            try:
                await self._run(ruleset.elements)
            except EngineError:
                # The tables were changed behind our back (deleted by hand?): read what is
                # there and send the whole script instead.
                live = await asyncio.to_thread(self._read_live)
                ruleset = nft.render(view, seen, slots, live)
                await self._run(ruleset.script)
        self._plan, self._view, self._slots = plan, view, slots
        self._facts, self._seen = facts, seen
        self._live, self._shape = ruleset.live, ruleset.shape
        if where != self._where:
            # Every service's VIP, layer 7 ones too: in the nat-l7 deployment Manager's VIP
            # sits in the clients' subnet beside DICOM's, and the proxy's IP_FREEBIND socket
            # hears nobody until the host answers ARP for it. (A config of layer 7 services
            # only returns above: it runs without root, on addresses the host has.)
            await asyncio.to_thread(self._place_addresses, plan.services)
            self._where = where
        if services and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    def _tables_left(self) -> bool:
        """Tables of an earlier run whose services are gone from the config (they would
        still forward): True when there are, so that the update deletes them."""
        try:
            listing = self.nftables.json("list tables")
        except EngineError:  # no nftables, or not root: nothing of ours can be there
            return False
        return any(t.get("table", {}).get("name") == nft.TABLE for t in listing.get("nftables", []))

    def _reachable(self, plan: Plan, facts: nft.KernelFacts) -> tuple[Plan, nft.KernelFacts]:
        """DR real servers whose MAC is unknown (down, or not on the segment) get no new
        flows and no persistent clients until they answer ARP, and the rest forward as
        usual. They keep their place in the tables under a stand-in MAC (02:00 + their id),
        so that losing and finding a MAC is an element update, never a structure change."""
        unresolved: set[tuple[str, str]] = set()
        macs = dict(facts.macs)
        services = []
        for svc in plan.services:
            if svc.mode is not c.Mode.L4_DR:
                services.append(svc)
                continue
            servers = []
            for rs in svc.real_servers:
                if rs.address in facts.macs:
                    servers.append(rs)
                    continue
                unresolved.add((svc.label, rs.label))
                macs.setdefault(rs.address, _stand_in_mac(nft.server_id(svc.label, rs.label)))
                servers.append(dataclasses.replace(rs, effective_weight=0, health=Health.DOWN))
            fallback = svc.fallback
            if fallback is not None and fallback.address not in facts.macs:
                unresolved.add((svc.label, "fallback"))
                fallback = None  # only ever in the slot table: an element update as well
            services.append(
                dataclasses.replace(svc, real_servers=tuple(servers), fallback=fallback)
            )
        for service, server in sorted(unresolved - self._unresolved):
            self.notify(
                f"{service}/{server}: no ARP answer, so no MAC address: not forwarded to "
                "until it answers (is it up, on this segment?)"
            )
        self._unresolved = unresolved
        view = dataclasses.replace(plan, services=tuple(services))
        return view, dataclasses.replace(facts, macs=macs)

    async def _run(self, script: str) -> None:
        """One transaction, on a worker thread: libnftables calls are serialised by Nft's lock,
        and state sync holds it on its own thread for a whole listing (0.3-0.6 s at 20k flows)
        or an import batch; waiting for it here on the loop would stall every API request,
        health check and drain meanwhile. The callers hold self._lock, so applies keep their
        order."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.to_thread(self.nftables.run, script)
        except EngineError as exc:
            if "not permitted" in str(exc):
                raise EngineError(
                    f"{exc}: layer 4 services need root (CAP_NET_ADMIN) for nftables"
                ) from exc
            raise
        self.last_update_ms = (loop.time() - started) * 1000

    def _deal(self, svc: PlanService) -> tuple[str, ...]:
        """The slot table; with live counts once known (`wlc`/`lc` deal by them, and every
        scheduler skips a server at its max_connections)."""
        if not self._active:
            return service_slots(svc)
        active = {rs.label: self._active.get((svc.label, rs.label), 0) for rs in svc.real_servers}
        new = sum(self._new_flows.get((svc.label, rs.label), 0) for rs in svc.real_servers)
        return service_slots(svc, active, new)

    def _read_live(self) -> nft.LiveObjects:
        """What our tables hold now (a restarted pacslb adopts them, keeping their flows).

        Read from the text listing: nft 1.0.6 warns on stderr that `counter name ... map` has
        no JSON form when a whole table is listed as JSON, and `list ct timeout` crashes it."""
        listing = self.nftables.json("list tables")
        tables = {
            t["table"]["family"]
            for t in listing.get("nftables", [])
            if "table" in t and t["table"]["name"] == nft.TABLE
        }
        found: dict[str, set[tuple[str, str]]] = {
            k: set() for k in ("chain", "set", "map", "counter", "ct timeout")
        }
        for family in sorted(tables):
            text = self.nftables.run(f"list table {family} {nft.TABLE}")
            for kind, name in _DECLARATION.findall(text):
                found[kind].add((family, name))
        return nft.LiveObjects(
            frozenset(tables),
            *(frozenset(found[k]) for k in ("chain", "set", "map", "counter", "ct timeout")),
        )

    def _gather_facts(self, plan: Plan) -> nft.KernelFacts:
        """DR needs, per service, the LB interface on the real servers' segment and the MAC
        of every real server (asked by ARP when the neighbour table lacks it)."""
        links: dict[str, nft.DrLink] = {}
        wanted: list[str] = []
        for svc in nft.kernel_services(plan):
            if svc.mode is not c.Mode.L4_DR:
                continue
            endpoints = [(rs.label, rs.address) for rs in svc.real_servers]
            if svc.fallback is not None:
                endpoints.append(("fallback", svc.fallback.address))
            devices: dict[str, str] = {}
            for label, address in endpoints:
                route = self.host.route(address)
                if route.gateway or route.local:
                    raise EngineError(
                        f"{svc.label}/{label}: {address} is not on a segment this host is "
                        f"attached to (route via {route.gateway or 'local'}); Direct Routing "
                        "needs the load balancer on the real servers' segment"
                    )
                devices[label] = route.device
                wanted.append(address)
            if len(set(devices.values())) > 1:
                where = ", ".join(f"{k} on {v}" for k, v in devices.items())
                raise EngineError(f"{svc.label}: real servers on different interfaces ({where})")
            if devices:
                device = next(iter(devices.values()))
                links[svc.label] = nft.DrLink(device, self.host.link_mac(device))
        macs = self.host.resolve(sorted(set(wanted))) if wanted else {}
        return nft.KernelFacts(links, macs)  # a missing MAC: see _reachable

    # --- VIP addresses -------------------------------------------------------------------

    def _addresses(self) -> dict[str, str]:
        """VIPs this engine added to an interface (address -> device), from the state dir."""
        try:
            return dict(json.loads(self._addresses_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _place_addresses(self, services: tuple[PlanService, ...]) -> None:
        """Put each VIP on the interface of its subnet so the LB answers ARP for it, when the
        host does not have it already; take away the ones we added that no service uses.

        A VIP routed to this host by a router (not in any attached subnet) needs no address.
        Forwarding is switched on for NAT and SNAT."""
        added = self._addresses()
        if not self.place_vips:  # keepalived's now: forgotten here, never deleted (the
            added = {}  # active node's keepalived holds them; a restart of it clears leftovers)
        wanted = {svc.vip for svc in services} if self.place_vips else set()
        for address, device in list(added.items()):
            if address not in wanted:
                self.host.del_address(address, device)
                del added[address]
                self.notify(f"removed VIP {address} from {device}")
        for svc in services:
            if svc.vip in added or not self.place_vips:
                continue
            route = self.host.route(svc.vip)
            if route.local or route.gateway:
                continue
            self.host.add_address(svc.vip, route.device)
            added[svc.vip] = route.device
            self.notify(f"added VIP {svc.vip} to {route.device}")
        for version in sorted(
            {
                ipaddress.ip_address(s.vip).version
                for s in services
                if s.mode.is_kernel and s.mode is not c.Mode.L4_DR
            }
        ):
            if self.host.enable_forwarding(version):
                self.notify(f"enabled IPv{version} forwarding (needed by NAT)")
        tmp = self._addresses_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(added, indent=1))
        tmp.replace(self._addresses_file)

    # --- counting ------------------------------------------------------------------------

    def counters(self) -> Mapping[ServerKey, Counters]:
        return self._counters

    async def refresh(self) -> None:
        """Read counts and counters; re-deal `wlc`/`lc` slots when they moved."""
        plan = self._plan
        if plan is None:
            return
        services = nft.kernel_services(plan)
        active = await asyncio.to_thread(self._count_active, services)
        objects = await asyncio.to_thread(self._read_counters)
        counters: dict[ServerKey, Counters] = {}
        new_flows: dict[ServerKey, int] = {}
        for svc in services:
            for rs in svc.real_servers:
                key = (svc.label, rs.label)
                total = objects.get(nft.flow_counter(*key), (0, 0))[0]
                new_flows[key] = max(0, total - self._totals.get(key, total))
                self._totals[key] = total
                packets_in, bytes_in = objects.get(nft.traffic_counter(*key), (0, 0))
                packets_out, bytes_out = objects.get(nft.reply_counter(*key), (0, 0))
                counters[key] = Counters(
                    active=active.get(key, 0),
                    total=total,
                    bytes_in=bytes_in,
                    bytes_out=bytes_out,
                    packets_in=packets_in,
                    packets_out=packets_out,
                )
        self._active, self._new_flows, self._counters = active, new_flows, counters
        async with self._lock:
            view = self._view
            if self._plan is not plan or view is None:
                return  # a new Plan was applied meanwhile; it dealt its own slots
            slots = {svc.label: self._deal(svc) for svc in nft.kernel_services(view)}
            if slots != self._slots:
                ruleset = nft.render(view, self._seen, slots, self._live or nft.LiveObjects())
                await self._run(ruleset.slots)
                self._slots = slots

    def _count_active(self, services: tuple[PlanService, ...]) -> dict[ServerKey, int]:
        out: dict[ServerKey, int] = {}
        by_mark: dict[int, ServerKey] = {}
        for svc in services:
            if svc.mode is c.Mode.L4_DR:
                out.update(self._dr_flows(svc))
            else:
                for rs in svc.real_servers:
                    by_mark[nft.server_id(svc.label, rs.label)] = (svc.label, rs.label)
        if by_mark:
            for mark, n in self.host.conntrack_marks(set(by_mark)).items():
                out[by_mark[mark]] = n
        return out

    def _dr_flows(self, svc: PlanService) -> dict[ServerKey, int]:
        """Open flows per server: the flow map's entries past the handshake and not closing
        (as IPVS counts active connections)."""
        by_mac = {
            mac: (svc.label, rs.label)
            for rs in svc.real_servers
            if (mac := self._facts.macs.get(rs.address)) is not None
        }
        flows = self._elements(f"map netdev {nft.TABLE} {nft.flows_map(svc.label)}")
        closing = {
            json.dumps(_plain(e))
            for e in self._elements(f"set netdev {nft.TABLE} {nft.closing_set(svc.label)}")
        }
        out = dict.fromkeys(by_mac.values(), 0)
        idle = int(svc.timeouts.idle)
        for elem in flows:
            if not isinstance(elem, list) or len(elem) != 2:
                continue
            key, mac = elem
            # An entry keeps the timeout it was added with; `update` only moves its expiry.
            # So a flow past its handshake is one whose expiry lies beyond the handshake's.
            expires = key.get("elem", {}).get("expires", 0) if isinstance(key, dict) else 0
            opening = idle > nft.HANDSHAKE_TIMEOUT and expires <= nft.HANDSHAKE_TIMEOUT
            if opening or mac not in by_mac or json.dumps(_plain(key)) in closing:
                continue
            out[by_mac[mac]] += 1
        return out

    def _elements(self, what: str) -> list[Any]:
        """A set's or map's elements as listed (JSON), timeouts included."""
        try:
            listing = self.nftables.json(f"list {what}")
        except EngineError:
            return []
        for item in listing.get("nftables", []):
            obj = item.get("map") or item.get("set")
            if obj is not None:
                return list(obj.get("elem", []))
        return []

    def _read_counters(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for family in self._live.tables if self._live else ():
            with contextlib.suppress(EngineError):
                listing = self.nftables.json(f"list counters table {family} {nft.TABLE}")
                for item in listing.get("nftables", []):
                    counter = item.get("counter")
                    if counter is not None:
                        out[counter["name"]] = (counter["packets"], counter["bytes"])
        return out

    async def _poll(self) -> None:
        ticks = 0
        said = ""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            ticks += 1
            try:
                await self.refresh()
                if ticks % FACTS_EVERY == 0:
                    await self._recheck_facts()
            except (EngineError, OSError, ValueError) as exc:
                if str(exc) != said:  # once per distinct trouble, not once a second
                    said = str(exc)
                    self.notify(f"counting or re-dealing failed: {exc}")
            else:
                said = ""

    async def _recheck_facts(self) -> None:
        """A real server replaced (new MAC) or moved: re-render with what the host says now."""
        plan = self._plan
        if plan is None or not any(s.mode is c.Mode.L4_DR for s in nft.kernel_services(plan)):
            return
        async with self._lock:
            if self._plan is plan:
                await self._apply(plan, refresh_facts=True)

    # --- state sync (control/statesync.py) ----------------------------------------------

    def export_state(self, complete: bool = True) -> list[MapEntry]:
        """Every DR per-flow entry and source-IP persistence entry (DR and NAT) as the kernel
        holds them now, with their time left; with `complete=False`, of the DR flows only those
        of the last few seconds (nft.RECENT_TIMEOUT). Blocking (a listing of 20k entries takes
        0.3-0.6 s): call it on a worker thread."""
        out: list[MapEntry] = []
        for family, name in sorted(self._live.maps if self._live else ()):
            if not syncmaps.listed_in_round(name, complete):
                continue
            for element in self._elements(f"map {family} {nft.TABLE} {name}"):
                entry = syncmaps.entry_of(family, name, element)
                if entry is not None:
                    out.append(syncmaps.as_flow(entry))
        return out

    def import_state(self, entries: list[MapEntry], replace: bool = False) -> int:
        """Add entries a peer sent to this node's maps; the number added. Entries of maps this
        node does not have (another Plan, or none yet) are left out. `replace`: see
        core/syncmaps.import_scripts. Blocking: call it on a worker thread. Raises EngineError
        when nftables refuses a batch (the other batches are still added)."""
        live = self._live.maps if self._live else frozenset()
        usable = [e for e in entries if (e.family, e.map) in live]
        failed: list[str] = []
        done = 0
        for script, count in syncmaps.import_scripts(usable, replace):
            try:
                self.nftables.run(script)
            except EngineError as exc:
                failed.append(str(exc))
            else:
                done += count
        if failed:
            raise EngineError(f"{len(failed)} import batch(es) refused: {failed[0]}")
        return done

    # --- views and stop ------------------------------------------------------------------

    def ruleset_text(self) -> str:
        """The live `pacslb` tables as nft prints them (for the WebUI and `pacslb status`)."""
        parts = []
        for family in sorted(self._live.tables if self._live else ()):
            with contextlib.suppress(EngineError):
                parts.append(self.nftables.run(f"list table {family} {nft.TABLE}"))
        return "".join(parts)

    def teardown(self) -> list[str]:
        """Remove what the engine left on the host for good: its tables (all layer 4
        forwarding stops) and the VIP addresses it added. For `pacslb teardown`."""
        done = []
        for family in sorted(self._read_live().tables):
            self.nftables.run(f"delete table {family} {nft.TABLE}")
            done.append(f"deleted table {family} {nft.TABLE}")
        for address, device in sorted(self._addresses().items()):
            self.host.del_address(address, device)
            done.append(f"removed VIP {address} from {device}")
        self._addresses_file.unlink(missing_ok=True)
        return done + self.tproxy.remove()

    async def close(self, keep_running: bool = False) -> None:
        """Stop counting; the tables stay either way, so forwarding goes on while pacslb is
        stopped (`pacslb teardown` removes them)."""
        for task in (self._poller, self._lingering):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poller = self._lingering = None


def _stand_in_mac(server_id: int) -> str:
    """A locally administered unicast MAC no real NIC has: 02:00 and the server's id."""
    return "02:00:" + ":".join(f"{b:02x}" for b in server_id.to_bytes(4, "big"))


def _endpoints(plan: Plan) -> tuple[Any, ...]:
    """What the host facts and VIP addresses depend on: modes, VIPs and server addresses
    (and the layer 7 services' VIPs, which are placed too)."""
    return tuple(
        (s.label, s.mode, s.vip, tuple(rs.address for rs in s.real_servers), s.fallback)
        for s in nft.kernel_services(plan)
    ) + tuple((s.label, s.vip) for s in plan.services if not s.mode.is_kernel)


def _plain(value: Any) -> Any:
    """A set element as listed in JSON: `{"elem": {"val": X, "expires": ...}}` -> X."""
    if isinstance(value, dict) and "elem" in value:
        return _plain(value["elem"].get("val"))
    if isinstance(value, dict) and "concat" in value:
        return [_plain(v) for v in value["concat"]]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
