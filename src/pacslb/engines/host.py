"""What the kernel engine asks of the host: routes, neighbours, link addresses, sysctls.

Read with iproute2's JSON output (`ip -j`): a few calls per config change, none per packet, so
a process each is cheap and keeps us off netlink details. Only the kernel engine uses this.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacslb.errors import EngineError

RESOLVE_WAIT = 1.0  # seconds to wait for an ARP/ND answer from a real server


@dataclass(frozen=True, slots=True)
class Route:
    device: str
    gateway: str | None
    local: bool  # the address is this host's own


class Host:
    def ip(self, *args: str) -> Any:
        try:
            done = subprocess.run(
                ["ip", "-j", *args], capture_output=True, text=True, check=False, timeout=5
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineError(f"ip {' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            raise EngineError(f"ip {' '.join(args)}: {done.stderr.strip()}")
        return json.loads(done.stdout) if done.stdout.strip() else []

    def route(self, address: str) -> Route:
        found = self.ip("route", "get", address)
        if not found:
            raise EngineError(f"no route to {address}")
        r = found[0]
        return Route(r.get("dev", ""), r.get("gateway"), r.get("type") == "local")

    def link_mac(self, device: str) -> str:
        links = self.ip("link", "show", "dev", device)
        if not links or not links[0].get("address"):
            raise EngineError(f"interface {device} has no MAC address")
        return str(links[0]["address"])

    def neighbours(self) -> dict[str, str]:
        """Address -> MAC for every reachable (or recently reachable) neighbour."""
        out: dict[str, str] = {}
        for n in self.ip("neigh", "show"):
            states = set(n.get("state", []))
            if n.get("lladdr") and not states & {"FAILED", "INCOMPLETE"}:
                out[n["dst"]] = n["lladdr"]
        return out

    def resolve(self, addresses: list[str]) -> dict[str, str]:
        """MACs of on-link `addresses`, sending each a datagram first if it is not known yet
        (the kernel then asks ARP/ND); waits up to RESOLVE_WAIT seconds in all."""
        known = self.neighbours()
        missing = [a for a in addresses if a not in known]
        for address in missing:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with (
                contextlib.suppress(OSError),
                socket.socket(family, socket.SOCK_DGRAM) as s,
            ):
                s.sendto(b"", (address, 9))  # discard port: nothing answers, ARP is enough
        deadline = time.monotonic() + RESOLVE_WAIT
        while missing and time.monotonic() < deadline:
            time.sleep(0.02)
            known = self.neighbours()
            missing = [a for a in missing if a not in known]
        return {a: known[a] for a in addresses if a in known}

    def addresses(self) -> set[str]:
        out: set[str] = set()
        for link in self.ip("addr", "show"):
            for a in link.get("addr_info", []):
                out.add(a["local"])
        return out

    def add_address(self, address: str, device: str) -> None:
        bits = 128 if ipaddress.ip_address(address).version == 6 else 32
        self.ip("addr", "add", f"{address}/{bits}", "dev", device)

    def del_address(self, address: str, device: str) -> None:
        bits = 128 if ipaddress.ip_address(address).version == 6 else 32
        with contextlib.suppress(EngineError):  # already gone: fine
            self.ip("addr", "del", f"{address}/{bits}", "dev", device)

    def enable_forwarding(self, version: int) -> bool:
        """Turn on IP forwarding (NAT needs it); True when it was off."""
        path = Path(
            "/proc/sys/net/ipv4/ip_forward"
            if version == 4
            else "/proc/sys/net/ipv6/conf/all/forwarding"
        )
        try:
            if path.read_text().strip() == "1":
                return False
            path.write_text("1\n")
        except OSError as exc:
            raise EngineError(f"cannot enable forwarding ({path}): {exc}") from exc
        return True

    def conntrack_marks(self, marks: set[int]) -> dict[int, int]:
        """Open connections per conntrack mark, for the marks asked (the WLC loop's input).

        Counts the states IPVS calls active (established, or still opening); closing ones
        are on their way out and do not load the server."""
        counts = dict.fromkeys(marks, 0)
        try:
            with open("/proc/net/nf_conntrack", encoding="ascii", errors="replace") as f:
                for line in f:
                    mark = _field(line, " mark=")
                    if mark is None or int(mark) not in counts:
                        continue
                    if " tcp " in line and not any(
                        s in line for s in (" ESTABLISHED ", " SYN_SENT ", " SYN_RECV ")
                    ):
                        continue
                    counts[int(mark)] += 1
        except FileNotFoundError:
            pass  # no conntrack module loaded yet: no connections
        return counts


def _field(line: str, name: str) -> str | None:
    at = line.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = line.find(" ", start)
    return line[start:] if end < 0 else line[start:end]
