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
from collections.abc import Iterator
from pathlib import Path

from pacslb import config as c
from pacslb.core import nft, packets
from pacslb.core.doctor import (
    HOST,
    DrProbe,
    Finding,
    Level,
    arp_findings,
    dr_probes,
    needs_forwarding,
    needs_root,
    route_finding,
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
        for probe in dr_probes(config):
            findings += _direct_routing(probe, host, root)
    return findings


# --- host ----------------------------------------------------------------------------------


def _root(config: c.Config | None, root: bool) -> Finding:
    if root:
        return Finding("root", Level.OK, HOST, "running as root (layer 4 modes need it)")
    if config is None:
        return Finding("root", Level.WARNING, HOST, "not root: the layer 4 modes need it")
    if not needs_root(config):
        return Finding("root", Level.OK, HOST, "not root; no layer 4 service needs it")
    return Finding(
        "root",
        Level.PROBLEM,
        HOST,
        "not running as root: the layer 4 modes (nftables) and these probes need it",
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


def _direct_routing(probe: DrProbe, host: Host, root: bool) -> list[Finding]:
    if not probe.ipv4:
        return [Finding("dr", Level.SKIPPED, probe.service, "the DR probes are IPv4 only")]
    out: list[Finding] = []
    on_link: dict[str, tuple[str, str]] = {}  # address -> (label, device)
    for label, address in probe.servers:
        try:
            route = host.route(address)
        except EngineError as exc:
            out.append(Finding("dr-route", Level.PROBLEM, probe.subject(label, address), str(exc)))
            continue
        finding = route_finding(probe, label, address, route.device, route.gateway, route.local)
        out.append(finding)
        if finding.level is Level.OK:
            on_link[address] = (label, route.device)
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


def syn_answers(
    device: str, lb_mac: str, lb_ip: str, vip: str, port: int, targets: dict[str, str]
) -> set[str]:
    """Real server addresses whose MAC answered a SYN for vip:port with a SYN-ACK or RST.

    This host's kernel resets the SYN-ACKs (it has no such socket), so nothing is left open."""
    base = random.randrange(40000, 60000)
    sport = {address: base + i for i, address in enumerate(sorted(targets))}
    by_port = {p: a for a, p in sport.items()}
    frames = {
        a: packets.tcp_syn(lb_mac, targets[a], lb_ip, vip, sport[a], port, random.getrandbits(32))
        for a in targets
    }
    answered: set[str] = set()
    with _raw(device, packets.ETH_P_IP) as s:
        for frame in frames.values():
            s.send(frame)
        resend = time.monotonic() + RESEND_AFTER
        for now, raw in _frames(s, time.monotonic() + PROBE_WAIT):
            tcp = packets.parse_tcp(raw)
            if tcp and tcp.src_ip == vip and tcp.sport == port and tcp.dport in by_port:
                address = by_port[tcp.dport]
                if tcp.src_mac == targets[address].lower() and tcp.answers_syn:
                    answered.add(address)
            if len(answered) == len(targets):
                break
            if now >= resend:
                for address in set(targets) - answered:
                    s.send(frames[address])
                resend = float("inf")
    return answered
