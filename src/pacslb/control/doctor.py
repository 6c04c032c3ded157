"""`pacslb doctor`: the probes (thin I/O around core/doctor.py, which words the findings).

Checks the load balancer host: nftables (library, tool, and the kernel accepting what the
kernel engine renders, by a dry run `nft -c`), root, forwarding and conntrack for NAT, and for
every l4-dr service that each real server is on this host's segment, does not answer ARP for
the VIP, and accepts a packet for the VIP sent to its MAC. The last two are asked with
hand-built frames on a raw AF_PACKET socket (core/packets.py): the kernel's own sockets would
neither ask ARP for an address this host may hold itself nor send to a chosen MAC.
"""

from __future__ import annotations

import ipaddress
import os
import random
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pacslb import config as c
from pacslb.core import nft, packets, tproxy
from pacslb.core.doctor import (
    HOST,
    DrProbe,
    Finding,
    Level,
    NatProbe,
    Reach,
    TproxyState,
    arp_findings,
    dr_probes,
    ha_gateway_findings,
    nat_probes,
    nat_route_finding,
    needs_forwarding,
    needs_root,
    route_finding,
    source_address_findings,
    tproxy_findings,
    transparent_versions,
    unresolved_finding,
    vip_finding,
)
from pacslb.core.plan import build_plan
from pacslb.core.slots import service_slots
from pacslb.engines.host import Host
from pacslb.engines.nftables import Nft
from pacslb.errors import EngineError

PROBE_WAIT = 1.0  # seconds to wait for ARP replies and SYN answers
RESEND_AFTER = 0.3  # one more try for what has not answered by then (a lost frame)
PACKET_OUTGOING = 4  # sll_pkttype of our own frames, seen on the same socket
K = TypeVar("K")
CHECK_TABLE = "pacslb_doctor"  # only ever in `nft -c` dry runs: never committed

# The features the DR ruleset uses (core/nft.py): a netdev ingress chain, typeof maps with
# concatenations, dynamic maps with timeouts, numgen, and fwd with a MAC rewrite.
DR_FEATURES = """table netdev {table} {{
  map flows {{ typeof ip saddr . th sport : ether daddr;
    flags dynamic,timeout; timeout 300s; size 1024;
  }}
  map slots {{ typeof meta mark : ether daddr; flags interval;
    elements = {{ 0-9 : 02:00:00:00:00:01 }}
  }}
  chain ingress {{ type filter hook ingress device "{device}" priority 0; policy accept;
    ip daddr 198.18.0.1 tcp dport 1 jump pick
  }}
  chain pick {{
    ether daddr set ip saddr . th sport map @flows accept
    meta mark set numgen inc mod 10
    ether daddr set meta mark map @slots add @flows {{ ip saddr . th sport : ether daddr }}
    ether saddr set 02:00:00:00:00:02 fwd to "{device}"
  }}
}}
"""
# NAT and SNAT: conntrack marks and a nat chain (the kernel loads conntrack on demand).
NAT_FEATURES = """table ip {table} {{
  chain pre {{ type filter hook prerouting priority mangle; policy accept;
    ip daddr 198.18.0.1 tcp dport 1 ct state new ct mark set 1
  }}
  chain natpre {{ type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.18.0.1 tcp dport 1 dnat to 198.18.0.2:2
  }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    ct mark 1 masquerade
  }}
}}
"""


def run(config: c.Config | None, host: Host | None = None) -> list[Finding]:
    """Every check that applies to this host and (when given) this config."""
    host = host or Host()
    root = os.geteuid() == 0
    findings = [_root(config, root), *_library()]
    findings += _dry_runs(config, host, root)
    if config is not None:
        findings += _forwarding(config)
        findings += _transparent(config, host, root)
        for probe in dr_probes(config):
            findings += _direct_routing(probe, host, root)
        findings += ha_gateway_findings(config)
        gateways = floating_gateways(config)
        for nat in nat_probes(config):
            findings += _nat_route_back(nat, host, root, gateways)
        from pacslb.control.ha import doctor_findings

        findings += doctor_findings(config)  # an HA node's keepalived
    return findings


def placement(config: c.Config, host: Host | None = None) -> list[Finding]:
    """The checks whose problems mean a service cannot be placed on this host at all: the
    ones `pacslb run` refuses to start on (unless --degraded). Quick, and sending nothing: a
    real server that is down or not set up yet (ARP, the VIP on its loopback, its gateway) is
    the health checks' business, and must not keep the load balancer from starting after a
    power cut. Only layer 4 and transparent services need anything of the host here."""
    if not needs_root(config):
        return []
    host = host or Host()
    root = os.geteuid() == 0
    findings = [_root(config, root)]
    findings += [f for f in _library() if f.check == "nftables"]  # the engine needs one of them
    for probe in dr_probes(config):
        findings += _route_findings(probe, host)[0]
    # Not the ruleset's dry run: next to the tables of a running (or adopted) data plane it
    # reports "File exists", and a ruleset the kernel refuses is the engine's apply failure,
    # which makes status not ready and names it.
    return findings


# --- host ----------------------------------------------------------------------------------


def _transparent(config: c.Config, host: Host, root: bool) -> list[Finding]:
    """Transparent services' return path (core/tproxy.py), and fixed source addresses."""
    wanted = transparent_versions(config)
    findings: list[Finding] = []
    if wanted:
        rules: dict[int, bool] = {}
        routes: dict[int, bool] = {}
        for version in wanted:
            try:
                rules[version] = tproxy.has_rule(host.ip(f"-{version}", "rule", "show"))
            except EngineError:
                rules[version] = False
            try:
                listed = host.ip(f"-{version}", "route", "show", "table", str(tproxy.ROUTE_TABLE))
                routes[version] = tproxy.has_route(listed, version)
            except EngineError:  # no such table: no route
                routes[version] = False
        marking: bool | None = None
        if root:
            try:
                marking = tproxy.has_marking(Nft().run(f"list table inet {tproxy.TABLE}"))
            except EngineError:  # no such table
                marking = False
        findings += tproxy_findings(wanted, TproxyState(marking, rules, routes))
    if any(s.source not in ("auto", "client") for s in config.virtual_services):
        findings += source_address_findings(config, host.addresses())
    return findings


def _root(config: c.Config | None, root: bool) -> Finding:
    if root:
        return Finding(
            "root", Level.OK, HOST, "running as root (layer 4 modes and source: client need it)"
        )
    if config is None:
        return Finding(
            "root", Level.WARNING, HOST, "not root: the layer 4 modes and source: client need it"
        )
    if not needs_root(config):
        return Finding(
            "root", Level.OK, HOST, "not root; no layer 4 or source: client service needs it"
        )
    return Finding(
        "root",
        Level.PROBLEM,
        HOST,
        "not running as root: the layer 4 modes (nftables), transparent services (source: "
        "client: IP_TRANSPARENT and policy routing) and these probes need it",
        "run pacslb as root",
    )


def _library() -> list[Finding]:
    out = []
    try:
        via = Nft().via
    except EngineError as exc:
        via = ""
        out.append(Finding("nftables", Level.PROBLEM, HOST, str(exc), "apt-get install nftables"))
    if via == "libnftables":
        out.append(Finding("nftables", Level.OK, HOST, "libnftables.so.1 loads"))
    elif via == "nft":
        out.append(
            Finding(
                "nftables",
                Level.WARNING,
                HOST,
                "libnftables.so.1 does not load: pacslb falls back to one `nft` process per "
                "change (~16 ms each instead of ~0.1 ms)",
                "apt-get install libnftables1",
            )
        )
    if shutil.which("nft") is None:
        out.append(
            Finding(
                "nft",
                Level.WARNING,
                HOST,
                "the nft tool is missing: the kernel's support cannot be dry-run",
                "apt-get install nftables",
            )
        )
    else:
        out.append(Finding("nft", Level.OK, HOST, "the nft tool is installed"))
    return out


def _nft_check(script: str) -> str | None:
    """nft's complaint about `script` in a dry run (`nft -c`: nothing is committed)."""
    try:
        done = subprocess.run(
            ["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = [ln for ln in done.stderr.splitlines() if "Error" in ln] or done.stderr.splitlines()
    return " | ".join(lines[:3]) or f"nft exited {done.returncode}"


def _dry_runs(config: c.Config | None, host: Host, root: bool) -> list[Finding]:
    if shutil.which("nft") is None:
        return []
    if not root:
        return [Finding("kernel", Level.SKIPPED, HOST, "nft dry runs need root")]
    device = _some_device(config, host)
    out = []
    for check, script, what, fix in (
        (
            "kernel",
            DR_FEATURES.format(table=CHECK_TABLE, device=device),
            f"a netdev ingress chain on {device} with the maps and fwd Direct Routing uses",
            "a kernel with nf_tables netdev support (CONFIG_NF_TABLES_NETDEV, NFT_FWD_NETDEV)",
        ),
        (
            "conntrack",
            NAT_FEATURES.format(table=CHECK_TABLE),
            "conntrack marks and nat chains (l4-nat, l4-snat)",
            "a kernel with nf_conntrack and nf_nat (modprobe nf_conntrack nf_nat)",
        ),
    ):
        error = _nft_check(script)
        if error is None:
            out.append(Finding(check, Level.OK, HOST, f"the kernel accepts {what}"))
        else:
            out.append(
                Finding(check, Level.PROBLEM, HOST, f"the kernel refuses {what}: {error}", fix)
            )
    if config is not None and transparent_versions(config):
        script = tproxy.nft_script(True).replace(tproxy.TABLE, CHECK_TABLE)
        error = _nft_check(script.split("\n", 2)[2])  # the table's definition alone
        what = "nftables' socket expression (transparent mode's marking)"
        if error is None:
            out.append(Finding("tproxy-kernel", Level.OK, HOST, f"the kernel accepts {what}"))
        else:
            out.append(
                Finding(
                    "tproxy-kernel",
                    Level.PROBLEM,
                    HOST,
                    f"the kernel refuses {what}: {error}; source: client services cannot work",
                    "a kernel with CONFIG_NFT_SOCKET (modprobe nft_socket), or source: auto",
                )
            )
    if config is not None and nft.kernel_services(build_plan(config)):
        out.append(_config_dry_run(config, host))
    return out


def _some_device(config: c.Config | None, host: Host) -> str:
    """An interface for the ingress dry run: a DR service's, else the default route's."""
    targets = [a for p in dr_probes(config) for _, a in p.servers] if config else []
    return _device_for([*targets, "198.18.0.1"], host)


def _device_for(addresses: list[str], host: Host) -> str:
    """The interface the first routable of `addresses` leaves by ("lo" if none)."""
    for address in addresses:
        try:
            route = host.route(address)
        except EngineError:
            continue
        if route.device and not route.local:
            return route.device
    return "lo"


def _config_dry_run(config: c.Config, host: Host) -> Finding:
    """The config's own ruleset, rendered as the kernel engine would, checked by `nft -c`.
    Real servers whose MAC is unknown get made-up ones: the check is about the rules."""
    plan = build_plan(config)
    links: dict[str, nft.DrLink] = {}
    addresses = [a for p in dr_probes(config) for _, a in p.servers]
    for svc in plan.services:
        if svc.fallback is not None and svc.mode is c.Mode.L4_DR:
            addresses.append(str(svc.fallback.address))
    macs: dict[str, str] = {}
    try:
        for probe in dr_probes(config):
            device = _device_for([a for _, a in probe.servers], host)
            links[probe.service] = nft.DrLink(device, _mac_or(host, device))
        known = host.neighbours()
    except EngineError as exc:
        return Finding("ruleset", Level.SKIPPED, HOST, f"could not gather host facts: {exc}")
    for i, address in enumerate(sorted(set(addresses))):
        macs[address] = known.get(address, f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}")
    slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(plan)}
    try:
        script = nft.render(plan, nft.KernelFacts(links, macs), slots).script
    except EngineError as exc:
        return Finding("ruleset", Level.PROBLEM, HOST, f"the ruleset cannot be rendered: {exc}")
    error = _nft_check(script)
    if error is None:
        return Finding("ruleset", Level.OK, HOST, "the kernel accepts this config's ruleset")
    return Finding(
        "ruleset",
        Level.PROBLEM,
        HOST,
        f"the kernel refuses this config's ruleset: {error}",
        "report it with `pacslb check` output and `uname -r`",
    )


def _mac_or(host: Host, device: str) -> str:
    try:
        return host.link_mac(device)
    except EngineError:
        return "02:00:00:00:ff:ff"


def _forwarding(config: c.Config) -> list[Finding]:
    if not needs_forwarding(config):
        return []
    path = Path("/proc/sys/net/ipv4/ip_forward")
    try:
        on = path.read_text().strip() == "1"
    except OSError as exc:
        return [Finding("forwarding", Level.SKIPPED, HOST, f"cannot read {path}: {exc}")]
    if on:
        return [Finding("forwarding", Level.OK, HOST, "IPv4 forwarding is on (NAT needs it)")]
    return [
        Finding(
            "forwarding",
            Level.WARNING,
            HOST,
            "IPv4 forwarding is off; NAT and SNAT need it (pacslb run switches it on itself)",
            "sysctl -w net.ipv4.ip_forward=1, and put it in /etc/sysctl.d/ to keep it",
        )
    ]


# --- Direct Routing ------------------------------------------------------------------------


def _route_findings(probe: DrProbe, host: Host) -> tuple[list[Finding], dict[str, tuple[str, str]]]:
    """Each real server's route as a finding, and those on the link as DR needs them:
    address -> (label, device)."""
    findings: list[Finding] = []
    on_link: dict[str, tuple[str, str]] = {}
    for label, address in probe.servers:
        try:
            route = host.route(address)
        except EngineError as exc:
            subject = probe.subject(label, address)
            findings.append(Finding("dr-route", Level.PROBLEM, subject, str(exc)))
            continue
        finding = route_finding(probe, label, address, route.device, route.gateway, route.local)
        findings.append(finding)
        if finding.level is Level.OK:
            on_link[address] = (label, route.device)
    return findings, on_link


def _direct_routing(probe: DrProbe, host: Host, root: bool) -> list[Finding]:
    if not probe.ipv4:
        return [Finding("dr", Level.SKIPPED, probe.service, "the DR probes are IPv4 only")]
    out, on_link = _route_findings(probe, host)
    if not root:
        out.append(Finding("dr", Level.SKIPPED, probe.service, "ARP and SYN probes need root"))
        return out
    macs = host.resolve(sorted(on_link))
    for address, (label, device) in on_link.items():
        if address not in macs:
            out.append(unresolved_finding(probe, label, address, device))
    for device in sorted({d for _, d in on_link.values()}):
        lb_mac = host.link_mac(device)
        lb_ip = _address_on(host, device, [a for a, (_, d) in on_link.items() if d == device])
        answering = arp_who_has(device, lb_mac, lb_ip or "0.0.0.0", probe.vip)
        out += arp_findings(probe, answering, lb_mac, macs)
        if lb_ip is None:
            out.append(
                Finding("dr-vip", Level.SKIPPED, probe.service, f"no IPv4 address on {device}")
            )
            continue
        targets = {a: m for a, m in macs.items() if a in on_link and on_link[a][1] == device}
        answered = syn_answers(device, lb_mac, lb_ip, probe.vip, probe.port, targets)
        for address in targets:
            out.append(vip_finding(probe, on_link[address][0], address, address in answered))
    return out


def _address_on(host: Host, device: str, near: list[str]) -> str | None:
    """This host's IPv4 address on `device`, preferring the one whose subnet holds `near`."""
    found: list[tuple[str, int]] = []
    for link in host.ip("-4", "addr", "show", "dev", device):
        for a in link.get("addr_info", []):
            found.append((a["local"], int(a.get("prefixlen", 32))))
    for local, prefix in found:
        net = ipaddress.ip_network(f"{local}/{prefix}", strict=False)
        if any(ipaddress.ip_address(n) in net for n in near) and prefix < 32:
            return local
    return found[0][0] if found else None


def _raw(device: str, ethertype: int) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    s.bind((device, ethertype))
    return s


def _frames(s: socket.socket, deadline: float) -> Iterator[tuple[float, bytes]]:
    """Frames received (not our own) until `deadline`, with the time each came; an empty
    frame every tick without one, so that the caller can resend on time."""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([s], [], [], min(left, 0.05))
        if not ready:
            yield time.monotonic(), b""
            continue
        frame, address = s.recvfrom(65535)
        if address[2] != PACKET_OUTGOING:
            yield time.monotonic(), frame


def arp_who_has(device: str, lb_mac: str, lb_ip: str, vip: str) -> set[str]:
    """The MACs that answer a broadcast ARP request for `vip` on `device`."""
    request = packets.arp_request(lb_mac, lb_ip, vip)
    macs: set[str] = set()
    with _raw(device, packets.ETH_P_ARP) as s:
        s.send(request)
        resend = time.monotonic() + RESEND_AFTER
        for now, frame in _frames(s, time.monotonic() + PROBE_WAIT):
            arp = packets.parse_arp(frame)
            if arp and arp.op == packets.ARP_REPLY and arp.sender_ip == vip:
                macs.add(arp.sender_mac)
            if now >= resend:
                s.send(request)
                resend = float("inf")
    return macs


@dataclass(frozen=True, slots=True)
class Syn:
    """One hand-built SYN: to `dst_mac` (the next hop), from `src_ip` to `dst_ip`:`dport`;
    its answer counts only from `from_mac` when that is given."""

    dst_mac: str
    src_ip: str
    dst_ip: str
    dport: int
    from_mac: str | None = None


def syn_round(device: str, lb_mac: str, syns: Mapping[K, Syn]) -> set[K]:
    """The keys of `syns` answered with a SYN-ACK or RST on `device` within PROBE_WAIT (one
    resend for the silent ones). This host's kernel resets the SYN-ACKs it receives for an
    address of its own (it has no such socket), so nothing is left open."""
    base = random.randrange(40000, 60000)
    keys = list(syns)
    sport = {key: base + i for i, key in enumerate(keys)}
    by_port = {p: k for k, p in sport.items()}
    frames = {
        k: packets.tcp_syn(
            lb_mac, syn.dst_mac, syn.src_ip, syn.dst_ip, sport[k], syn.dport,
            random.getrandbits(32),
        )
        for k, syn in syns.items()
    }  # fmt: skip
    answered: set[K] = set()
    with _raw(device, packets.ETH_P_IP) as s:
        for frame in frames.values():
            s.send(frame)
        resend = time.monotonic() + RESEND_AFTER
        for now, raw in _frames(s, time.monotonic() + PROBE_WAIT):
            tcp = packets.parse_tcp(raw)
            key = by_port.get(tcp.dport) if tcp else None
            if tcp and key is not None and tcp.answers_syn:
                syn = syns[key]
                mac_ok = syn.from_mac is None or tcp.src_mac == syn.from_mac.lower()
                if tcp.src_ip == syn.dst_ip and tcp.sport == syn.dport and mac_ok:
                    answered.add(key)
            if len(answered) == len(syns):
                break
            if now >= resend:
                for key in set(syns) - answered:
                    s.send(frames[key])
                resend = float("inf")
    return answered


def syn_answers(
    device: str, lb_mac: str, lb_ip: str, vip: str, port: int, targets: dict[str, str]
) -> set[str]:
    """Real server addresses whose MAC answered a SYN for vip:port with a SYN-ACK or RST."""
    syns = {a: Syn(mac, lb_ip, vip, port, from_mac=mac) for a, mac in targets.items()}
    return syn_round(device, lb_mac, syns)


# --- NAT: the route back -------------------------------------------------------------------

# A stand-in client (TEST-NET-3, RFC 5737) for when the VIP shares the real servers' segment:
# the probe's source must be off that segment, as a client's is, so that the reply follows the
# server's default route.
CLIENT_STAND_IN = "203.0.113.1"


def reach(address: str, host: Host) -> Reach:
    """This host's routing table's answer for `address` (as `ip route get`)."""
    try:
        found = host.ip("route", "get", address)
    except EngineError as exc:
        return Reach(error=str(exc))
    if not found:
        return Reach(error=f"no route to {address}")
    r = found[0]
    local = r.get("type") == "local"
    device = str(r.get("dev", ""))
    if local:  # the kernel answers `lo`: name the interface that holds the address instead
        try:
            for link in host.ip("addr", "show"):
                if any(a.get("local") == address for a in link.get("addr_info", [])):
                    device = str(link.get("ifname", device))
        except EngineError:
            pass
    return Reach(device, r.get("gateway"), local, r.get("prefsrc"))


def _networks_on(host: Host, device: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for link in host.ip("addr", "show", "dev", device):
        for a in link.get("addr_info", []):
            out.append(ipaddress.ip_network(f"{a['local']}/{a.get('prefixlen', 32)}", strict=False))
    return out


def floating_gateways(config: c.Config) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The real servers' floating default gateways of an HA node (node.ha.gateways)."""
    ha = config.node.ha
    if ha is None or not ha.enabled:
        return []
    return [ipaddress.ip_interface(g.address) for g in ha.gateways]


def _nat_route_back(
    probe: NatProbe,
    host: Host,
    root: bool,
    gateways: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = (),
) -> list[Finding]:
    """Does each real server's reply to a client come back through this host?

    The real server's own routes cannot be read from here, so the load balancer asks it: two
    SYNs to the server's port on a raw socket, one from this host's address on the server's
    segment (answered directly: the server is up) and one from the VIP (or a stand-in client
    address when the VIP shares the segment), whose answer follows the server's route to
    clients. If only the first is answered on the interface toward the server, that route does
    not go through the load balancer, and NAT connections will hang: the server names itself."""
    if not probe.ipv4:
        return [
            Finding("nat-route", Level.SKIPPED, probe.service, "the route-back probe is IPv4 only")
        ]
    if not root:
        return [Finding("nat-route", Level.SKIPPED, probe.service, "the NAT probe needs root")]
    out: list[Finding] = []
    hops: dict[str, tuple[str, str, Reach]] = {}  # address -> (label, next hop, reach)
    held = host.addresses() if gateways else set()
    floats: dict[str, str] = {}  # real server address -> its floating gateway
    for label, address, _ in probe.servers:
        subject = probe.subject(label, address)
        floating = next((g for g in gateways if ipaddress.ip_address(address) in g.network), None)
        if floating is not None and str(floating.ip) not in held:
            # An HA node that does not hold the floating gateway (the passive one): the real
            # server's replies go to the node that holds it, and this one cannot see them.
            out.append(
                Finding(
                    "nat-route",
                    Level.SKIPPED,
                    subject,
                    f"this node does not hold the floating gateway {floating.ip} (node.ha."
                    "gateways): the real servers' replies go to the node that holds it; run "
                    "doctor on the active node",
                )
            )
            continue
        where = reach(address, host)
        if floating is not None:  # the real servers' gateway is the floating address
            floats[address] = str(floating.ip)
        if where.error or where.local or not where.source:
            what = where.error or "an address of this host, not a real server"
            out.append(Finding("nat-route", Level.PROBLEM, subject, what))
            continue
        hops[address] = (label, where.gateway or address, where)
    macs = host.resolve(sorted({hop for _, hop, _ in hops.values()}))
    for device in sorted({r.device for _, _, r in hops.values()}):
        here = {a: v for a, v in hops.items() if v[2].device == device}
        vip = ipaddress.ip_address(probe.vip)
        # A VIP in the servers' own subnet would be answered directly whatever their gateway;
        # an l7 service listening on 0.0.0.0 has no VIP to send from.
        beside = vip.is_unspecified or any(vip in n for n in _networks_on(host, device))
        client = CLIENT_STAND_IN if beside else probe.vip
        syns: dict[tuple[str, str], Syn] = {}
        for address, (label, hop, where) in here.items():
            if hop not in macs:
                out.append(
                    Finding(
                        "nat-route",
                        Level.WARNING,
                        probe.subject(label, address),
                        f"no ARP answer from {hop} on {device}: the server (or its router) is "
                        "down or not on this segment, so its route back cannot be checked",
                        "check that the server is up",
                    )
                )
                continue
            port = next(p for _, a, p in probe.servers if a == address)
            assert where.source is not None
            syns[(address, "direct")] = Syn(macs[hop], where.source, address, port)
            syns[(address, "client")] = Syn(macs[hop], client, address, port)
        if not syns:
            continue
        answered = syn_round(device, host.link_mac(device), syns)
        for address, (label, _, where) in here.items():
            if (address, "direct") in syns:
                direct = (address, "direct") in answered
                via_us = (address, "client") in answered
                gateway = floats.get(address)
                out.append(
                    nat_route_finding(probe, label, address, where, direct, via_us, client, gateway)
                )
    return out
