"""A proxy worker's side of sharing source-IP persistence entries: what changed since a cursor
(for the other workers and the peer node), and entries learnt from them.

Wire form of an entry (the worker's control socket and ProxyEngine.export_sticky /
import_sticky): {"service": label, "key": masked client address, "server": label, "ttl": s};
a worker's export adds "open": whether the entry has connections now (its ttl is then the
service's timeout, and it lives on as long as they do).
A worker's cursor is {service: [table id, version]}: a table rebuilt by a new Plan (its
persistence settings changed) has a new id and is listed from its start again.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pacslb.proxy.runtime import ServiceRuntime

Cursor = dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class SharedEntry:
    service: str
    key: str
    server: str
    ttl: float

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "key": self.key, "server": self.server, "ttl": self.ttl}


def is_address(key: str) -> bool:
    try:
        ipaddress.ip_address(key)
    except ValueError:
        return False
    return True


def _is_key(key: str) -> bool:
    """A masked client address (source-ip), or a calling AE title (calling-ae: PS3.5 §6.2,
    at most 16 printable ASCII characters, no backslash)."""
    title = len(key) <= 16 and key.isascii() and key.isprintable() and "\\" not in key
    return title or is_address(key)


def parse_entries(raw: Any) -> list[SharedEntry]:
    """Entries from their wire form; ValueError naming the first bad one (nothing is taken
    from a list with a bad entry)."""
    if not isinstance(raw, list):
        raise ValueError(f"sticky entries must be a list, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        where = f"sticky entry [{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: must be an object, got {item!r}")
        service, key, server, ttl = (item.get(k) for k in ("service", "key", "server", "ttl"))
        for name, value in (("service", service), ("key", key), ("server", server)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}.{name}: must be a non-empty string, got {value!r}")
        if not _is_key(str(key)):
            raise ValueError(
                f"{where}.key: not an IP address nor an AE title (calling-ae): {key!r}"
            ) from None
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
            raise ValueError(f"{where}.ttl: must be a number of seconds, got {ttl!r}")
        if ttl < 0:
            raise ValueError(f"{where}.ttl: must not be negative, got {ttl!r}")
        out.append(SharedEntry(str(service), str(key), str(server), float(ttl)))
    return out


def export(
    runtimes: Mapping[str, ServiceRuntime], since: Mapping[str, Any], now: float | None = None
) -> tuple[list[dict[str, Any]], Cursor]:
    """Entries of every source-ip or calling-ae service changed after cursor `since`, and the
    next cursor."""
    now = time.monotonic() if now is None else now
    out: list[dict[str, Any]] = []
    cursor: Cursor = {}
    for label, runtime in runtimes.items():
        table = runtime.balancer.sticky
        if table is None:
            continue
        token, version = id(table) & 0x7FFFFFFF, 0
        seen = since.get(label)
        if isinstance(seen, list) and len(seen) == 2 and seen[0] == token:
            version = int(seen[1])
        changes, cursor_version = table.changes(version, now)
        cursor[label] = [token, cursor_version]
        out += [
            {
                "service": label,
                "key": c.key,
                "server": c.server,
                "ttl": round(c.ttl, 3),
                "open": c.open,
            }
            for c in changes
        ]
    return out, cursor


def learn(
    runtimes: Mapping[str, ServiceRuntime], entries: list[SharedEntry], now: float | None = None
) -> tuple[int, list[SharedEntry]]:
    """Give each entry to its service's table (an existing live entry is kept); returns how many
    were taken, and the entries of services this worker does not run yet (a spare before its
    first Plan keeps them for then). Entries of a service without such persistence, or
    naming a server the service does not have, are dropped."""
    now = time.monotonic() if now is None else now
    taken = 0
    waiting = []
    for entry in entries:
        runtime = runtimes.get(entry.service)
        if runtime is None:
            waiting.append(entry)
            continue
        table = runtime.balancer.sticky
        if table is None or runtime.server(entry.server) is None or entry.ttl <= 0:
            continue  # (a ttl of 0: it expired on its way here)
        try:
            taken += table.learn(entry.key, entry.server, entry.ttl, now)
        except ValueError:
            continue  # an AE title for a source-ip table (or the reverse): not this kind
    return taken, waiting
