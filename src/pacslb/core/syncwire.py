"""State sync between the nodes of an HA group: the datagrams' codec and what to send (no I/O).

What is carried: the kernel's dynamic map entries that a takeover must not lose (DR per-flow
entries and source-IP persistence of DR and NAT: `MapEntry`) and the built-in proxy's sticky
entries (`StickyEntry`). conntrack state of NAT flows travels by conntrackd, not here.

A datagram (UDP, one per MAX_DATAGRAM bytes at most, so that none is fragmented on a 1500-byte
link) is `MAGIC | HMAC-SHA256(key, body) | body`, body a compact JSON object: the sender's node
name, its boot id (random per process), a sequence number and its wall clock in ms, the
addresses it sends to, and the entries. The key is derived from `node.ha.secret`. A receiver
(`Opener`) drops what is not authentic, is older than MAX_SKEW, was seen before (a sliding
window of sequence numbers per sending node, as IPsec's anti-replay window: a captured datagram
replayed later does nothing), carries its own node name or boot id (its own datagram sent back
to it), or was addressed to others (the address it claims to come from, or none of ours).

Every node may send and every node receives from every peer: the design holds for N nodes
(and for N active nodes behind ECMP, where each sends the entries it made). `Deltas` decides
what goes in a round: entries new since the last round, entries whose expiry moved well past
what the peers were told (a flow that is still in use), and, every `full_every` seconds,
everything (a lost datagram or a restarted peer is made good by then).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pacslb.core import hakeys

MAGIC = b"PLS1"
MAC_SIZE = 32
MAX_DATAGRAM = 1400  # bytes: below a 1500 MTU with IP and UDP headers, never fragmented
MAX_SKEW = 30.0  # seconds between the sender's clock and ours beyond which a datagram is stale
WINDOW = 256  # sequence numbers accepted out of order behind the highest seen
FAMILIES = frozenset({"netdev", "ip", "ip6"})
# What may be written into an nft script from a peer: map names as core/nft.py makes them,
# and key or value fields that are numbers, addresses or MACs (never nft syntax).
_MAP_NAME = re.compile(r"^s[0-9a-f]{8}_(flows|persist_\d{1,9})$")
_FIELD = re.compile(r"^[0-9A-Fa-f:.]{1,45}$")

Field = int | str


def sync_key(secret: str) -> bytes:
    """The HMAC key: from the secret's scrypt master with its own label (core/hakeys.py), so
    the VRRP password heard on the link tells nothing of it."""
    return hakeys.sync_key(secret)


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One element of a dynamic nftables map in table `pacslb`."""

    family: str
    map: str
    key: tuple[Field, ...]
    value: Field
    timeout: int  # seconds: the element's own timeout (0: the map's default)
    expires: float  # seconds left when it was read

    @property
    def ident(self) -> tuple[str, str, tuple[Field, ...], Field]:
        return (self.family, self.map, self.key, self.value)


@dataclass(frozen=True, slots=True)
class StickyEntry:
    """A built-in proxy persistence entry (H4's ProxyEngine.export_sticky dicts)."""

    service: str
    key: str
    server: str
    ttl: float

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "key": self.key, "server": self.server, "ttl": self.ttl}


Entry = MapEntry | StickyEntry


class WireError(ValueError):
    """A datagram that is not ours or is broken; `reason` is a metrics label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check_field(value: Any, what: str) -> Field:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise WireError("malformed", f"{what} is not a number or an address")
    if isinstance(value, int):
        if not 0 <= value < 1 << 32:
            raise WireError("malformed", f"{what} out of range")
        return value
    if not _FIELD.match(value):
        raise WireError("malformed", f"{what} is not an address or a MAC")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise WireError("malformed", f"{what} is not a non-negative number")
    return float(value)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 512:
        raise WireError("malformed", f"{what} is not a string")
    return value


def entry_to_wire(entry: Entry) -> list[Any]:
    if isinstance(entry, MapEntry):
        expires_ms = int(entry.expires * 1000)
        return [
            "m",
            entry.family,
            entry.map,
            list(entry.key),
            entry.value,
            entry.timeout,
            expires_ms,
        ]
    return ["s", entry.service, entry.key, entry.server, round(entry.ttl, 3)]


def entry_from_wire(item: Any) -> Entry:
    """One entry, checked field by field (a peer is authenticated, yet what lands in an nft
    script must be a number or an address whoever sent it)."""
    if not isinstance(item, list) or not item:
        raise WireError("malformed", "an entry is not a list")
    if item[0] == "m" and len(item) == 7:
        _, family, name, key, value, timeout, expires_ms = item
        if family not in FAMILIES:
            raise WireError("malformed", f"family {family!r}")
        if not isinstance(name, str) or not _MAP_NAME.match(name):
            raise WireError("malformed", f"map name {name!r}")
        if not isinstance(key, list) or not 1 <= len(key) <= 4:
            raise WireError("malformed", "key")
        return MapEntry(
            family,
            name,
            tuple(_check_field(k, "key field") for k in key),
            _check_field(value, "value"),
            int(_number(timeout, "timeout")),
            _number(expires_ms, "expires") / 1000,
        )
    if item[0] == "s" and len(item) == 5:
        _, service, key, server, ttl = item
        return StickyEntry(
            _text(service, "service"),
            _text(key, "key"),
            _text(server, "server"),
            _number(ttl, "ttl"),
        )
    raise WireError("malformed", f"unknown entry kind {item[0]!r}")


@dataclass(frozen=True, slots=True)
class Received:
    node: str
    boot: int
    seq: int
    sent_at: float  # the sender's wall clock, seconds
    entries: tuple[Entry, ...]


class Sealer:
    """Packs entries into authenticated datagrams of at most MAX_DATAGRAM bytes."""

    def __init__(
        self,
        secret: str,
        node: str,
        boot: int,
        limit: int = MAX_DATAGRAM,
        receivers: Sequence[str] = (),
    ) -> None:
        self._key = sync_key(secret)
        self.node = node
        self.boot = boot
        self.seq = 0
        self.limit = limit
        self.receivers = sorted(receivers)  # in the HMAC'd body: whom the datagram is for

    def seal(self, entries: Iterable[Entry], now: float) -> list[bytes]:
        """Datagrams carrying `entries` (one empty one when there are none: a heartbeat)."""
        # The body's fields besides entries (the receivers' addresses: up to 41 bytes each).
        room = self.limit - len(MAGIC) - MAC_SIZE - 96 - sum(len(r) + 3 for r in self.receivers)
        batches: list[list[str]] = [[]]
        used = 0
        for entry in entries:
            text = json.dumps(entry_to_wire(entry), separators=(",", ":"))
            if len(text) + 1 > room:
                raise ValueError(f"an entry does not fit in a datagram: {text[:80]}")
            if used + len(text) + 1 > room and batches[-1]:
                batches.append([])
                used = 0
            batches[-1].append(text)
            used += len(text) + 1
        return [self._one(batch, now) for batch in batches]

    def _one(self, items: Sequence[str], now: float) -> bytes:
        self.seq += 1
        head = json.dumps(
            {
                "n": self.node,
                "b": self.boot,
                "q": self.seq,
                "t": int(now * 1000),
                "r": self.receivers,
            },
            separators=(",", ":"),
        )
        body = (head[:-1] + ',"e":[' + ",".join(items) + "]}").encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return MAGIC + mac + body


@dataclass
class _Seen:
    boot: int
    top: int  # the highest sequence number accepted
    bits: int  # bit i set: top - i was accepted
    last_at: float  # the sender's clock of the newest accepted datagram


@dataclass
class Opener:
    """Checks and decodes datagrams; raises WireError (reason: a metrics label) for any that
    is not authentic, stale, replayed, reflected, misdirected or broken. One Opener serves
    every peer. `node`, `boot`: this node's own (its own datagrams sent back to it are
    dropped); `addresses`: this node's (a datagram must name one of them as a receiver; empty:
    not checked)."""

    secret: str
    node: str = ""
    boot: int | None = None
    addresses: frozenset[str] = frozenset()
    _key: bytes = field(init=False)
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._key = sync_key(self.secret)

    def open(self, datagram: bytes, now: float, source: str = "") -> Received:
        """`source`: the address the datagram came from."""
        if len(datagram) < len(MAGIC) + MAC_SIZE + 2 or not datagram.startswith(MAGIC):
            raise WireError("not-sync", "no pacslb state sync magic")
        mac = datagram[len(MAGIC) : len(MAGIC) + MAC_SIZE]
        body = datagram[len(MAGIC) + MAC_SIZE :]
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            raise WireError("bad-mac", "not signed with this group's secret")
        try:
            data = json.loads(body)
            node, boot, seq, sent_ms, items = data["n"], data["b"], data["q"], data["t"], data["e"]
            receivers = data["r"]
        except (ValueError, KeyError, TypeError) as exc:
            raise WireError("malformed", str(exc)) from None
        if not (isinstance(node, str) and isinstance(boot, int) and isinstance(seq, int)):
            raise WireError("malformed", "header fields")
        if not isinstance(items, list) or not isinstance(sent_ms, int):
            raise WireError("malformed", "header fields")
        if not isinstance(receivers, list) or not all(isinstance(r, str) for r in receivers):
            raise WireError("malformed", "receivers")
        if node == self.node or boot == self.boot:
            raise WireError("reflected", "carries this node's own name or boot id")
        if source and source in receivers:
            raise WireError("reflected", f"addressed to {source}, the address it came from")
        if self.addresses and not self.addresses.intersection(receivers):
            raise WireError("misdirected", "addressed to other nodes, not this one")
        sent_at = sent_ms / 1000
        if abs(now - sent_at) > MAX_SKEW:
            # No figure in the text: it goes into events, which must not differ per datagram.
            raise WireError("stale", f"sent more than {MAX_SKEW:g} s from now (clocks apart?)")
        # Keyed by the authenticated node name, not the address: the window holds whichever
        # address a peer's datagram comes from.
        self._admit(node, boot, seq, sent_at)
        entries = tuple(entry_from_wire(item) for item in items)
        return Received(node, boot, seq, sent_at, entries)

    def _admit(self, node: str, boot: int, seq: int, sent_at: float) -> None:
        seen = self._seen.get(node)
        if seen is None or (seen.boot != boot and sent_at > seen.last_at):
            # A first datagram, or a restarted sender (new boot id, and newer than anything
            # of its last boot: an old boot's datagram replayed is older).
            self._seen[node] = _Seen(boot, seq, 1, sent_at)
            return
        if seen.boot != boot:
            raise WireError("replay", "from an earlier run of the sender")
        if seq > seen.top:
            shift = seq - seen.top
            seen.bits = ((seen.bits << shift) | 1) & ((1 << WINDOW) - 1)
            seen.top = seq
            seen.last_at = max(seen.last_at, sent_at)
            return
        behind = seen.top - seq
        if behind >= WINDOW or seen.bits >> behind & 1:
            raise WireError("replay", f"sequence {seq} seen before (or too old)")
        seen.bits |= 1 << behind


class Deltas:
    """What the sender puts in a round: see the module's docstring. Pure: `now` comes in."""

    def __init__(self, full_every: float = 10.0, moved: float = 0.25, min_moved: float = 5.0):
        self.full_every = full_every
        self.moved = moved  # resend when the expiry moved by this share of the timeout
        self.min_moved = min_moved  # ... and by at least this many seconds
        self._told: dict[tuple[str, str, tuple[Field, ...], Field], float] = {}  # -> deadline
        self._last_full: float | None = None

    def full_due(self, now: float) -> bool:
        return self._last_full is None or now - self._last_full >= self.full_every

    def round(
        self, entries: Iterable[MapEntry], now: float, complete: bool = True
    ) -> tuple[list[MapEntry], bool]:
        """(entries to send, whether this is a full round). `complete`: `entries` is all there
        is (what is not listed is gone); else a part (the recent flows), and only a complete
        listing makes a full round."""
        full = complete and self.full_due(now)
        out: list[MapEntry] = []
        told: dict[tuple[str, str, tuple[Field, ...], Field], float] = {}
        for entry in entries:
            deadline = now + entry.expires
            before = self._told.get(entry.ident)
            slack = max(self.min_moved, self.moved * max(entry.timeout, entry.expires))
            if full or before is None or deadline - before > slack:
                out.append(entry)
                told[entry.ident] = deadline
            else:
                told[entry.ident] = before
        if complete:
            self._told = told  # entries gone from a complete listing are forgotten
        else:
            self._told.update(told)
        if full:
            self._last_full = now
        return out, full

    def force_full(self) -> None:
        """The next round sends everything (a peer that has just started knows nothing)."""
        self._last_full = None

    def known(self, entries: Iterable[MapEntry], now: float) -> None:
        """Entries this node imported from a peer: not new, so not sent back as if they were
        (until a full round: a peer that restarted learns them from whichever node has them)."""
        for entry in entries:
            self._told.setdefault(entry.ident, now + entry.expires)
