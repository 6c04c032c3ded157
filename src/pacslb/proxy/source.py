"""The source address of the proxy's connections to real servers (a service's `source:`).

- `auto`: the kernel picks the load balancer's own address towards the server (no bind, no
  extra system call: the default costs nothing).
- `vip` or a fixed address: bound to it before the connect, with IP_BIND_ADDRESS_NO_PORT so
  that the port is chosen at connect time for the whole 4-tuple. A plain bind((addr, 0))
  reserves a port per socket for every destination, and would run out at ~28k connections
  (the ephemeral range) however many servers there are.
- `client` (transparent, TPROXY): IP_TRANSPARENT (IPV6_TRANSPARENT) lets the socket bind the
  client's own address, which is not this host's. The real servers then see the client; their
  replies come back to this socket only through the policy routing and the nftables marking
  that engines/tproxy.py installs (docs/transparent.md). Needs CAP_NET_ADMIN.

A client on a real server's own subnet (hairpin: a RIS server sending to the archive's VIP
from the archives' VLAN) cannot be transparent either: the server would answer it directly,
bypassing the load balancer, and the connection would time out. Such a connection takes the
load balancer's own address, said once per service (the subnets are this host's, read at
each change of the transparent services' servers: see `segments_for`).

A client of another family than the server (an IPv4 client on a dual-stack VIP in front of an
IPv6 server) cannot be transparent: that connection takes the kernel's choice and the service
says so once in the log (core/validate.py already refuses the configurations where every
connection would be such).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from pacslb.core.plan import PlanService
from pacslb.proxy import notices

__all__ = [
    "SourceError",
    "bind_address",
    "bind_failed",
    "host_networks",
    "open_upstream",
    "segments_for",
    "set_segments",
    "transparent_servers",
    "transparent_timed_out",
    "upstream_socket",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger(__name__)

# Linux values (include/uapi/linux/in.h, in6.h); Python names them only on some versions.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

_warned: set[tuple[str, str]] = set()  # (service, what) already said in this process
# transparent services' real server address -> this host's subnet it is on (set_segments)
_segments: dict[str, Network] = {}


def bind_address(service: PlanService, client_ip: str, server: str) -> str:
    """The local address a connection to `server` binds to; "" = the kernel's choice."""
    source = service.source
    if source == "auto":
        return ""
    if source == "client":
        address = _unmapped(client_ip)
        if _loopback(address) and not _loopback(server):
            # A client on this host (loopback): its address cannot leave the host (connect
            # fails with EINVAL, charged to the server), and this host is what it is anyway.
            return ""
        segment = _segments.get(server)
        if segment is not None and _on(address, server, segment):
            _warn_once(
                service.label,
                "hairpin",
                f"{service.label}: client {address} is on real server {server}'s own subnet "
                f"({segment}), which would answer it directly, not through the load balancer: "
                "such clients' connections take the load balancer's own address",
            )
            return ""
    elif source == "vip":
        address = service.vip
    else:
        address = source
    if (":" in address) != (":" in server):
        _warn_once(
            service.label,
            "family",
            f"{service.label}: source {source} ({address}) and real server {server} are of "
            "different address families: such connections take the load balancer's own "
            "address (the server sees the load balancer, not the client)",
        )
        return ""
    return address


def transparent_servers(services: Iterable[PlanService]) -> tuple[str, ...]:
    """The real server (and fallback) addresses of the transparent services, sorted."""
    out: set[str] = set()
    for svc in services:
        if svc.source == "client" and not svc.mode.is_kernel:
            out.update(rs.address for rs in svc.real_servers)
            if svc.fallback is not None:
                out.add(svc.fallback.address)
    return tuple(sorted(out))


def segments_for(servers: Iterable[str], networks: Iterable[Network]) -> dict[str, Network]:
    """Each server address -> the narrowest of this host's subnets holding it (a server
    behind a router is on none: its clients cannot be told apart from here)."""
    nets = sorted(networks, key=lambda n: n.prefixlen, reverse=True)
    out: dict[str, Network] = {}
    for server in servers:
        address = ipaddress.ip_address(server)
        found = next((n for n in nets if n.version == address.version and address in n), None)
        if found is not None and found.prefixlen < found.max_prefixlen:
            out[server] = found
    return out


def set_segments(segments: dict[str, Network]) -> None:
    global _segments
    _segments = segments
    _hairpins.clear()


# (client, server) -> whether the client is on the server's subnet: parsing the address costs
# microseconds, on every request of a keep-alive connection; bounded (cleared when full).
_hairpins: dict[tuple[str, str], bool] = {}
MAX_HAIRPINS = 8192


def _on(address: str, server: str, segment: Network) -> bool:
    known = _hairpins.get((address, server))
    if known is None:
        if len(_hairpins) >= MAX_HAIRPINS:
            _hairpins.clear()
        known = _hairpins[(address, server)] = ipaddress.ip_address(address) in segment
    return known


def host_networks(listing: list[dict[str, Any]]) -> list[Network]:
    """This host's subnets from `ip -j addr show`."""
    out: list[Network] = []
    for link in listing:
        for a in link.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                out.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return out


def upstream_socket(server: str, bind: str, transparent: bool) -> socket.socket:
    """A non-blocking TCP socket for a connection to `server`, bound to `bind` (unless "")
    before the connect; `transparent`: `bind` is the client's address, not this host's.

    Raises OSError (e.g. EPERM without CAP_NET_ADMIN, EADDRNOTAVAIL for a fixed address the
    host does not have yet); the socket is closed then."""
    v6 = ":" in server
    sock = socket.socket(
        socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM | _SOCK_NONBLOCK
    )
    if not _SOCK_NONBLOCK:
        sock.setblocking(False)
    if not bind:
        return sock
    try:
        if transparent:
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        # Linux 4.2+; elsewhere the bind takes a port at once (and the range limits).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((bind, 0))
    except OSError:
        sock.close()
        raise
    return sock


class SourceError(Exception):
    """The upstream socket could not be bound: the source's fault, not the server's."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def open_upstream(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], Any],
    target: tuple[str, int],
    bind: str,
    transparent: bool,
    tls: ssl.SSLContext | None,
) -> tuple[Any, Any]:
    """loop.create_connection() to `target`, from `bind` when set (see upstream_socket).

    "" keeps the plain call (the default costs nothing). Otherwise the socket is made, bound
    and connected here and then handed to the loop, which takes it over (uvloop detaches it
    when the transport closes, so closing it here after a failure is harmless)."""
    if not bind:
        return await loop.create_connection(factory, *target, ssl=tls)
    try:
        sock = upstream_socket(target[0], bind, transparent)
    except OSError as exc:
        raise SourceError(exc) from exc
    try:
        try:
            await loop.sock_connect(sock, target)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # no source port left: not the server's fault
                raise SourceError(exc) from exc
            raise
        return await loop.create_connection(
            factory, sock=sock, ssl=tls, server_hostname=target[0] if tls else None
        )
    except BaseException:
        sock.close()
        raise


def bind_failed(service: str, bind: str, exc: OSError) -> None:
    """Say once per service and error why its connections fail to bind (the client is then
    reset, as when no server is left): a fixed address not up yet, or no CAP_NET_ADMIN."""
    what = exc.strerror or str(exc)
    hint = ""
    if isinstance(exc, PermissionError):
        hint = " (source: client needs root or CAP_NET_ADMIN for IP_TRANSPARENT)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = (
            " (the address is not on this host, or every source port towards that server is "
            "in use: see net.ipv4.ip_local_port_range)"
        )
    _warn_once(service, f"bind {what}", f"{service}: cannot bind to {bind}: {what}{hint}")


def transparent_timed_out(service: str, server: str) -> None:
    """A connect from a client's address timed out: the usual cause is a server whose replies
    bypass the load balancer (its gateway), which its health checks, sent from the load
    balancer's own address, cannot show. Said once per service and server."""
    _warn_once(
        service,
        f"timeout {server}",
        f"{service}: a transparent connect (source: client) to {server} timed out: if it "
        "recurs, the server's replies to clients may not come back through the load balancer "
        "(its default gateway); `pacslb doctor` probes that (nat-route)",
    )


def _warn_once(service: str, what: str, message: str) -> None:
    """In the worker's log and, as an event, in the control process's (proxy/notices.py):
    an operator paged about clients that time out must find why in `pacslb events`."""
    if (service, what) not in _warned:
        _warned.add((service, what))
        log.warning("%s", message)
        notices.notice(message, service=service, key=f"source {service} {what}")


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def _unmapped(address: str) -> str:
    """An IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) as IPv4."""
    if address.startswith("::ffff:") and "." in address:
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
        if mapped is not None:
            return str(mapped)
    return address
