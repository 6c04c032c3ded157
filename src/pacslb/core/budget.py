"""Connection budgets: how many client connections each l7 service may hold in one proxy worker,
so that one flooded VIP cannot take the descriptors every other VIP needs (issue 14 item 6).

A worker has one descriptor limit (RLIMIT_NOFILE) for all its services. Without budgets, 5,000
connections to one l7-tcp VIP took a worker to 19,995 of its 20,000 descriptors and a DICOM VIP
beside it failed. HAProxy answers this with `maxconn` per frontend: at its limit a frontend
stops accepting and the kernel's accept queue holds the clients until a connection closes.

The default budget (a service's `max_connections: 0`) is a fair share of the descriptors:

    budget = (limit - reserve - explicit) / services without a budget of their own / cost

- `reserve`: descriptors the worker keeps for its own use: standard streams, the event loop's
  own (epoll, signal and wake-up descriptors), the control socket and its clients, log files,
  one listening socket and one epoll per listener, and some room for a listener being replaced
  (bound before the old one closes): 64 + 2 per listener.
- `explicit`: what services with their own `max_connections` take (budget x cost).
- `cost`: descriptors one client connection holds at most. l7-tcp with splice: 6 (the client,
  the real server, and one pipe -- two descriptors -- per direction); l7-tcp without splice
  and l7-http: 2 (the client and one connection to a real server; a pooled idle upstream
  connection was made by a client that held it, so the pool never holds more than the peak).

A fair share guarantees every service its part whatever the others do; an operator who wants
another split sets `max_connections` per service. Pure: the limit comes in as a number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pacslb.config import Mode

RESERVE_BASE = 64  # the worker's own descriptors (see the module docstring)
RESERVE_PER_LISTENER = 2  # the listening socket and its epoll
SPLICE_COST = 6  # client + server + two pipes of two descriptors
PLAIN_COST = 2  # client + server
COMFORTABLE = 1000  # a default budget below this many connections is worth a warning
SUGGESTED_LIMIT = 65536  # what to set when the limit is low (systemd's LimitNOFILE=)


@dataclass(frozen=True, slots=True)
class ServiceNeed:
    """What a budget is computed from, for one l7 service."""

    label: str
    mode: Mode
    listeners: int  # listening ports of the service in this worker
    max_connections: int = 0  # 0: the default share


class ServiceView(Protocol):
    """What budgets read of a service: a config's VirtualService or a Plan's PlanService."""

    @property
    def label(self) -> str: ...
    @property
    def mode(self) -> Mode: ...
    @property
    def ports(self) -> Sequence[int]: ...
    @property
    def max_connections(self) -> int: ...


def service_needs(services: Iterable[ServiceView]) -> list[ServiceNeed]:
    """The l7 services as budgets see them: one listener per distinct port of the service's
    VIP. The one count for both the control process (its warning at start, from the config)
    and a worker (its budgets, from its Plan)."""
    return [
        ServiceNeed(s.label, s.mode, len(set(s.ports)), s.max_connections)
        for s in services
        if not s.mode.is_kernel
    ]


def connection_cost(mode: Mode, splice: bool) -> int:
    """Descriptors one client connection of this mode holds at most."""
    return SPLICE_COST if mode in (Mode.L7_TCP, Mode.L7_DICOM) and splice else PLAIN_COST


def reserve(services: Sequence[ServiceNeed]) -> int:
    return RESERVE_BASE + RESERVE_PER_LISTENER * sum(s.listeners for s in services)


def connection_budgets(limit: int, services: Sequence[ServiceNeed], splice: bool) -> dict[str, int]:
    """Each service's budget of client connections in a worker whose descriptor limit is
    `limit` (at least 1 each: a service that can take no connection at all helps nobody)."""
    explicit = sum(
        s.max_connections * connection_cost(s.mode, splice)
        for s in services
        if s.max_connections > 0
    )
    shared = [s for s in services if s.max_connections <= 0]
    room = max(0, limit - reserve(services) - explicit)
    share = room // len(shared) if shared else 0
    return {
        s.label: s.max_connections
        if s.max_connections > 0
        else max(1, share // connection_cost(s.mode, splice))
        for s in services
    }


def limit_advice(limit: int, services: Sequence[ServiceNeed], splice: bool) -> str | None:
    """What to tell an operator when `limit` is low for these services (None: it is not):
    which budget is small, and what to set."""
    if not services:
        return None
    budgets = connection_budgets(limit, services, splice)
    need = reserve(services) + sum(
        connection_cost(s.mode, splice) * (s.max_connections or COMFORTABLE) for s in services
    )
    if need <= limit:
        return None
    small = [
        f"{s.label} {budgets[s.label]}"
        for s in services
        if s.max_connections <= 0 and budgets[s.label] < COMFORTABLE
    ]
    over = "" if small else "; the services' max_connections together need more"
    suggested = max(SUGGESTED_LIMIT, 1 << (need - 1).bit_length())
    return (
        f"the descriptor limit (RLIMIT_NOFILE) is {limit}, low for {len(services)} l7 "
        f"service(s): {need} needed for {COMFORTABLE} connections each"
        + (f"; connection budgets: {', '.join(small)}" if small else over)
        + f". Set LimitNOFILE={suggested} in the pacslb systemd unit (or `ulimit -n "
        f"{suggested}` before `pacslb run`; the hard limit is what counts)"
    )
