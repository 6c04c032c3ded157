"""keepalived.conf for an HA pair, rendered from the config (VRRP only: no LVS part).

One VRRP instance holds every floating address of this node: each virtual service's VIP and
each `node.ha.gateways` entry (the l4-nat real servers' default gateway). Choices, and why:

- Every node starts as BACKUP with `nopreempt` (unless `node.ha.preempt`): a node that comes
  back does not take the addresses from a peer that serves well, which would cost every open
  connection a second time. The first node up (or the higher priority when both start
  together) becomes MASTER.
- Unicast adverts to `node.ha.peers` from `unicast_src_ip`: no multicast needed.
- The floating addresses are all `virtual_ipaddress_excluded`: keepalived 2.2.7 ignores an
  advert whose address list differs from its own ("ip address associated with VRID 51 not
  present in MASTER advert"), and with the VIPs in the adverts a service added on the active
  node before the passive one has the revision made the passive one take the addresses too
  (measured: both MASTER). The adverts carry one fixed address instead, derived from the VRID
  and held on lo with host scope (VRRPv3 refuses an instance without one). Excluded addresses
  also mix IPv4 and IPv6 in one instance.
- Authentication: VRRPv2's simple password (8 characters derived from `node.ha.secret` by
  scrypt and a label of its own, core/hakeys.py: an advert heard lets nobody test guesses of
  the secret cheaply, nor tells the state sync key), the only one keepalived has besides the
  deprecated AH. It is a clear-text guard against a
  foreign or misconfigured VRRP speaker on the segment, not a defence against an attacker who
  sees the adverts. VRRPv3 (RFC 5798), which an advert interval below a second needs (v2
  counts whole seconds), has no authentication at all: a sub-second pair is unauthenticated.
- A `track_file` with weight 0: a non-zero value in it puts the instance in FAULT, which sends
  a priority-0 advert (the peer takes over at once, RFC 5798 §6.4.3) and drops the addresses.
  That is the manual hand-over (`pacslb ha release`).
- States reach pacslb through a notify FIFO (no script runs, so no script user is needed);
  `fifo_write_vrrp_states_on_reload` reports the current state after every reload, which is
  how a restarted control process learns the role of a keepalived it adopts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pacslb import config as c
from pacslb.core import hakeys
from pacslb.core.ha_role import Role

INSTANCE = "pacslb"  # the VRRP instance's name, as the notify FIFO reports it
TRACK_FILE = "pacslb_release"  # the track_file block's name
# Gratuitous ARP / unsolicited NA: a burst on becoming MASTER, a second one a second later
# (a switch or client that missed the first), and a refresh every 10 s while MASTER, so that a
# neighbour cache made stale by a split brain that healed points at the holder again.
GARP_MASTER_DELAY = 1
GARP_MASTER_REPEAT = 3
GARP_MASTER_REFRESH = 10


@dataclass(frozen=True, slots=True)
class KeepalivedPaths:
    """Where keepalived's files live: one directory per node's state dir, so several
    keepalived daemons (one per network namespace) never share a pid file or FIFO."""

    directory: Path

    @classmethod
    def under(cls, state_dir: Path) -> KeepalivedPaths:
        return cls(state_dir / "keepalived")

    @property
    def config(self) -> Path:
        return self.directory / "keepalived.conf"

    @property
    def notify_fifo(self) -> Path:
        return self.directory / "notify.fifo"

    @property
    def release_file(self) -> Path:
        return self.directory / "release"

    @property
    def pid(self) -> Path:
        return self.directory / "keepalived.pid"

    @property
    def vrrp_pid(self) -> Path:
        return self.directory / "vrrp.pid"

    @property
    def log(self) -> Path:
        return self.directory / "keepalived.log"


@dataclass(frozen=True, slots=True)
class Floating:
    """One address keepalived adds on MASTER and removes otherwise."""

    cidr: str  # address/prefix: VIPs as /32 or /128, gateways as configured
    device: str

    @property
    def address(self) -> str:
        return self.cidr.split("/")[0]


def vrrp_version(advert_int: float) -> int:
    """VRRPv2 counts advert intervals in whole seconds; anything else needs VRRPv3."""
    return 2 if float(advert_int).is_integer() else 3


def auth_pass(secret: str) -> str:
    """The 8 characters VRRPv2 carries in clear: derived from the pair's secret by a slow KDF
    with a label of its own (core/hakeys.py), so that both nodes agree, and one advert heard
    lets nobody test guesses of the secret cheaply nor learn the state sync key."""
    return hakeys.vrrp_password(secret)


def floating_addresses(
    config: c.Config, device_of: Mapping[str, str], default_device: str
) -> tuple[Floating, ...]:
    """Every VIP (once, in config order) on the interface of its subnet (`device_of`, found
    by the shell; else the VRRP interface), then every floating gateway."""
    out: list[Floating] = []
    seen: set[str] = set()
    for vs in config.virtual_services:
        address = str(vs.vip)
        if address in seen:
            continue
        seen.add(address)
        bits = 128 if vs.vip.version == 6 else 32
        out.append(Floating(f"{address}/{bits}", device_of.get(address, default_device)))
    ha = config.node.ha
    for gateway in ha.gateways if ha is not None else ():
        if gateway.address.split("/")[0] in seen:
            continue
        seen.add(gateway.address.split("/")[0])
        out.append(Floating(gateway.address, gateway.interface or default_device))
    return tuple(out)


def advert_address(virtual_router_id: int, family: int) -> str:
    """The one address the adverts carry: derived from the VRID only, so both nodes agree
    whatever their services; link-local (IPv4) or in a made-up unique-local prefix (IPv6,
    "pacslb" in hex), on lo with host scope."""
    if family == 6:
        return f"fd70:6163:736c:6200::{virtual_router_id:x}/128"
    return f"169.254.{virtual_router_id}.1/32"


def _advert_int(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def render(
    config: c.Config, paths: KeepalivedPaths, source: str, addresses: tuple[Floating, ...]
) -> str:
    """keepalived.conf for this node. `source`: the address adverts are sent from
    (node.ha.address, or the interface's first address, which the shell looks up)."""
    ha = config.node.ha
    if ha is None or not ha.interface or ha.secret is None:
        raise ValueError("node.ha is not complete (validate.ha_problems says what is missing)")
    version = vrrp_version(ha.advert_int)
    if ipaddress.ip_address(source).version == 6:
        version = 3  # keepalived runs IPv6 instances as VRRPv3 whatever is asked
    lines = [
        "# Written by pacslb from node.ha and the virtual services; edits are overwritten.",
        "global_defs {",
        "    # No script runs; named so that a reload does not warn of a missing script user.",
        "    script_user root",
        f'    vrrp_notify_fifo "{paths.notify_fifo}"',
        "    fifo_write_vrrp_states_on_reload",
        "}",
        "",
        "# A non-zero value puts this node in FAULT: priority 0, the peer takes over at once.",
        f"track_file {TRACK_FILE} {{",
        f'    file "{paths.release_file}"',
        "    weight 0",
        "    init_file 0",
        "}",
        "",
        f"vrrp_instance {INSTANCE} {{",
        "    state BACKUP",
        *([] if ha.preempt else ["    nopreempt"]),
        f"    interface {ha.interface}",
        f"    virtual_router_id {ha.virtual_router_id}",
        f"    priority {ha.priority}",
        f"    advert_int {_advert_int(ha.advert_int)}",
        f"    version {version}",
        f"    unicast_src_ip {source}",
        "    unicast_peer {",
        *(f"        {peer}" for peer in ha.peers),
        "    }",
    ]
    if version == 2:
        lines += [
            "    authentication {",
            "        auth_type PASS",
            f"        auth_pass {auth_pass(ha.secret)}",
            "    }",
        ]
    else:
        lines.append("    # VRRPv3 (sub-second adverts) has no authentication (RFC 5798 §9).")
    others = sorted({a.device for a in addresses} - {ha.interface})
    if others:  # a link of ours that is down (the real servers' side) is a FAULT as well
        lines += ["    track_interface {", *(f"        {d}" for d in others), "    }"]
    lines += [
        "    track_file {",
        f"        {TRACK_FILE} weight 0",
        "    }",
        f"    garp_master_delay {GARP_MASTER_DELAY}",
        f"    garp_master_repeat {GARP_MASTER_REPEAT}",
        f"    garp_master_refresh {GARP_MASTER_REFRESH}",
        "    # The adverts carry only this fixed address, the same on both nodes (VRRPv3 needs",
        "    # one): held on lo, host scope, it is never seen on the network.",
        "    virtual_ipaddress {",
        f"        {advert_address(ha.virtual_router_id, ipaddress.ip_address(source).version)}"
        " dev lo scope host",
        "    }",
        "    # Not in the adverts (see core/keepalived.py): a VIP list that differs between the",
        "    # nodes while a revision is replicated must not make either ignore the other.",
        "    virtual_ipaddress_excluded {",
        *(f"        {a.cidr} dev {a.device}" for a in addresses),
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


# --- the notify FIFO ----------------------------------------------------------------------

_NOTIFY = re.compile(r'^(INSTANCE|GROUP) "([^"]*)" (\w+)(?: (\d+))?$')
ROLE_OF_STATE = {
    "MASTER": Role.ACTIVE,
    "BACKUP": Role.PASSIVE,
    "FAULT": Role.FAULT,
    "STOP": Role.STOPPED,
    "DELETED": Role.STOPPED,
}


@dataclass(frozen=True, slots=True)
class VrrpState:
    """One line of the notify FIFO: `INSTANCE "pacslb" MASTER 150`."""

    state: str
    priority: int | None

    @property
    def role(self) -> Role:
        return ROLE_OF_STATE[self.state]


def parse_notify(line: str) -> VrrpState | None:
    """Our instance's state change, or None (another instance or group, a priority-change
    or MASTER_RX_LOWER_PRI notice, a line that is not keepalived's)."""
    found = _NOTIFY.match(line.strip())
    if found is None:
        return None
    kind, name, state, priority = found.groups()
    if kind != "INSTANCE" or name != INSTANCE or state not in ROLE_OF_STATE:
        return None
    return VrrpState(state, int(priority) if priority is not None else None)
