"""What transparent l7 services (`source: client`) need of the host, as values and text.

The proxy's upstream socket is bound to the client's address (proxy/source.py), so the real
server answers to the client's address, through the load balancer (its gateway). Such a
packet is not addressed to this host: without help the kernel would forward it on (or drop
it), and the proxy's socket would never see its SYN-ACK. The help, as the kernel's TPROXY
documentation (Documentation/networking/tproxy.rst) gives it:

- nftables marks, in prerouting, every TCP packet that belongs to a transparent socket
  (`socket transparent 1`), in a table of pacslb's own (`inet pacslb_tproxy`, never the l4
  tables `pacslb`);
- a policy rule sends marked packets to a routing table whose only route is `local` for
  every address, so they are delivered to this host, where the socket takes them.

The mark is one bit, the top one: the l4 engine's NAT server ids (its packet and conntrack
marks) are 31-bit, so they never collide with it, and the rule matches the bit with a mask
whatever other bits someone else sets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pacslb.core.plan import Plan

TABLE = "pacslb_tproxy"
MARK = 0x80000000
ROUTE_TABLE = 21584  # 0x5450, "TP": the routing table with the local route
PRIORITY = 21584  # the policy rule's preference: before `main` (32766), and ours to find
CHAIN = "prerouting"


@dataclass(frozen=True, slots=True)
class RoutingStep:
    """One piece of the policy routing for an IP version, with how to check and undo it."""

    version: int  # 4 | 6
    add: tuple[str, ...]  # `ip` arguments
    remove: tuple[str, ...]
    what: str  # in words, for doctor and events


def families(plan: Plan) -> frozenset[int]:
    """The IP versions of the upstream connections of transparent services (their real
    servers' and fallbacks'), i.e. the versions whose replies must come back to the proxy."""
    out: set[int] = set()
    for svc in plan.services:
        if svc.source != "client" or svc.mode.is_kernel:
            continue
        addresses = [rs.address for rs in svc.real_servers]
        if svc.fallback is not None:
            addresses.append(svc.fallback.address)
        out.update(ipaddress.ip_address(a).version for a in addresses)
    return frozenset(out)


def nft_script(wanted: bool) -> str:
    """One transaction that leaves the table as wanted, whatever was there: declared (a no-op
    when it exists), deleted, and made anew when wanted."""
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}"]
    if wanted:
        lines += [
            f"table inet {TABLE} {{",
            f"\tchain {CHAIN} {{",
            "\t\ttype filter hook prerouting priority mangle; policy accept;",
            "\t\t# replies to the proxy's transparent upstream sockets: delivered here",
            f"\t\t{MARKING}",
            "\t}",
            "}",
        ]
    return "\n".join(lines) + "\n"


MARKING = f"meta l4proto tcp socket transparent 1 meta mark set meta mark | {MARK:#x}"


def nft_command() -> str:
    """The marking as one shell command (doctor's fix)."""
    return (
        f"nft 'add table inet {TABLE}; add chain inet {TABLE} {CHAIN} {{ type filter hook "
        f"prerouting priority mangle; policy accept; }}; add rule inet {TABLE} {CHAIN} "
        f"{MARKING}'"
    )


def rule_step(version: int) -> RoutingStep:
    fam = f"-{version}"
    mark = f"{MARK:#x}/{MARK:#x}"
    return RoutingStep(
        version,
        (fam, "rule", "add", "fwmark", mark, "lookup", str(ROUTE_TABLE), "pref", str(PRIORITY)),
        (fam, "rule", "del", "pref", str(PRIORITY)),
        f"ip {fam} rule add fwmark {mark} lookup {ROUTE_TABLE} pref {PRIORITY}",
    )


def route_step(version: int) -> RoutingStep:
    fam = f"-{version}"
    everything = "0.0.0.0/0" if version == 4 else "::/0"
    return RoutingStep(
        version,
        (fam, "route", "replace", "local", everything, "dev", "lo", "table", str(ROUTE_TABLE)),
        (fam, "route", "flush", "table", str(ROUTE_TABLE)),
        f"ip {fam} route add local {everything} dev lo table {ROUTE_TABLE}",
    )


def has_rule(rules: list[dict[str, object]]) -> bool:
    """Whether `ip -j rule show` lists our rule (by its preference, mark and table)."""
    for r in rules:
        if r.get("priority") != PRIORITY:
            continue
        table = str(r.get("table", ""))
        mark = str(r.get("fwmark", ""))
        if table == str(ROUTE_TABLE) and mark and int(mark, 0) & MARK:
            return True
    return False


def has_route(routes: list[dict[str, object]], version: int) -> bool:
    """Whether `ip -j route show table ROUTE_TABLE` lists the local default route on lo."""
    return any(
        r.get("type") == "local" and r.get("dst") == "default" and r.get("dev") == "lo"
        for r in routes
    )


def has_marking(listing: str) -> bool:
    """Whether `nft list table inet pacslb_tproxy` shows the marking rule."""
    return "socket transparent 1" in listing and f"{MARK:#x}" in listing


# /proc/net/tcp states that still need replies delivered: all but LISTEN (0A), TIME_WAIT (06)
# and CLOSE (07).
_DONE_STATES = frozenset({"06", "07", "0A"})


def foreign_sockets(proc_net_tcp: str, local: set[str]) -> int:
    """How many TCP sockets in a /proc/net/tcp or tcp6 listing are bound to an address that
    is not one of this host's (`local`): the proxy's transparent upstream connections, still
    open. Their replies need the return path: it stays until they are gone."""
    count = 0
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] in _DONE_STATES:
            continue
        address = _proc_address(fields[1].rsplit(":", 1)[0])
        if address is not None and address not in local:
            count += 1
    return count


def _proc_address(hexed: str) -> str | None:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) order."""
    try:
        raw = bytes.fromhex(hexed)
    except ValueError:
        return None
    if len(raw) not in (4, 16):
        return None
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
