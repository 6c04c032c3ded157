"""conntrackd's config for l4-nat and l4-snat in an HA group (pure render; control/conntrackd.py
runs it).

NAT flows live in conntrack: the DNAT binding (client -> VIP became client -> real server),
and the ct mark, which is the real server's id (core/nft.py server_id: its counters, its
persistence and its halt all read it). A node that takes over without them sends the next
packet of each flow through a new NAT decision. conntrackd (conntrack-tools, FTFW mode: reliable
over UDP, with acknowledgements and resends) keeps a copy of the active node's table on the
others (the "external cache"), mark and NAT binding included; the node that becomes active
commits that copy into its kernel (control/conntrackd.py, as Debian's primary-backup.sh does).

Sync: unicast UDP to the one peer of a pair (on `node.ha.sync_port + 1`: state sync of pacslb
itself has `sync_port`); with more than one peer, multicast on the same link (FTFW's unicast
has one destination). General: everything under the state dir (its control socket, lock file
and log); only the flows of our layer 4 services are synced: conntrackd's address filter
looks at a flow's real source and destination (the original source and the reply source),
that is the client and the real server, so the real servers' addresses (and the VIPs, for
flows not yet translated) are what it accepts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pacslb import config as c

MULTICAST_GROUP = "225.0.0.50"  # conntrackd's example group; the port tells groups apart


@dataclass(frozen=True, slots=True)
class ConntrackdFiles:
    """Where conntrackd keeps its files: all in pacslb's state dir."""

    config: Path
    socket: Path
    lock: Path
    log: Path

    @property
    def output(self) -> Path:
        """What the daemon prints (stderr and stdout), beside its own log."""
        return self.log.with_name("conntrackd.out")

    @staticmethod
    def under(state_dir: Path) -> ConntrackdFiles:
        d = state_dir / "conntrackd"
        return ConntrackdFiles(d / "conntrackd.conf", d / "ctl", d / "lock", d / "conntrackd.log")


def sync_port(ha: c.HASettings) -> int:
    """conntrackd's UDP port: the one after pacslb's own state sync port."""
    port = int(ha.sync_port) + 1
    return port if port <= 65535 else int(ha.sync_port) - 1


def nat_services(config: c.Config) -> list[c.VirtualService]:
    return [vs for vs in config.virtual_services if vs.mode in (c.Mode.L4_NAT, c.Mode.L4_SNAT)]


def wanted(config: c.Config) -> bool:
    """conntrackd runs where HA is on and some service's flows live in conntrack."""
    ha = config.node.ha
    return ha is not None and ha.enabled and bool(nat_services(config))


def inputs(config: c.Config) -> tuple[object, ...]:
    """What the rendered config depends on besides this node's address: equal inputs, no
    restart of conntrackd (a restart empties its caches until the peer resyncs them)."""
    ha = config.node.ha
    return (wanted(config), ha, tuple(_addresses(config)), tuple(_protocols(config)))


def _addresses(config: c.Config) -> list[str]:
    found: set[str] = set()
    for vs in nat_services(config):
        found.add(str(vs.vip))
        found.update(str(rs.address) for rs in vs.real_servers)
        if vs.fallback is not None:
            found.add(str(vs.fallback.address))
    return sorted(found, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def _tag(address: str, destination: bool = False) -> str:
    """conntrackd's keyword for an address (its parser is case-sensitive here)."""
    version = ipaddress.ip_address(address).version
    return f"IPv{version}_Destination_Address" if destination else f"IPv{version}_address"


def render(config: c.Config, local: str, files: ConntrackdFiles, inject: bool = True) -> str:
    """The whole conntrackd.conf. `local` is this node's address on the sync link
    (node.ha.address, or the interface's first address as the supervisor found it).
    `inject` (the default): no external cache, the peer's flows go straight into this node's
    kernel table (DisableExternalCache on), so nothing is left to commit at a takeover; else
    the external cache, committed when this node becomes active. Measured (bench/ha_flows.py,
    connections opened just before the addresses moved): injecting kept 100/100 in 6 rounds,
    committing 82-100 (packets that reach the new node before the commit are taken as new
    flows)."""
    ha = config.node.ha
    if ha is None:
        raise ValueError("conntrackd needs node.ha")
    peers = [str(p) for p in ha.peers]
    if not peers:
        raise ValueError("conntrackd needs node.ha.peers")
    port = sync_port(ha)
    cache = "on" if inject else "off"
    lines = ["Sync {", "\tMode FTFW {", f"\t\tDisableExternalCache {cache}", "\t}"]
    if len(peers) == 1:
        lines += [
            "\tUDP {",
            f"\t\t{_tag(local)} {local}",
            f"\t\t{_tag(peers[0], destination=True)} {peers[0]}",
            f"\t\tPort {port}",
            *_interface(ha.interface),
            *_buffers(),
            "\t}",
        ]
    else:
        if ipaddress.ip_address(local).version != 4:
            raise ValueError("conntrackd multicast (more than one peer) needs an IPv4 address")
        lines += [
            "\tMulticast {",
            f"\t\tIPv4_address {MULTICAST_GROUP}",
            f"\t\tGroup {port}",
            f"\t\tIPv4_interface {local}",
            *_interface(ha.interface),
            *_buffers(),
            "\t}",
        ]
    lines += ["}", "General {"]
    lines += [
        "\tHashSize 32768",
        "\tHashLimit 262144",
        f"\tLogFile {files.log}",
        "\tSyslog off",
        f"\tLockFile {files.lock}",
        "\tUNIX {",
        f"\t\tPath {files.socket}",
        "\t}",
        "\tNetlinkBufferSize 2097152",
        "\tNetlinkBufferSizeMaxGrowth 8388608",
        "\tFilter From Userspace {",
        "\t\tProtocol Accept {",
        *(f"\t\t\t{p}" for p in _protocols(config)),
        "\t\t}",
        "\t\tAddress Accept {",
        *(f"\t\t\t{_tag(a)} {a}" for a in _addresses(config)),
        "\t\t}",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _interface(name: str | None) -> list[str]:
    return [f"\t\tInterface {name}"] if name else []


def _buffers() -> list[str]:
    return ["\t\tSndSocketBuffer 1249280", "\t\tRcvSocketBuffer 1249280", "\t\tChecksum on"]


def _protocols(config: c.Config) -> Iterable[str]:
    return sorted({vs.protocol.upper() for vs in nat_services(config)})


# The commands Debian's primary-backup.sh runs on each VRRP transition (conntrackd -C conf ...).
ON_ACTIVE: Sequence[tuple[str, str]] = (
    ("-c", "commit the external cache (the peer's flows) into the kernel"),
    ("-f", "flush the internal and external caches"),
    ("-R", "resync the internal cache with the kernel's table"),
    ("-B", "send a bulk update to the peers"),
)
ON_PASSIVE: Sequence[tuple[str, str]] = (
    ("-t", "shorten the kernel's conntrack timers (this node's own flows are the peer's now)"),
    ("-n", "ask the active node for a resync"),
)
ON_FAULT: Sequence[tuple[str, str]] = (("-t", "shorten the kernel's conntrack timers"),)
# With `inject` the peer's flows are in the kernel already, and must not have their timers cut.
ON_ACTIVE_INJECTED: Sequence[tuple[str, str]] = ON_ACTIVE[1:]
ON_PASSIVE_INJECTED: Sequence[tuple[str, str]] = ON_PASSIVE[1:]


def steps(role: str, inject: bool = True) -> Sequence[tuple[str, str]]:
    """The conntrackd commands for a role change (primary-backup.sh's; see ON_*)."""
    table = {
        "active": ON_ACTIVE_INJECTED if inject else ON_ACTIVE,
        "passive": ON_PASSIVE_INJECTED if inject else ON_PASSIVE,
        "fault": () if inject else ON_FAULT,
    }
    return table.get(role, ())
