"""Hosts in network namespaces for the layer 4 tests: a client, a load balancer and real
servers on bridges, addressed from 198.18.0.0/15 (the benchmarking range), never routed off
the machine. Every namespace made here is deleted by `close()`, even when a test fails.

Two shapes, as the deployment guide draws them:
- `one_arm()`: one segment 198.18.0.0/24 (client .10, LB .2, real servers .11-.13) — Direct
  Routing, the guide's recommendation; the real servers hold the VIP on `lo` with the ARP
  problem solved (arp_ignore=1, arp_announce=2), as `pacslb realserver` prints.
- `two_arm()`: clients on 198.18.1.0/24 (client .10, LB .2), real servers on 198.18.2.0/24
  (LB .1 is their gateway for NAT; with `gateway=False` they have none, for SNAT).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_serial = itertools.count()


def require_root_and_nft() -> None:
    """Skip (with the reason) where these tests cannot run: CI is root and has nftables."""
    if os.geteuid() != 0:
        pytest.skip("network-namespace tests need root (CI runs them as root)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make test installs it as root)")


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    ns: str
    address: str  # its main address (first interface)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.ns, *argv, check=check)

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def mac(self, dev: str = "eth0") -> str:
        return str(json.loads(self.run("ip", "-j", "link", "show", "dev", dev))[0]["address"])

    def link_stats(self, dev: str = "eth0") -> dict[str, int]:
        info = json.loads(self.run("ip", "-j", "-s", "link", "show", "dev", dev))[0]
        return {
            "rx_packets": info["stats64"]["rx"]["packets"],
            "rx_bytes": info["stats64"]["rx"]["bytes"],
            "tx_packets": info["stats64"]["tx"]["packets"],
        }


class Topology:
    def __init__(self) -> None:
        self.tag = f"plb{os.getpid() % 100000}x{next(_serial)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._ns(self.switch)

    def _ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def bridge(self, name: str) -> None:
        sh("ip", "-n", self.switch, "link", "add", name, "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", name, "up")

    def host(self, name: str, *links: tuple[str, str]) -> Host:
        """A namespace with one interface per (bridge, address/prefix): eth0, eth1, ..."""
        ns = f"{self.tag}-{name}"
        self._ns(ns)
        for i, (bridge, cidr) in enumerate(links):
            port = f"{name}{i}"
            sh(
                "ip",
                "link",
                "add",
                port,
                "netns",
                self.switch,
                "type",
                "veth",
                "peer",
                "name",
                f"eth{i}",
                "netns",
                ns,
            )
            sh("ip", "-n", self.switch, "link", "set", port, "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", f"eth{i}")
            sh("ip", "-n", ns, "link", "set", f"eth{i}", "up")
        host = Host(ns, links[0][1].split("/")[0])
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
        for name in reversed(self._namespaces):
            sh("ip", "netns", "pids", name, check=False)
            sh("ip", "netns", "del", name, check=False)


def real_server_setup(host: Host, vip: str) -> None:
    """What `pacslb realserver --vip VIP --os linux` tells an operator to do, for DR."""
    if ":" in vip:  # IPv6: neighbour discovery answers only for the interface's own addresses
        host.run("ip", "-6", "addr", "add", f"{vip}/128", "dev", "lo")
        return
    host.run("ip", "addr", "add", f"{vip}/32", "dev", "lo")
    host.sysctl("net.ipv4.conf.all.arp_ignore", "1")
    host.sysctl("net.ipv4.conf.all.arp_announce", "2")


V6_PREFIX = "2001:2::"  # the IPv6 benchmarking range (RFC 5180), as 198.18.0.0/15 is for IPv4


def v6(address: str) -> str:
    """198.18.X.Y -> 2001:2:X::Y: the same host in the IPv6 benchmarking range."""
    _, _, x, y = address.split(".")
    return f"2001:2:{x}::{y}" if x != "0" else f"{V6_PREFIX}{y}"


def add_ipv6(topo: Topology, gateway: str | None = None) -> None:
    """Mirror every IPv4 address of the topology in IPv6 (see v6()); real servers get a
    default route via `gateway` when given (two-arm NAT)."""
    for name, host in topo.hosts.items():
        for link in json.loads(host.run("ip", "-j", "-4", "addr", "show")):
            for a in link.get("addr_info", []):
                if a["local"].startswith("198.18."):
                    cidr = f"{v6(a['local'])}/64"
                    host.run("ip", "-6", "addr", "add", cidr, "dev", link["ifname"], "nodad")
        if gateway and name.startswith("rs"):
            host.run("ip", "-6", "route", "add", "default", "via", gateway)


GATEWAY = "198.18.2.1"  # the real servers' default gateway in the two-arm shapes
HA_GATEWAY = GATEWAY  # in ha_two_arm no node owns it: the HA pair floats it (node.ha.gateways)


def _lbs(pair: bool) -> list[str]:
    return ["lb1", "lb2"] if pair else ["lb"]


@contextlib.contextmanager
def one_arm(
    servers: int = 2, vip: str = "198.18.0.100", dr: bool = True, pair: bool = False
) -> Iterator[Topology]:
    """Client .10, the load balancer .2 (`pair`: lb1 .2 and lb2 .3), real servers .11-."""
    require_root_and_nft()
    topo = Topology()
    try:
        topo.bridge("br0")
        topo.host("client", ("br0", "198.18.0.10/24"))
        for i, name in enumerate(_lbs(pair)):
            topo.host(name, ("br0", f"198.18.0.{2 + i}/24"))
        for i in range(1, servers + 1):
            rs = topo.host(f"rs{i}", ("br0", f"198.18.0.{10 + i}/24"))
            if dr:
                real_server_setup(rs, vip)
        yield topo
    finally:
        topo.close()


@contextlib.contextmanager
def two_arm(servers: int = 2, gateway: bool = True, pair: bool = False) -> Iterator[Topology]:
    """Clients on 198.18.1.0/24, real servers on 198.18.2.0/24 behind the load balancer
    (198.18.1.2 / 198.18.2.1, their gateway). `pair`: lb1 198.18.1.2 / 198.18.2.2 and lb2
    198.18.1.3 / 198.18.2.3, and the gateway 198.18.2.1 is held by neither until the HA pair
    floats it, as the guide requires for NAT."""
    require_root_and_nft()
    topo = Topology()
    try:
        topo.bridge("br0")
        topo.bridge("br1")
        topo.host("client", ("br0", "198.18.1.10/24"))
        for i, name in enumerate(_lbs(pair)):
            inside = f"198.18.2.{2 + i}" if pair else GATEWAY
            topo.host(name, ("br0", f"198.18.1.{2 + i}/24"), ("br1", f"{inside}/24"))
        for i in range(1, servers + 1):
            rs = topo.host(f"rs{i}", ("br1", f"198.18.2.{10 + i}/24"))
            if gateway:
                rs.run("ip", "route", "add", "default", "via", GATEWAY)
        # The client reaches the real servers' subnet only through the LB's VIP.
        yield topo
    finally:
        topo.close()


def ha_one_arm(
    servers: int = 2, vip: str = "198.18.0.100", dr: bool = True
) -> contextlib.AbstractContextManager[Topology]:
    """one_arm() with two load balancers, lb1 and lb2 (the VIP floats between them)."""
    return one_arm(servers, vip, dr, pair=True)


def ha_two_arm(
    servers: int = 2, gateway: bool = True
) -> contextlib.AbstractContextManager[Topology]:
    """two_arm() with two load balancers, lb1 and lb2, and a floating gateway."""
    return two_arm(servers, gateway, pair=True)


def named_servers(topo: Topology, ports: Sequence[int]) -> None:
    """On every rs*: a server on `ports` that greets with its name and echoes (netns/peer.py)."""
    for name, host in topo.hosts.items():
        if name.startswith("rs"):
            argv = [sys.executable, str(ROOT / "tests/netns/peer.py"), "serve", name]
            host.popen([*argv, *map(str, ports)], stdout=subprocess.DEVNULL)
    for name, host in topo.hosts.items():
        if name.startswith("rs"):
            for port in ports:
                host.run(
                    sys.executable,
                    str(ROOT / "tests/netns/peer.py"),
                    "wait",
                    "127.0.0.1",
                    str(port),
                )


class Client:
    """Drives `peer.py client` in the client's namespace (see its docstring)."""

    def __init__(self, host: Host, vip: str, port: int) -> None:
        argv = [sys.executable, str(ROOT / "tests/netns/peer.py"), "client", vip, str(port)]
        self.proc = host.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **cmd: object) -> object:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the client driver exited")
        return json.loads(line)

    def open(self, n: int) -> list[str]:
        return list(self.ask(op="open", n=n))  # type: ignore[call-overload]

    def once(self, n: int) -> list[str]:
        return list(self.ask(op="once", n=n))  # type: ignore[call-overload]

    def ping(self, within: float | None = None) -> list[str]:
        """Each held connection's answer; `within`: all at once, waiting that long at most."""
        if within is None:
            return list(self.ask(op="ping"))  # type: ignore[call-overload]
        return list(self.ask(op="ping", within=within))  # type: ignore[call-overload]

    def bulk(self, nbytes: int) -> int:
        return int(self.ask(op="bulk", bytes=nbytes))  # type: ignore[call-overload]

    def peer(self) -> str:
        return str(self.ask(op="peer"))

    def close(self) -> None:
        self.ask(op="close")
