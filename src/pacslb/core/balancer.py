"""The decision for one virtual service: persistence first, then the scheduler.

This mirrors IPVS ip_vs_sched_persist() (net/netfilter/ipvs/ip_vs_core.c): a live template for
the client's masked address wins; otherwise the scheduler chooses and a template is created.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from pacslb.core.persistence import StickyTable
from pacslb.core.schedule import Scheduler, ServerView, SourceHash
from pacslb.core.state import AdminState, Health

__all__ = ["Balancer"]

# Admin states whose persistent clients keep coming: DRAIN takes no *new* clients, but those
# that already stick to it finish their work there (a study upload split across two archive
# nodes is worse than a slow drain).
_KEEPS_STICKY = frozenset({AdminState.ONLINE, AdminState.DRAIN})


class Balancer:
    def __init__(self, scheduler: Scheduler, sticky: StickyTable | None) -> None:
        self.scheduler = scheduler
        self.sticky = sticky
        self._hashes = isinstance(scheduler, SourceHash)

    def pick(self, candidates: Sequence[ServerView], client_ip: str, now: float) -> str | None:
        """The server for a new connection from `client_ip`, or None if none can take it.

        A successful pick is a placed connection: call `closed()` when it ends.
        """
        sticky = self.sticky
        if sticky is None:
            # Only source hashing reads the key; parsing the address costs ~5% of a connection.
            key = _flow_key(client_ip) if self._hashes else b""
            return self.scheduler.choose(candidates, key)

        server = sticky.lookup(client_ip, now)
        if server is not None:
            current = next((c for c in candidates if c.key == server), None)
            if (
                current is not None
                and current.admin in _KEEPS_STICKY
                and current.health is not Health.DOWN
            ):
                # Neither weight nor overload is checked: IPVS ip_vs_check_template() only
                # drops a template whose server is unavailable (or, with the non-default
                # expire_quiescent_template sysctl, has weight 0), and a persistent client
                # follows its template past the server's u_threshold.
                sticky.attach(client_ip, server, now)
                return server
            # Halted, down or removed: the client must not wait for a server that will not
            # answer, so the entry goes and the client is scheduled anew.
            sticky.forget(client_ip)

        key = b""
        if self._hashes:  # hashed by the masked address, or the AE title of calling-ae
            masked = sticky.mask(client_ip)
            key = _flow_key(masked) if sticky.keys_addresses else masked.encode()
        chosen = self.scheduler.choose(candidates, key)
        if chosen is not None:
            sticky.attach(client_ip, chosen, now)
        return chosen

    def closed(self, client_ip: str, now: float, server_key: str | None = None) -> None:
        """A connection placed by `pick()` ended (pass its server to ignore stale closes)."""
        if self.sticky is not None:
            self.sticky.detach(client_ip, now, server_key)

    def server_lost(self, key: str) -> int:
        """Forget the persistent clients of a halted or down server; returns how many."""
        return 0 if self.sticky is None else self.sticky.forget_server(key)


def _flow_key(client_ip: str) -> bytes:
    """The address bytes the source-hash scheduler hashes (an IPv4-mapped IPv6 address as the
    IPv4 client it is, so dual-stack and IPv4 listeners agree)."""
    addr = ipaddress.ip_address(client_ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.packed
    return addr.packed
