"""What a real server needs for Direct Routing, NAT and transparent l7, as commands an
operator can paste.

In DR the load balancer hands a client's packet to the real server unchanged but for the
destination MAC, so the packet is still addressed to the VIP: the real server must own the
VIP, and must not answer ARP for it (the "ARP problem"), or clients' routers learn the real
server's MAC for the VIP and bypass the load balancer. Linux: the VIP on `lo`, with
arp_ignore=1 (answer only for addresses on the interface asked) and arp_announce=2 (never use
the VIP as the source of an ARP request). Windows: the VIP on the Microsoft KM-TEST Loopback
Adapter with the weak host model enabled, as the Loadbalancer.org appliance guide's appendix
does for Windows Server 2012 and later.

In l4-nat the load balancer rewrites only the destination: the real server sees the client's
own address and must send its reply back through the load balancer, which undoes the
translation. Unless the clients share the server's segment, that means the load balancer
(its address on the servers' segment; in an HA pair the floating gateway address) is the
server's default gateway. l4-snat also rewrites the source to the load balancer's own address,
so the reply comes back by itself: real servers need no change.

A transparent l7 service (`source: client`, docs/transparent.md) connects to the real server
from the client's own address, so its servers need the same gateway step as l4-nat: their
replies must reach the load balancer, where the proxy's socket takes them. In an HA pair the
gateway is the floating one (node.ha.gateways), which the active node holds.

Pure text: no I/O; `pacslb realserver` prints it and `pacslb doctor` points at it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pacslb import config as c

SYSCTL_FILE = "/etc/sysctl.d/90-pacslb-dr.conf"


@dataclass(frozen=True, slots=True)
class DrServer:
    """One real server address and every l4-dr VIP it must hold (from a config)."""

    address: str
    labels: tuple[str, ...]  # its labels, in the order the config names them
    vips: tuple[str, ...]


def dr_servers(config: c.Config) -> list[DrServer]:
    """Real servers of the config's l4-dr services, grouped by address (one server can serve
    several VIPs), in config order."""
    labels: dict[str, list[str]] = {}
    vips: dict[str, list[str]] = {}
    for svc in config.virtual_services:
        if svc.mode is not c.Mode.L4_DR:
            continue
        for rs in svc.real_servers:
            address = str(rs.address)
            for items, value in ((labels, rs.label), (vips, str(svc.vip))):
                seen = items.setdefault(address, [])
                if value not in seen:
                    seen.append(value)
    return [DrServer(a, tuple(labels[a]), tuple(vips[a])) for a in labels]


@dataclass(frozen=True, slots=True)
class NatServer:
    """One real server address whose replies to clients must come back through the load
    balancer: of l4-nat services, or of transparent l7 services (`source: client`)."""

    address: str
    labels: tuple[str, ...]
    services: tuple[str, ...]  # the l4-nat services it serves
    transparent: tuple[str, ...] = ()  # the transparent l7 services it serves

    def what(self) -> str:
        """e.g. "l4-nat (Web), transparent l7 (Archive)"."""
        parts = [f"l4-nat ({', '.join(self.services)})"] if self.services else []
        if self.transparent:
            parts.append(f"transparent l7 ({', '.join(self.transparent)})")
        return ", ".join(parts)

    def why(self, mark: str) -> list[str]:
        """Why the load balancer must be its default gateway, as comment lines."""
        if self.services:
            return [
                f"{mark} replies to clients must go back through the load balancer, which "
                "undoes the",
                f"{mark} address translation, so the load balancer is the default gateway.",
            ]
        return [
            f"{mark} replies to clients must go back through the load balancer: the proxy",
            f"{mark} connects from the client's own address, so the load balancer is the",
            f"{mark} default gateway.",
        ]


def _gateway_needing(svc: c.VirtualService) -> bool:
    return svc.mode is c.Mode.L4_NAT or (not svc.mode.is_kernel and svc.source == "client")


def nat_servers(config: c.Config) -> list[NatServer]:
    """Real servers of the config's l4-nat and transparent l7 services, grouped by address,
    in config order."""
    labels: dict[str, list[str]] = {}
    services: dict[str, list[str]] = {}
    transparent: dict[str, list[str]] = {}
    for svc in config.virtual_services:
        if not _gateway_needing(svc):
            continue
        kind = services if svc.mode is c.Mode.L4_NAT else transparent
        for rs in svc.real_servers:
            address = str(rs.address)
            services.setdefault(address, [])
            transparent.setdefault(address, [])
            for items, value in ((labels, rs.label), (kind, svc.label)):
                seen = items.setdefault(address, [])
                if value not in seen:
                    seen.append(value)
    return [
        NatServer(a, tuple(labels[a]), tuple(services[a]), tuple(transparent[a])) for a in labels
    ]


def floating_gateways(config: c.Config) -> dict[str, str]:
    """Real server address -> the HA pair's floating gateway on its subnet (node.ha.gateways):
    what a NAT or transparent server's default route must point at in a pair."""
    ha = config.node.ha
    if ha is None or not ha.enabled:
        return {}
    nets = [ipaddress.ip_interface(g.address) for g in ha.gateways]
    out = {}
    for server in nat_servers(config):
        address = ipaddress.ip_address(server.address)
        floating = next((n for n in nets if address in n.network), None)
        if floating is not None:
            out[server.address] = str(floating.ip)
    return out


def snat_services(config: c.Config) -> list[str]:
    return [s.label for s in config.virtual_services if s.mode is c.Mode.L4_SNAT]


def proxied_services(config: c.Config) -> list[str]:
    """The layer 7 services that connect from the load balancer's own address (not the
    transparent ones, whose servers need the gateway step)."""
    return [
        s.label for s in config.virtual_services if not s.mode.is_kernel and s.source != "client"
    ]


GATEWAY_PLACEHOLDER = "LB_GATEWAY"


def _gateway_note(server: NatServer, gateway: str | None, mark: str) -> list[str]:
    if gateway:
        return [
            f"{mark} {gateway} is the load balancer's address on this server's segment (in an",
            f"{mark} HA pair use the floating gateway address instead: --gateway ADDR).",
        ]
    return [
        f"{mark} The load balancer's address on {server.address}'s segment was not found from",
        f"{mark} this host's routes (run this on the load balancer, or pass --gateway ADDR):",
        f"{mark} replace {GATEWAY_PLACEHOLDER} below. If a router stands between them, that",
        f"{mark} router must send the replies to clients back through the load balancer.",
    ]


def nat_linux(server: NatServer, gateway: str | None, interface: str = "eth0") -> str:
    """Shell commands that make the load balancer a Linux real server's default gateway, then
    what keeps it on reboot (as comments)."""
    via = gateway or GATEWAY_PLACEHOLDER
    ip = "ip -6" if ":" in via else "ip"
    family = "ipv6" if ":" in via else "ipv4"
    out = [
        f"# {server.what()} on a Linux real server (run as root):",
        *server.why("#"),
        *_gateway_note(server, gateway, "#"),
        f"{ip} route replace default via {via} dev {interface}",
        "",
        "# To keep this across reboots (the one that manages the interface):",
        f"# ifupdown, /etc/network/interfaces, in `iface {interface}`:  gateway {via}",
        f"# NetworkManager:  nmcli connection modify <connection> {family}.gateway {via}",
        "# systemd-networkd, the [Network] section of the interface's .network file:",
        f"#   Gateway={via}",
        "# netplan, under the interface:  routes: [{to: default, via: " + via + "}]",
        "# RHEL network-scripts, /etc/sysconfig/network-scripts/ifcfg-" + interface + ":",
        f"#   GATEWAY={via}",
    ]
    return "\n".join(out) + "\n"


def _windows_intro(server: NatServer) -> list[str]:
    if server.transparent:
        return [f"REM {server.what()} on a Windows real server:", *server.why("REM")]
    return [  # as the McKesson guide's chapter shows it
        f"REM {server.what()} on a Windows real server: replies to",
        "REM clients must go back through the load balancer, which undoes the address",
        "REM translation, so the load balancer is the default gateway.",
    ]


def nat_windows(server: NatServer, gateway: str | None, lan: str = "net") -> str:
    """Commands for an elevated Command Prompt (and the PowerShell equivalent) that make the
    load balancer a Windows real server's default gateway; `route -p` and New-NetRoute keep
    it across reboots."""
    via = gateway or GATEWAY_PLACEHOLDER
    v6 = ":" in via
    prefix = "::/0" if v6 else "0.0.0.0/0"
    out = [
        *_windows_intro(server),
        *_gateway_note(server, gateway, "REM"),
        f'REM The LAN adapter is named "{lan}" here (--lan-adapter). Remove the old default',
        "REM gateway (also in the adapter's IPv4 properties, or it comes back), then add:",
    ]
    if v6:
        out += [
            f'netsh interface ipv6 delete route ::/0 "{lan}"',
            f'netsh interface ipv6 add route ::/0 "{lan}" {via} store=persistent',
        ]
    else:
        out += ["route delete 0.0.0.0 mask 0.0.0.0", f"route -p add 0.0.0.0 mask 0.0.0.0 {via}"]
    out += [
        "REM or in PowerShell:",
        f"REM   Get-NetRoute -DestinationPrefix {prefix} | Remove-NetRoute -Confirm:$false",
        f"REM   New-NetRoute -DestinationPrefix {prefix} -InterfaceAlias '{lan}' -NextHop {via}",
    ]
    return "\n".join(out) + "\n"


def _split(vips: Sequence[str]) -> tuple[list[str], list[str]]:
    v4 = [v for v in vips if ipaddress.ip_address(v).version == 4]
    v6 = [v for v in vips if ipaddress.ip_address(v).version == 6]
    return v4, v6


def linux(vips: Sequence[str], interface: str = "eth0") -> str:
    """Shell commands for a Linux real server (run as root), then what keeps them on reboot
    (as comments: pasting the whole text changes nothing on disk)."""
    v4, v6 = _split(vips)
    sysctls = [
        f"net.ipv4.conf.{scope}.{key}={value}"
        for scope in ("all", interface)
        for key, value in (("arp_ignore", 1), ("arp_announce", 2))
    ]
    out = [
        f"# Direct Routing on a Linux real server: VIP {', '.join(vips)} (run as root)",
        "# Answer ARP only for addresses on the interface asked (arp_ignore=1) and never",
        "# announce the VIP as an ARP source (arp_announce=2): the VIP stays the load",
        f"# balancer's on the LAN. `{interface}` is the server's LAN interface (--interface).",
    ]
    out += [f"sysctl -w {s}" for s in sysctls] if v4 else []
    out += ["# The VIP on the loopback interface: the server accepts packets addressed to it."]
    out += [f"ip addr replace {v}/32 dev lo" for v in v4]
    if v6:
        out += ["# IPv6: neighbour discovery answers only for addresses on the interface asked,"]
        out += ["# so an address on lo needs no sysctl."]
        out += [f"ip -6 addr replace {v}/128 dev lo" for v in v6]
    out += ["", "# To keep this across reboots:"]
    if v4:
        out += [f"# {SYSCTL_FILE}:"]
        out += [f"#   {s.replace('=', ' = ')}" for s in sysctls]
    out += ["# ifupdown (Debian/Ubuntu): the `up` lines in /etc/network/interfaces' lo stanza:"]
    out += ["#   auto lo", "#   iface lo inet loopback"]
    out += [f"#     up ip addr add {a} dev lo" for a in _prefixed(v4, v6)]
    out += ["# or systemd-networkd, /etc/systemd/network/90-pacslb-dr.network:"]
    out += ["#   [Match]", "#   Name=lo", "#   [Network]"]
    out += [f"#   Address={a}" for a in _prefixed(v4, v6)]
    return "\n".join(out) + "\n"


def _prefixed(v4: Sequence[str], v6: Sequence[str]) -> list[str]:
    return [f"{v}/32" for v in v4] + [f"{v}/128" for v in v6]


def windows(vips: Sequence[str], lan: str = "net", loopback: str = "loopback") -> str:
    """Commands for an elevated Command Prompt on Windows Server 2012/2016/2019/2022; netsh
    keeps its settings across reboots."""
    v4, v6 = _split(vips)
    out = [
        f"REM Direct Routing on a Windows real server: VIP {', '.join(vips)}",
        "REM 1. Install the Microsoft KM-TEST Loopback Adapter: Device Manager > Action > Add",
        "REM    legacy hardware > install manually > Network adapters > Microsoft > Microsoft",
        "REM    KM-TEST Loopback Adapter (or run hdwwiz.exe).",
        f'REM 2. Name the LAN adapter "{lan}" and the loopback adapter "{loopback}" in Network',
        "REM    Connections, or pass their names with --lan-adapter / --loopback-adapter: the",
        "REM    names below must match the adapters' names exactly.",
        "REM 3. The loopback adapter gets no default gateway and must not register its",
        "REM    address in DNS (IPv4 properties > Advanced > DNS > untick 'Register this",
        "REM    connection's addresses in DNS'), or clients would find the server by the VIP:",
        f"powershell -Command \"Set-DnsClient -InterfaceAlias '{loopback}' "
        '-RegisterThisConnectionsAddress $false"',
        "REM 4. The VIP on the loopback adapter, with a host mask so it routes nothing:",
    ]
    out += [f'netsh interface ipv4 add address "{loopback}" {v} 255.255.255.255' for v in v4]
    out += [f'netsh interface ipv6 add address "{loopback}" {v}/128' for v in v6]
    out += [
        "REM 5. The weak host model: the LAN adapter accepts packets for the VIP, and the",
        "REM    loopback adapter's address may be the source of replies sent out of the LAN.",
    ]
    for family in (["ipv4"] if v4 else []) + (["ipv6"] if v6 else []):
        out += [
            f'netsh interface {family} set interface "{lan}" weakhostreceive=enabled',
            f'netsh interface {family} set interface "{loopback}" weakhostreceive=enabled',
            f'netsh interface {family} set interface "{loopback}" weakhostsend=enabled',
        ]
    return "\n".join(out) + "\n"


def for_config(
    servers: Sequence[DrServer],
    os: str,
    interface: str,
    lan: str,
    loopback: str,
    nat: Sequence[NatServer] = (),
    gateways: Mapping[str, str] | None = None,
    snat: Sequence[str] = (),
    proxied: Sequence[str] = (),
) -> str:
    """Every DR and NAT real server of a config, each with its own block; `gateways` maps a
    NAT real server's address to the load balancer's address on its segment."""
    mark = "REM" if os == "windows" else "#"
    gateways = gateways or {}
    blocks = []
    for s in servers:
        head = f"{mark} === {', '.join(s.labels)} ({s.address})"
        body = linux(s.vips, interface) if os == "linux" else windows(s.vips, lan, loopback)
        blocks.append(head + "\n" + body)
    for n in nat:
        head = f"{mark} === {', '.join(n.labels)} ({n.address})"
        gateway = gateways.get(n.address)
        body = nat_linux(n, gateway, interface) if os == "linux" else nat_windows(n, gateway, lan)
        blocks.append(head + "\n" + body)
    if snat:
        blocks.append(
            f"{mark} l4-snat ({', '.join(snat)}): real servers need no change: the load balancer "
            "sends them\n"
            f"{mark} its own address as the source, so their replies come back to it by "
            "themselves.\n"
        )
    if proxied and blocks:  # beside DR or NAT servers, say why these have no block
        blocks.append(
            f"{mark} layer 7 ({', '.join(proxied)}): real servers need no change: the proxy "
            "connects to them\n"
            f"{mark} from the load balancer's own address, so their replies come back to it by "
            "themselves.\n"
        )
    if not blocks:
        return (
            f"{mark} no l4-dr, l4-nat or transparent l7 virtual service in this config: real "
            "servers need no change\n"
        )
    return "\n".join(blocks)


def fix_command(vips: Sequence[str]) -> str:
    """The command `pacslb doctor` suggests for a real server that is not set up."""
    return "pacslb realserver " + " ".join(f"--vip {v}" for v in vips) + " --os linux"
