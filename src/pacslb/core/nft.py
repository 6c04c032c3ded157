"""The kernel engine's pure half: a Plan (plus what the host told us) -> one nftables script.

Layer 4 services live in tables named `pacslb` (one per family that is needed: `netdev` for
Direct Routing, `ip`/`ip6` for NAT and SNAT); no other table is ever touched. The script is one
transaction (libnftables applies it atomically) shaped so that live flows survive it:

- the dynamic maps (the per-flow map of DR, the persistence maps) are declared with `add`
  semantics, so an update keeps their elements; their names carry the settings that cannot
  change in place (a persistence timeout), so a changed setting makes a new map;
- every chain is flushed and refilled, and the static maps (slots, backends, halted servers)
  are flushed and refilled, in the same transaction: never a moment with no backend;
- objects the new Plan no longer needs are deleted, after the chains that used them are
  flushed. What is live comes in as `LiveObjects`, read from the kernel by the shell.

Rule shapes follow shared/research/kernel-l4.md (measured on this kernel). Real servers are
named by a stable id (a hash of service and server label): it is the conntrack mark in NAT and
the suffix of their counters, so it survives restarts and config edits.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pacslb import config as c
from pacslb.core.hashslots import HASH_SLOTS, hash_slots
from pacslb.core.plan import Plan, PlanService
from pacslb.core.slots import FALLBACK, SLOTS
from pacslb.core.state import AdminState
from pacslb.errors import EngineError

TABLE = "pacslb"
FLOW_SIZE = 262144
CLOSING_TIMEOUT = 60  # seconds a closing DR flow is kept after its last packet (as FIN_WAIT)
# Seconds a new DR flow is kept until the client's second packet shows the server accepted it.
# A refused connection is answered by the server straight to the client (the LB never sees
# the RST), so without this it would hold its flow entry, and count as open, for `idle`.
HANDSHAKE_TIMEOUT = 30
# Seconds a new DR flow is also kept in the service's `_recent` map: what HA state sync lists
# every round (a few seconds of new flows, however many are open), so that a flow reaches the
# peers within a round of its first packet; the whole flow map is listed less often.
RECENT_TIMEOUT = 3


@dataclass(frozen=True, slots=True)
class DrLink:
    """Where a DR service's real servers are: the LB interface on their segment and its MAC."""

    device: str
    lb_mac: str


@dataclass(frozen=True, slots=True)
class KernelFacts:
    links: Mapping[str, DrLink] = field(default_factory=dict)  # DR service label -> link
    macs: Mapping[str, str] = field(default_factory=dict)  # real server address -> MAC


@dataclass(frozen=True, slots=True)
class LiveObjects:
    """Names in the live `pacslb` tables, per family: what an update may have to delete."""

    tables: frozenset[str] = frozenset()  # families with a live `pacslb` table
    chains: frozenset[tuple[str, str]] = frozenset()  # (family, name)
    sets: frozenset[tuple[str, str]] = frozenset()
    maps: frozenset[tuple[str, str]] = frozenset()
    counters: frozenset[tuple[str, str]] = frozenset()
    timeouts: frozenset[tuple[str, str]] = frozenset()  # ct timeout objects


def server_id(service: str, server: str) -> int:
    """A stable non-zero 31-bit id: the ct mark of the server's NAT flows, its counters' name."""
    digest = hashlib.blake2b(f"{service}\0{server}".encode(), digest_size=4).digest()
    return (int.from_bytes(digest, "big") & 0x7FFFFFFF) or 1


def service_id(label: str) -> str:
    return "s" + hashlib.blake2b(label.encode(), digest_size=4).hexdigest()


def flow_counter(service: str, server: str) -> str:
    return f"f{server_id(service, server):08x}"


def traffic_counter(service: str, server: str) -> str:
    return f"p{server_id(service, server):08x}"


def flows_map(service: str) -> str:
    return f"{service_id(service)}_flows"


def closing_set(service: str) -> str:
    return f"{service_id(service)}_closing"


def kernel_services(plan: Plan) -> tuple[PlanService, ...]:
    return tuple(s for s in plan.services if s.mode.is_kernel)


def family_of(svc: PlanService) -> str:
    """`netdev` for DR; `ip` or `ip6` by the VIP for NAT and SNAT."""
    if svc.mode is c.Mode.L4_DR:
        return "netdev"
    return "ip6" if ipaddress.ip_address(svc.vip).version == 6 else "ip"


# --- small renderers ---------------------------------------------------------------------


def _l3(svc: PlanService) -> str:
    return "ip6" if ipaddress.ip_address(svc.vip).version == 6 else "ip"


def _source_key(svc: PlanService) -> str:
    """The persistence key: the client address masked to the service's granularity."""
    l3 = _l3(svc)
    p = svc.persistence
    prefix, bits = (p.granularity_v6, 128) if l3 == "ip6" else (p.granularity, 32)
    if prefix >= bits:
        return f"{l3} saddr"
    mask = ipaddress.ip_network(f"{'::' if bits == 128 else '0.0.0.0'}/{prefix}").netmask
    return f"{l3} saddr & {mask}"


def _flow_key(svc: PlanService) -> str:
    """A DR flow within its service (one VIP, so no destination address). Ports first: nft
    1.0.6 aborts (an assertion in netlink_linearize.c) on a dynamic-map update whose key
    starts with an IPv6 address followed by more fields."""
    return f"th sport . th dport . {_l3(svc)} saddr"


def _match(svc: PlanService) -> str:
    ports = ", ".join(str(p) for p in svc.ports)
    return f"{_l3(svc)} daddr {svc.vip} meta l4proto {svc.protocol} th dport {{ {ports} }}"


def _ranges(slots: tuple[str, ...], value: Mapping[str, str]) -> list[str]:
    """Slot table -> interval map elements, runs of one server merged: `0-2 : x`, `3 : y`."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[start]:
            span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            parts.append(f"{span} : {value[slots[start]]}")
            start = i
    return parts


def _elements(items: Iterable[str]) -> str:
    listed = list(items)
    return f" elements = {{ {', '.join(listed)} }};" if listed else ""


def _halted(svc: PlanService) -> list[str]:
    """Servers whose flows are cut: halted by an operator. A failed health check only takes a
    server out of rotation (no new flows, no persistent clients): one slow C-ECHO must not
    reset every transfer in flight, as IPVS's quiescent servers do not."""
    return [rs.label for rs in svc.real_servers if rs.admin is AdminState.HALT]


def _alive(svc: PlanService) -> list[str]:
    """Servers a persistent client may go back to: drained ones too, not halted or down ones
    (PlanRealServer.keeps_existing), and never the fallback."""
    return [rs.label for rs in svc.real_servers if rs.keeps_existing]


def _persist_map(svc: PlanService) -> str | None:
    if svc.persistence.kind != "source-ip":
        return None
    return f"{service_id(svc.label)}_persist_{svc.persistence.timeout}"


# --- per mode ----------------------------------------------------------------------------


@dataclass
class _Table:
    family: str
    objects: list[str] = field(default_factory=list)  # declarations, in order
    chains: dict[str, list[str]] = field(default_factory=dict)  # name -> header + rules
    # Sets and maps refilled on every update (slots, backends, halted servers, counter maps):
    # (kind, name, elements); an update flushes them and adds these in the same transaction.
    static: list[tuple[str, str, list[str]]] = field(default_factory=list)
    names: set[tuple[str, str]] = field(default_factory=set)  # (kind, name) declared
    layout: list[str] = field(default_factory=list)  # declarations without their elements

    def declare(self, kind: str, name: str, body: str, elements: str = "") -> None:
        self.names.add((kind, name))
        self.objects.append(f"{kind} {name} {{ {body}{elements} }}")
        self.layout.append(f"{kind} {name} {{ {body} }}")

    def refill(self, kind: str, name: str, body: str, elements: Iterable[str]) -> None:
        items = list(elements)
        self.declare(kind, name, body, _elements(items))
        self.static.append((kind, name, items))

    def chain(self, name: str, *lines: str) -> None:
        self.names.add(("chain", name))
        self.chains.setdefault(name, []).extend(lines)


def _dr_service(t: _Table, svc: PlanService, facts: KernelFacts, slots: tuple[str, ...]) -> None:
    link = facts.links.get(svc.label)
    if link is None:
        raise EngineError(f"{svc.label}: no interface on the real servers' segment is known")
    sid = service_id(svc.label)
    mac = _macs(svc, facts)
    key = _flow_key(svc)
    l3 = _l3(svc)
    idle = int(svc.timeouts.idle)
    tcp = svc.protocol == "tcp"
    t.declare(
        "map",
        f"{sid}_flows",
        f"typeof {key} : ether daddr; flags dynamic,timeout; timeout {idle}s; size {FLOW_SIZE};",
    )
    t.declare(
        "map",
        f"{sid}_recent",
        f"typeof {key} : ether daddr; flags dynamic,timeout; timeout {RECENT_TIMEOUT}s; "
        f"size {FLOW_SIZE};",
    )
    t.declare(
        "set",
        f"{sid}_closing",
        f"typeof {key}; flags dynamic,timeout; timeout {CLOSING_TIMEOUT}s; size {FLOW_SIZE};",
    )
    t.refill(
        "map",
        f"{sid}_slots",
        "typeof meta mark : ether daddr; flags interval;",
        _ranges(slots, mac),
    )
    t.refill("map", f"{sid}_hash", "typeof meta mark : ether daddr;", _hash_elements(svc, mac))
    t.refill("set", f"{sid}_halted", "typeof ether daddr;", sorted({mac[s] for s in _halted(svc)}))
    t.refill("set", f"{sid}_alive", "typeof ether daddr;", sorted({mac[s] for s in _alive(svc)}))
    fc = [f'{mac[rs.label]} : "{flow_counter(svc.label, rs.label)}"' for rs in svc.real_servers]
    pc = [f'{mac[rs.label]} : "{traffic_counter(svc.label, rs.label)}"' for rs in svc.real_servers]
    t.refill("map", f"{sid}_fc", "type ether_addr : counter;", fc)
    t.refill("map", f"{sid}_pc", "type ether_addr : counter;", pc)
    persist = _persist_map(svc)
    source = _source_key(svc)
    pick = [f"ether daddr set {key} map @{sid}_flows goto {sid}_known"]
    if persist:
        t.declare(
            "map",
            persist,
            f"typeof {l3} saddr : ether daddr; flags dynamic,timeout; "
            f"timeout {svc.persistence.timeout}s; size {FLOW_SIZE};",
        )
        # A persistent client goes back to its server, drained or not, while it is alive.
        pick.append(
            f"ether daddr set {source} map @{persist} ether daddr @{sid}_alive goto {sid}_new"
        )
    if tcp:
        # A packet of a connection we hold no entry for (begun on another node before an HA
        # takeover, or lost with a table): not a new flow. Every node picks its server alike
        # (core/hashslots.py: from the Plan only, never from this node's live counts).
        pick.append(
            f"tcp flags & (syn | ack) != syn meta mark set {_hash_picker(svc)} "
            f"ether daddr set meta mark map @{sid}_hash meta mark set 0 goto {sid}_new"
        )
    pick += [
        f"meta mark set {_slot_picker(svc)}",
        f"ether daddr set meta mark map @{sid}_slots meta mark set 0 goto {sid}_new",
        "meta mark set 0 counter drop  # no real server and no fallback",
    ]
    t.chain(sid, _about(svc), *pick)
    remember = (
        [f"ether daddr @{sid}_alive update @{persist} {{ {source} : ether daddr }}"]
        if persist
        else []
    )
    first = f" timeout {HANDSHAKE_TIMEOUT}s" if tcp else ""
    t.chain(
        f"{sid}_new",
        *remember,
        f"add @{sid}_flows {{ {key}{first} : ether daddr }}",
        f"add @{sid}_recent {{ {key} : ether daddr }}",
        f"counter name ether daddr map @{sid}_fc",
        f"goto {sid}_out",
    )
    known = []
    if tcp:
        closing = [
            # Closing: the persistence template lives on from the connection's end (as
            # IPVS's does), and the flow stays while packets come, then goes after a quiet
            # CLOSING_TIMEOUT (a late ACK of a half-closed connection still finds it).
            *remember,
            f"update @{sid}_closing {{ {key} }}",
            f"update @{sid}_flows {{ {key} timeout {CLOSING_TIMEOUT}s : ether daddr }}",
            f"goto {sid}_out",
        ]
        t.chain(f"{sid}_ending", *closing)
        known += [
            f"tcp flags & (fin | rst) != 0 goto {sid}_ending",
            f"{key} @{sid}_closing goto {sid}_ending",
            # A retransmitted SYN: the server has not answered yet; keep the short timeout.
            f"tcp flags & (syn | ack) == syn goto {sid}_out",
        ]
    known.append(f"update @{sid}_flows {{ {key} timeout {idle}s : ether daddr }} goto {sid}_out")
    t.chain(f"{sid}_known", *known)
    if tcp:
        cut = f"ether daddr @{sid}_halted ether daddr set {link.lb_mac} reject with tcp reset"
    else:
        cut = f"ether daddr @{sid}_halted drop"
    t.chain(
        f"{sid}_out",
        cut + "  # halted: cut the flow",
        f"counter name ether daddr map @{sid}_pc",
        f'ether saddr set {link.lb_mac} fwd to "{link.device}"',
    )
    for rs in svc.real_servers:
        _counters(t, svc, rs.label, reply=False)
    hook = f"in_{_device_id(link.device)}"
    if hook not in t.chains:
        t.chain(hook, f'type filter hook ingress device "{link.device}" priority 0; policy accept;')
    t.chain(hook, f"{_match(svc)} jump {sid}")


def _about(svc: PlanService) -> str:
    """The service chain's comment: the hashed names are stable, this says whose they are."""
    ports = ",".join(str(p) for p in svc.ports)
    return f'comment "virtual service {svc.label}: {svc.vip}:{ports}/{svc.protocol} {svc.mode}"'


def _counters(t: _Table, svc: PlanService, server: str, reply: bool) -> None:
    who = f"{svc.label}/{server}"
    t.declare("counter", flow_counter(svc.label, server), f'comment "{who}: new flows";')
    t.declare("counter", traffic_counter(svc.label, server), f'comment "{who}: client to server";')
    if reply:
        t.declare(
            "counter", reply_counter(svc.label, server), f'comment "{who}: server to client";'
        )


def _device_id(device: str) -> str:
    return hashlib.blake2b(device.encode(), digest_size=3).hexdigest()


def _macs(svc: PlanService, facts: KernelFacts) -> dict[str, str]:
    """Real server label (and FALLBACK) -> MAC; two servers with one MAC can't be told apart."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    endpoints = [(rs.label, rs.address) for rs in svc.real_servers]
    if svc.fallback is not None:
        endpoints.append((FALLBACK, svc.fallback.address))
    for label, address in endpoints:
        mac = facts.macs.get(address)
        if mac is None:
            raise EngineError(f"{svc.label}/{label}: no MAC address known for {address}")
        if mac in owner and owner[mac] != label:
            raise EngineError(
                f"{svc.label}: {owner[mac]} and {label} share MAC {mac}; Direct Routing "
                "cannot tell them apart"
            )
        owner[mac] = label
        out[label] = mac
    return out


def _hash_picker(svc: PlanService) -> str:
    """The same on every node: jhash with a fixed seed over the client's address and port."""
    return f"jhash {_l3(svc)} saddr . th sport mod {HASH_SLOTS} seed 0x4b50"


def _hash_elements(svc: PlanService, value: Mapping[str, str]) -> list[str]:
    """The deterministic table as map elements (one per slot: a plain map, no intervals)."""
    ids = {rs.label: server_id(svc.label, rs.label) for rs in svc.real_servers}
    table = hash_slots(svc, ids)
    return [f"{i} : {value[label]}" for i, label in enumerate(table)]


def _slot_picker(svc: PlanService) -> str:
    if svc.scheduler is c.SchedulerName.SH:  # source hash: a client keeps its slot
        return f"jhash {_l3(svc)} saddr mod {SLOTS} seed 0x4b50"
    return f"numgen inc mod {SLOTS}"  # round-robin over the interleaved slot table


def _nat_service(t: _Table, svc: PlanService, slots: tuple[str, ...]) -> None:
    sid = service_id(svc.label)
    l3 = _l3(svc)
    servers = [(rs.label, rs.address, rs.port) for rs in svc.real_servers]
    if svc.fallback is not None:
        servers.append((FALLBACK, svc.fallback.address, svc.fallback.port))
    mark = {label: str(server_id(svc.label, label)) for label, _, _ in servers}
    with_port = [(mark[lb], f"{a} . {p}") for lb, a, p in servers if p is not None]
    without_port = [(mark[lb], a) for lb, a, p in servers if p is None]
    t.refill(
        "map", f"{sid}_slots", "typeof meta mark : ct mark; flags interval;", _ranges(slots, mark)
    )
    t.refill(
        "map",
        f"{sid}_to_port",
        f"typeof ct mark : {l3} daddr . tcp dport;",
        (f"{m} : {to}" for m, to in with_port),
    )
    t.refill("set", f"{sid}_ported", "typeof ct mark;", (m for m, _ in with_port))
    t.refill(
        "map",
        f"{sid}_to_addr",
        f"typeof ct mark : {l3} daddr;",
        (f"{m} : {to}" for m, to in without_port),
    )
    t.refill("set", f"{sid}_alive", "typeof ct mark;", (mark[lb] for lb in _alive(svc)))
    t.refill("map", f"{sid}_hash", "typeof meta mark : ct mark;", _hash_elements(svc, mark))
    persist = _persist_map(svc)
    source = _source_key(svc)
    rules = []
    if persist:
        t.declare(
            "map",
            persist,
            f"typeof {l3} saddr : ct mark; flags dynamic,timeout; "
            f"timeout {svc.persistence.timeout}s; size {FLOW_SIZE};",
        )
        # A persistent client goes back to its server while it is alive (drained too); the
        # packet mark holds the answer until it is checked.
        rules += [
            f"meta mark set {source} map @{persist}",
            f"meta mark @{sid}_alive ct mark set meta mark",
        ]
    if svc.protocol == "tcp":
        # A connection conntrack picked up mid-stream (begun on another node before an HA
        # takeover that conntrackd did not carry): the pick every node makes alike
        # (core/hashslots.py), not a new flow's.
        rules.append(
            f"ct mark 0 tcp flags & (syn | ack) != syn meta mark set {_hash_picker(svc)} "
            f"ct mark set meta mark map @{sid}_hash"
        )
    rules += [
        f"ct mark 0 meta mark set {_slot_picker(svc)}",
        f"ct mark 0 ct mark set meta mark map @{sid}_slots",
        "meta mark set 0",
        "ct mark 0 counter drop  # no real server and no fallback",
    ]
    if persist:
        rules.append(f"ct mark @{sid}_alive update @{persist} {{ {source} : ct mark }}")
        # The template lives on from a connection's end, as IPVS's does.
        t.chain(
            "forward",
            f"ct direction original tcp flags & (fin | rst) != 0 ct mark @{sid}_alive "
            f"update @{persist} {{ {source} : ct mark }}",
        )
    rules += [
        "counter name ct mark map @nat_flows",
        # Port translation needs the protocol named before `addr . port` (nft's rule).
        f"meta l4proto {svc.protocol} ct mark @{sid}_ported dnat {l3} addr . port "
        f"to ct mark map @{sid}_to_port",
        f"dnat {l3} to ct mark map @{sid}_to_addr",
    ]
    t.chain(sid, _about(svc), *rules)
    t.chain("nat_in", f"{_match(svc)} jump {sid}")
    t.chain("ct_in", f'ct state new {_match(svc)} ct timeout set "{_ct_timeout(svc)}"')
    idle = int(svc.timeouts.idle)
    if svc.protocol == "tcp":
        policy = f"established: {idle}, close_wait: 60, close: 10"
    else:
        policy = f"unreplied: 30, replied: {idle}"
    t.declare(
        "ct timeout",
        _ct_timeout(svc),
        f"protocol {svc.protocol}; l3proto {l3}; policy = {{ {policy} }};",
    )
    for label, _, _ in servers:
        if label != FALLBACK:
            _counters(t, svc, label, reply=True)


def reply_counter(service: str, server: str) -> str:
    return f"q{server_id(service, server):08x}"


def _ct_timeout(svc: PlanService) -> str:
    """Conntrack timeouts fit for DICOM (an idle association lives `idle` seconds, not the
    kernel's 5 days), named by their value so a change makes a new object."""
    return f"{service_id(svc.label)}_ct_{int(svc.timeouts.idle)}"


def _nat_table(
    t: _Table, services: list[PlanService], slots: Mapping[str, tuple[str, ...]]
) -> None:
    halted: list[str] = []
    snat: list[str] = []
    flows: list[str] = []
    traffic: list[str] = []
    replies: list[str] = []
    # Just after conntrack (-200): the timeout policy attaches to the new, unconfirmed entry
    # (measured here: at `raw`, before conntrack, it is silently ignored).
    t.chain("ct_in", "type filter hook prerouting priority -199; policy accept;")
    t.chain("nat_in", "type nat hook prerouting priority dstnat; policy accept;")
    t.chain(
        "forward",
        "type filter hook forward priority 0; policy accept;",
        "ct mark 0 accept  # not a flow of ours: spare it the lookups below",
        "ct mark @nat_halted meta l4proto tcp reject with tcp reset  # halted: cut the flow",
        "ct mark @nat_halted drop",
    )
    for svc in services:
        _nat_service(t, svc, slots.get(svc.label, ()))
        for rs in svc.real_servers:
            m = server_id(svc.label, rs.label)
            flows.append(f'{m} : "{flow_counter(svc.label, rs.label)}"')
            traffic.append(f'{m} : "{traffic_counter(svc.label, rs.label)}"')
            replies.append(f'{m} : "{reply_counter(svc.label, rs.label)}"')
            if rs.admin is AdminState.HALT:
                halted.append(str(m))
            if svc.mode is c.Mode.L4_SNAT:
                snat.append(str(m))
        if svc.mode is c.Mode.L4_SNAT and svc.fallback is not None:
            snat.append(str(server_id(svc.label, FALLBACK)))
    t.refill("set", "nat_halted", "typeof ct mark;", halted)
    t.refill("set", "nat_snat", "typeof ct mark;", snat)
    t.refill("map", "nat_flows", "type mark : counter;", flows)
    t.refill("map", "nat_traffic", "type mark : counter;", traffic)
    t.refill("map", "nat_replies", "type mark : counter;", replies)
    t.chain(
        "forward",
        "ct direction original counter name ct mark map @nat_traffic",
        "ct direction reply counter name ct mark map @nat_replies",
    )
    t.chain(
        "nat_out",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ct mark @nat_snat masquerade  # l4-snat: the real servers answer the LB",
    )


# --- the script --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A rendered update: the full script, the element-only script for when only slots,
    halted servers or backends changed (same structure), and what will be live after it."""

    script: str
    elements: str
    live: LiveObjects
    shape: str  # the structure without elements: equal shapes -> the element update suffices
    # Only the slot tables refilled: what a `wlc` re-deal changes (about once a second),
    # without the deterministic tables and the counter maps that only a new Plan changes.
    slots: str = ""


def render(
    plan: Plan,
    facts: KernelFacts,
    slots: Mapping[str, tuple[str, ...]],
    live: LiveObjects = LiveObjects(),
) -> Ruleset:
    """The whole update as one nftables script (one transaction).

    `slots` holds each service's slot table (server labels, FALLBACK for the fallback); see
    core/slots.py. `live` names what the kernel holds now, so that what is no longer wanted
    is deleted in the same transaction."""
    tables: dict[str, _Table] = {}
    by_family: dict[str, list[PlanService]] = {}
    ids: dict[int, str] = {}
    for svc in kernel_services(plan):
        by_family.setdefault(family_of(svc), []).append(svc)
        for label in [rs.label for rs in svc.real_servers] + [FALLBACK]:
            who = f"{svc.label}/{label.strip(chr(0))}"
            other = ids.setdefault(server_id(svc.label, label), who)
            if other != who:  # 31-bit hashes: about one chance in a million at 50 servers
                raise EngineError(f"{other} and {who} hash to one id: rename one of them")
    for family in sorted(by_family):
        t = tables[family] = _Table(family)
        if family == "netdev":
            for svc in by_family[family]:
                _dr_service(t, svc, facts, slots.get(svc.label, ()))
        else:
            _nat_table(t, by_family[family], slots)
    return Ruleset(
        _script(tables, live),
        _refills(tables),
        _live_after(tables),
        _shape(tables),
        _refills(tables, only_suffix="_slots"),
    )


def _script(tables: Mapping[str, _Table], live: LiveObjects) -> str:
    lines: list[str] = []
    for family in sorted(live.tables - tables.keys()):
        lines.append(f"delete table {family} {TABLE}")
    for family, t in tables.items():
        lines.append(f"add table {family} {TABLE}")
        if family not in live.tables:
            continue
        mine = [name for fam, name in sorted(live.chains) if fam == family]
        # Flush every chain, and every static set and map (the counter maps refer to the
        # counters), first: then nothing refers to what we may delete.
        lines += [f"flush chain {family} {TABLE} {name}" for name in mine]
        lines += [
            f"flush {kind} {family} {TABLE} {name}"
            for kind, name, _ in t.static
            if (family, name) in live.sets | live.maps
        ]
        lines += [
            f"delete chain {family} {TABLE} {name}"
            for name in mine
            if ("chain", name) not in t.names
        ]
        # Not ct timeouts: deleting one hands its live connections back to the kernel's
        # defaults (5 days established). An unused one costs a few bytes until a teardown.
        for kind, names in (
            ("set", live.sets),
            ("map", live.maps),
            ("counter", live.counters),
        ):
            lines += [
                f"delete {kind} {family} {TABLE} {name}"
                for fam, name in sorted(names)
                if fam == family and (kind, name) not in t.names
            ]
    for family, t in tables.items():
        lines.append(f"table {family} {TABLE} {{")
        lines += [f"  {obj}" for obj in t.objects]
        for name, body in t.chains.items():
            lines.append(f"  chain {name} {{")
            lines += [f"    {rule}" for rule in body]
            lines.append("  }")
        lines.append("}")
    return "\n".join(lines) + "\n"


def _refills(tables: Mapping[str, _Table], only_suffix: str = "") -> str:
    lines: list[str] = []
    for family, t in tables.items():
        for kind, name, items in t.static:
            if not name.endswith(only_suffix):
                continue
            lines.append(f"flush {kind} {family} {TABLE} {name}")
            if items:
                lines.append(f"add element {family} {TABLE} {name} {{ {', '.join(items)} }}")
    return "\n".join(lines) + "\n"


def _shape(tables: Mapping[str, _Table]) -> str:
    parts: list[str] = []
    for family, t in tables.items():
        parts += [family, *t.layout]
        for name, body in t.chains.items():
            parts += [name, *body]
    return "\n".join(parts)


def _live_after(tables: Mapping[str, _Table]) -> LiveObjects:
    def names(family: str, t: _Table, *kinds: str) -> set[tuple[str, str]]:
        return {(family, n) for k, n in t.names if k in kinds}

    chains: set[tuple[str, str]] = set()
    sets: set[tuple[str, str]] = set()
    maps: set[tuple[str, str]] = set()
    counters: set[tuple[str, str]] = set()
    timeouts: set[tuple[str, str]] = set()
    for family, t in tables.items():
        chains |= names(family, t, "chain")
        sets |= names(family, t, "set")
        maps |= names(family, t, "map")
        counters |= names(family, t, "counter")
        timeouts |= names(family, t, "ct timeout")
    return LiveObjects(
        frozenset(tables),
        frozenset(chains),
        frozenset(sets),
        frozenset(maps),
        frozenset(counters),
        frozenset(timeouts),
    )
