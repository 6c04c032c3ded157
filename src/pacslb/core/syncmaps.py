"""The kernel side of state sync, pure: nftables map elements as listed (JSON) -> MapEntry, and
MapEntry -> the nftables script that adds them on another node.

Which maps travel: a DR service's per-flow map (`{sid}_flows`) and every source-IP persistence
map (`{sid}_persist_<timeout>`, DR and NAT); names as core/nft.py makes them, the same on every
node for the same Plan. NAT flows themselves travel by conntrackd (core/conntrackd.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pacslb.core.nft import HANDSHAKE_TIMEOUT, TABLE
from pacslb.core.syncwire import Field, MapEntry

SYNCED_MAP = re.compile(r"^s[0-9a-f]{8}_(flows|persist_\d+)$")
RECENT_MAP = re.compile(r"^(s[0-9a-f]{8})_recent$")
BATCH = 2000  # elements per transaction: ~60 ms each (measured, add+delete+add), so an import
# of 20k entries never holds the nftables lock for long


def is_synced(name: str) -> bool:
    return SYNCED_MAP.match(name) is not None


def listed_in_round(name: str, complete: bool) -> bool:
    """Which maps a round lists: every synced map when `complete`; else the persistence maps
    and, for DR flows, only the `_recent` maps (the flows of the last few seconds)."""
    if complete:
        return is_synced(name)
    return RECENT_MAP.match(name) is not None or (is_synced(name) and "_persist_" in name)


def as_flow(entry: MapEntry) -> MapEntry:
    """A `_recent` map's entry as the peers' flow map takes it: still in its handshake (the
    next complete listing brings its real expiry)."""
    match = RECENT_MAP.match(entry.map)
    if match is None:
        return entry
    name = f"{match.group(1)}_flows"
    return MapEntry(
        entry.family, name, entry.key, entry.value, HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT
    )


def entry_of(family: str, name: str, element: Any) -> MapEntry | None:
    """One listed element (`[{"elem": {"val": K, "timeout": T, "expires": E}}, V]`), or None
    for a shape that is not a timed map element."""
    if not isinstance(element, list) or len(element) != 2:
        return None
    key, value = element
    if not isinstance(key, dict) or "elem" not in key:
        return None
    elem = key["elem"]
    val = elem.get("val")
    fields = val["concat"] if isinstance(val, dict) and "concat" in val else [val]
    if not all(_plain_field(f) for f in fields) or not _plain_field(value):
        return None
    expires = elem.get("expires")
    if not isinstance(expires, int | float):
        return None
    timeout = elem.get("timeout", 0)
    return MapEntry(family, name, tuple(fields), value, int(timeout or 0), float(expires))


def _plain_field(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _element(entry: MapEntry) -> str:
    """`K timeout T expires E : V`. The kernel refuses an expiry beyond the element's timeout
    (ERANGE, measured), and a DR flow keeps the 30 s timeout it was added with while its
    expiry moves on with traffic: so the timeout is at least the expiry."""
    expires = max(1, math.ceil(entry.expires))
    timeout = max(entry.timeout, expires)
    key = " . ".join(str(f) for f in entry.key)
    return f"{key} timeout {timeout}s expires {expires}s : {entry.value}"


def _key(entry: MapEntry) -> str:
    return " . ".join(str(f) for f in entry.key)


def import_scripts(entries: Iterable[MapEntry], replace: bool) -> list[tuple[str, int]]:
    """Scripts (one transaction each) adding `entries` to their maps, with how many each adds.

    `replace=False` (an active node): `add` keeps an element that exists, so what this node
    decided itself stands. `replace=True` (a node standing by): add, delete and add again in one
    transaction, so an entry it holds takes the sender's newer expiry (a flow still in use on
    the active node must not expire here)."""
    by_map: dict[tuple[str, str], dict[tuple[Field, ...], MapEntry]] = {}
    for entry in entries:  # one element per key (the last one sent): a key twice in one
        by_map.setdefault((entry.family, entry.map), {})[entry.key] = entry  # delete fails
    scripts: list[tuple[str, int]] = []
    for (family, name), keyed in sorted(by_map.items()):
        items = list(keyed.values())
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            scripts.append((_script(family, name, batch, replace), len(batch)))
    return scripts


def _script(family: str, name: str, items: Sequence[MapEntry], replace: bool) -> str:
    where = f"{family} {TABLE} {name}"
    added = f"add element {where} {{ {', '.join(_element(e) for e in items)} }}"
    if not replace:
        return added + "\n"
    keys = ", ".join(_key(e) for e in items)
    return f"{added}\ndelete element {where} {{ {keys} }}\n{added}\n"
