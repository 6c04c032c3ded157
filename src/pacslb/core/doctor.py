"""`pacslb doctor`'s pure half: what the probes found -> findings in plain words, each with
what to do, and the report (a table or JSON) with its exit code.

The probes themselves (nft dry runs, routes, ARP and a TCP SYN on a raw socket) are in
control/doctor.py; this module only turns their answers into words, so that it is tested
without root.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pacslb import config as c
from pacslb.core import realserver, tproxy
from pacslb.core.realserver import fix_command

HOST = "this host"


class Level(StrEnum):
    OK = "ok"
    WARNING = "warning"  # works, but worth knowing; does not fail the run
    PROBLEM = "problem"  # something will not work until fixed: exit 1
    SKIPPED = "skipped"  # could not be checked here (say why)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # short and stable, for scripts: nftables, root, forwarding, dr-arp, ...
    level: Level
    subject: str  # HOST, or "service/server (address)"
    message: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class DrProbe:
    """What to probe for one l4-dr service: its VIP, a port, its real servers."""

    service: str
    vip: str
    port: int
    servers: tuple[tuple[str, str], ...]  # (label, address)

    @property
    def ipv4(self) -> bool:
        return ipaddress.ip_address(self.vip).version == 4

    def subject(self, label: str, address: str) -> str:
        return f"{self.service}/{label} ({address})"


def dr_probes(config: c.Config) -> list[DrProbe]:
    return [
        DrProbe(
            svc.label,
            str(svc.vip),
            svc.ports[0],
            tuple((rs.label, str(rs.address)) for rs in svc.real_servers),
        )
        for svc in config.virtual_services
        if svc.mode is c.Mode.L4_DR
    ]


@dataclass(frozen=True, slots=True)
class NatProbe:
    """What to probe for one service whose real servers must answer clients through the load
    balancer: an l4-nat service (its VIP, its servers with the port the translated
    connections go to), or a transparent l7 one (`source: client`: the proxy connects from
    the client's address). Either way their default gateway must be the load balancer."""

    service: str
    vip: str
    servers: tuple[tuple[str, str, int], ...]  # (label, address, port)
    transparent: bool = False  # an l7 service with source: client

    @property
    def ipv4(self) -> bool:
        return ipaddress.ip_address(self.vip).version == 4 and all(
            ipaddress.ip_address(a).version == 4 for _, a, _ in self.servers
        )

    def subject(self, label: str, address: str) -> str:
        return f"{self.service}/{label} ({address})"


def nat_probes(config: c.Config) -> list[NatProbe]:
    """The services whose servers' route back to clients doctor probes: l4-nat, and l7 with
    `source: client` (a server whose gateway is not the load balancer passes every health
    check, which come from the load balancer's own address, yet each transparent connection
    to it times out)."""
    return [
        NatProbe(
            svc.label,
            str(svc.vip),
            tuple((rs.label, str(rs.address), rs.port or svc.ports[0]) for rs in svc.real_servers),
            transparent=svc.mode is not c.Mode.L4_NAT,
        )
        for svc in config.virtual_services
        if svc.mode is c.Mode.L4_NAT or (not svc.mode.is_kernel and svc.source == "client")
    ]


@dataclass(frozen=True, slots=True)
class Reach:
    """How this host reaches an address (its routing table's answer)."""

    device: str = ""
    gateway: str | None = None  # the router in between, if any
    local: bool = False  # the address is this host's own
    source: str | None = None  # this host's address toward it
    error: str = ""

    def text(self, vip: bool = False, kernel: bool = True) -> str:
        """In words, for `pacslb plan`; `vip` for a VIP of a layer 4 (`kernel`) or 7 mode."""
        if self.error:
            return f"not reachable ({self.error})"
        if self.local:
            return f"on {self.device} (this host's own address)"
        if self.gateway:
            where = f"via the router {self.gateway} on {self.device}"
            return where + (": in no attached subnet, a router must send it here" if vip else "")
        if vip and kernel:
            return f"on {self.device} (its subnet: `pacslb run` adds the address there)"
        if vip:
            return (
                f"in {self.device}'s subnet but not an address of this host: the proxy cannot "
                "listen on it"
            )
        return f"on {self.device} (same segment, from {self.source})"


def needs_forwarding(config: c.Config) -> bool:
    return any(s.mode in (c.Mode.L4_NAT, c.Mode.L4_SNAT) for s in config.virtual_services)


def needs_root(config: c.Config) -> bool:
    """Layer 4 modes (nftables), and transparent l7 services (IP_TRANSPARENT, and their
    policy routing)."""
    return any(s.mode.is_kernel or s.source == "client" for s in config.virtual_services)


# --- transparent mode (source: client) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TproxyState:
    """What the host holds of transparent mode's return path (core/tproxy.py); None: could
    not be read (nftables needs root)."""

    marking: bool | None
    rules: Mapping[int, bool]  # IP version -> our policy rule is there
    routes: Mapping[int, bool]  # IP version -> the local route in our table is there


def transparent_versions(config: c.Config) -> dict[int, list[str]]:
    """IP version -> the transparent services whose upstream connections use it."""
    out: dict[int, list[str]] = {}
    for svc in config.virtual_services:
        if svc.source != "client" or svc.mode.is_kernel:
            continue
        addresses = [rs.address for rs in svc.real_servers]
        if svc.fallback is not None:
            addresses.append(svc.fallback.address)
        for version in sorted({a.version for a in addresses}):
            out.setdefault(version, []).append(svc.label)
    return out


def tproxy_findings(wanted: Mapping[int, list[str]], state: TproxyState) -> list[Finding]:
    """One finding per piece of the return path each IP version needs, naming what is
    missing and the command that puts it back (pacslb puts all of it there at start)."""
    out: list[Finding] = []
    if not wanted:
        return out
    every = sorted({label for labels in wanted.values() for label in labels})
    if state.marking is None:
        out.append(Finding("tproxy-nft", Level.SKIPPED, HOST, "reading nftables needs root", ""))
    elif state.marking:
        out.append(
            Finding(
                "tproxy-nft",
                Level.OK,
                HOST,
                f"table inet {tproxy.TABLE} marks the replies to transparent connections",
            )
        )
    else:
        out.append(
            Finding(
                "tproxy-nft",
                Level.PROBLEM,
                HOST,
                f"no table inet {tproxy.TABLE} marking replies to transparent sockets: the "
                f"real servers' answers to {', '.join(every)} clients are not delivered to "
                "the proxy, so those connections hang",
                f"restart pacslb (it sets the table up), or: {tproxy.nft_command()}",
            )
        )
    for version, labels in sorted(wanted.items()):
        for ok, step, name in (
            (state.rules.get(version, False), tproxy.rule_step(version), "policy rule"),
            (state.routes.get(version, False), tproxy.route_step(version), "local route"),
        ):
            subject = f"IPv{version} ({', '.join(labels)})"
            if ok:
                out.append(
                    Finding(f"tproxy-{name.split()[1]}", Level.OK, subject, f"{name} in place")
                )
                continue
            out.append(
                Finding(
                    f"tproxy-{name.split()[1]}",
                    Level.PROBLEM,
                    subject,
                    f"the {name} of transparent mode is missing: replies from the real servers"
                    " to clients' addresses are not delivered to the proxy",
                    step.what,
                )
            )
    return out


def ha_gateway_findings(config: c.Config) -> list[Finding]:
    """In an HA pair, each real server whose replies must come back through the load balancer
    (l4-nat, transparent l7) needs a floating gateway on its subnet (node.ha.gateways): a
    node's own address as its gateway holds only until the other node takes over, after which
    the replies go to the passive node and every connection hangs."""
    ha = config.node.ha
    if ha is None or not ha.enabled:
        return []
    floating = realserver.floating_gateways(config)
    out = []
    for server in realserver.nat_servers(config):
        subject = f"{server.what()} {'/'.join(server.labels)} ({server.address})"
        if server.address in floating:
            continue
        out.append(
            Finding(
                "ha-gateway",
                Level.PROBLEM,
                subject,
                "no floating gateway (node.ha.gateways) on this server's subnet: its replies "
                "to clients must reach whichever node is active, so its default gateway must "
                "be an address that moves with the active role",
                "add the subnet's gateway address to node.ha.gateways, then point the server "
                "at it (pacslb realserver --config FILE)",
            )
        )
    return out


def source_address_findings(config: c.Config, addresses: set[str]) -> list[Finding]:
    """A service's fixed source address (or its VIP, for `source: vip`) that this host does
    not have: its connections fail until it does. A warning, not a problem: in an HA pair the
    address may float here only when this node becomes active."""
    out = []
    for svc in config.virtual_services:
        if svc.source in ("auto", "client") or svc.mode.is_kernel:
            continue
        address = str(svc.vip) if svc.source == "vip" else svc.source
        if address in addresses:
            out.append(Finding("source", Level.OK, svc.label, f"source {address} is on this host"))
        else:
            out.append(
                Finding(
                    "source",
                    Level.WARNING,
                    svc.label,
                    f"source {address} is not an address of this host (yet): connections "
                    "to the real servers fail until it is (fine on the passive node of a "
                    "pair, whose keepalived brings it on takeover)",
                    f"ip addr add {address}/{128 if ':' in address else 32} dev <interface>",
                )
            )
    return out


# --- findings from probe answers ---------------------------------------------------------


def route_finding(
    probe: DrProbe, label: str, address: str, device: str, gateway: str | None, local: bool
) -> Finding:
    subject = probe.subject(label, address)
    if local:
        return Finding(
            "dr-route",
            Level.PROBLEM,
            subject,
            f"{address} is an address of this host, not a real server",
            "give the real server's own address in the config",
        )
    if gateway:
        return Finding(
            "dr-route",
            Level.PROBLEM,
            subject,
            f"reached via the router {gateway}: Direct Routing needs the load balancer on the "
            "real server's own segment (it only rewrites the destination MAC)",
            f"give this host an interface in {address}'s subnet, or use l4-nat / l4-snat",
        )
    return Finding("dr-route", Level.OK, subject, f"on this host's segment via {device}")


def unresolved_finding(probe: DrProbe, label: str, address: str, device: str) -> Finding:
    return Finding(
        "dr-mac",
        Level.PROBLEM,
        probe.subject(label, address),
        f"no ARP answer for its own address on {device}: its MAC is unknown, so Direct "
        "Routing cannot send it anything",
        "check that the server is up and on this segment",
    )


def arp_findings(
    probe: DrProbe, answering: Iterable[str], lb_mac: str, macs: Mapping[str, str]
) -> list[Finding]:
    """Every MAC other than the LB's that answered ARP for the VIP, by real server.

    `macs` maps real server addresses to their MACs (from the neighbour table)."""
    owners: dict[str, list[tuple[str, str]]] = {}
    for label, address in probe.servers:
        if address in macs:
            owners.setdefault(macs[address].lower(), []).append((label, address))
    found: list[Finding] = []
    stealing = sorted({m.lower() for m in answering} - {lb_mac.lower()})
    for mac in stealing:
        for label, address in owners.get(mac, []):
            found.append(
                Finding(
                    "dr-arp",
                    Level.PROBLEM,
                    probe.subject(label, address),
                    f"answers ARP for the VIP {probe.vip} (MAC {mac}): the ARP problem is not "
                    "solved, so clients can reach it directly and bypass the load balancer",
                    f"on {label}: {fix_command([probe.vip])} (arp_ignore=1, arp_announce=2)",
                )
            )
        if mac not in owners:
            found.append(
                Finding(
                    "dr-arp",
                    Level.PROBLEM,
                    f"{probe.service} (MAC {mac})",
                    f"a host that is not one of this service's real servers answers ARP for "
                    f"the VIP {probe.vip}: an address conflict",
                    "find the host by its MAC and take the VIP off its LAN interface",
                )
            )
    if not stealing:
        found.append(
            Finding(
                "dr-arp",
                Level.OK,
                probe.service,
                f"no real server answers ARP for the VIP {probe.vip}",
            )
        )
    return found


def vip_finding(probe: DrProbe, label: str, address: str, answered: bool) -> Finding:
    """The answer to a SYN for VIP:port sent to the real server's MAC."""
    subject = probe.subject(label, address)
    if answered:
        return Finding(
            "dr-vip", Level.OK, subject, f"accepts packets for the VIP {probe.vip}:{probe.port}"
        )
    return Finding(
        "dr-vip",
        Level.PROBLEM,
        subject,
        f"does not accept a packet for the VIP {probe.vip}:{probe.port} sent to its MAC (no "
        "SYN-ACK or RST): the VIP is not on its loopback, or a firewall drops the port",
        f"on {label}: {fix_command([probe.vip])}",
    )


def nat_route_finding(
    probe: NatProbe,
    label: str,
    address: str,
    reach: Reach,
    direct: bool,
    from_client: bool,
    client: str,
    gateway: str | None = None,
) -> Finding:
    """The answers to two SYNs sent to a NAT real server on its own port: one from this host's
    address on its segment (`direct`: does it answer at all?) and one from a client-like address
    off its segment (`from_client`: does the reply to a client come back through us?).
    `gateway`: the floating gateway of an HA pair, which the server must use (not this node's
    own address)."""
    subject = probe.subject(label, address)
    gateway = gateway or reach.source or "the load balancer's address on its segment"
    fix = f"on {label}: make {gateway} its default gateway (pacslb realserver --config FILE)"
    if from_client:
        return Finding(
            "nat-route",
            Level.OK,
            subject,
            f"replies to clients come back through this load balancer (on {reach.device})",
        )
    if direct:
        return Finding(
            "nat-route",
            Level.PROBLEM,
            subject,
            f"answers this host directly but its reply to an address off its segment ({client}) "
            "does not "
            f"come back through the load balancer on {reach.device}: its default gateway is not "
            f"the load balancer, so {_hangs(probe)}",
            fix,
        )
    return Finding(
        "nat-route",
        Level.WARNING,
        subject,
        f"does not answer a SYN to port {_port_of(probe, address)} at all (down, or a firewall "
        "drops it): whether its replies come back through the load balancer is unknown",
        "check that the server is up and the port is open, then run doctor again",
    )


def _hangs(probe: NatProbe) -> str:
    if probe.transparent:
        return (
            "transparent connections (source: client) to it time out, though its health "
            "checks (from the load balancer's own address) pass, and clients wait the connect "
            "timeout before another server is tried"
        )
    return "NAT connections will hang after the client's SYN"


def _port_of(probe: NatProbe, address: str) -> int:
    return next(port for _, a, port in probe.servers if a == address)


# --- the report --------------------------------------------------------------------------


def exit_code(findings: Sequence[Finding]) -> int:
    return 1 if any(f.level is Level.PROBLEM for f in findings) else 0


def to_json(findings: Sequence[Finding]) -> dict[str, Any]:
    return {
        "ok": exit_code(findings) == 0,
        "problems": sum(f.level is Level.PROBLEM for f in findings),
        "warnings": sum(f.level is Level.WARNING for f in findings),
        "findings": [{**asdict(f), "level": f.level.value} for f in findings],
    }


def table(findings: Sequence[Finding]) -> str:
    width = max([len(f.subject) for f in findings] + [7])
    lines = [f"{'STATUS':<8} {'CHECK':<10} {'WHERE':<{width}}  FINDING"]
    for f in findings:
        lines.append(f"{f.level.value:<8} {f.check:<10} {f.subject:<{width}}  {f.message}")
        if f.fix and f.level in (Level.PROBLEM, Level.WARNING):
            lines.append(f"{'':<8} {'':<10} {'':<{width}}  fix: {f.fix}")
    problems = sum(f.level is Level.PROBLEM for f in findings)
    warnings = sum(f.level is Level.WARNING for f in findings)
    if problems:
        lines.append(f"\n{problems} problem(s), {warnings} warning(s): see the fixes above")
    else:
        lines.append(f"\nall is well ({warnings} warning(s))")
    return "\n".join(lines) + "\n"
