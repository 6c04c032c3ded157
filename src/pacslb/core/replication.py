"""What an HA pair replicates, how a node proves it shares the pair's secret, and the words of
replication and split-brain status. Pure: no I/O, time comes in as `now`.

Replication is state transfer, not an op log: the *replicated state* of a node is its virtual
services (the config without `node:`, which never leaves a node: addresses, interfaces, HA
identity, WebUI, passwords, tokens) plus every admin state (drain/halt; online is the absence
of an entry). Two nodes are in sync when the digests of their replicated states are equal.

Which node's state wins is decided by a *generation*: a number every local change on a node
raises above both nodes' last known generations, and that a node receiving a replica takes
over. The node with the higher generation pushes; a node that was away (unreachable, stopped)
and comes back with an older state is overwritten, never the other way round, whichever of the
two holds the addresses when it returns.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pacslb.core import hakeys
from pacslb.core.ha_role import Role
from pacslb.core.state import AdminState

ServerKey = tuple[str, str]

# HMAC purposes: the two directions of the pairing handshake prove the secret over different
# messages, so that one side's proof can never be replayed as the other's (reflection).
PROOF_PEER = "peer"  # the node being paired proves it to the node that pairs
PROOF_ACTIVE = "active"  # the node that pairs proves it to the node being paired


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate (DER), as `openssl x509 -fingerprint -sha256` prints it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normal_fingerprint(text: str) -> str:
    """An operator's fingerprint in the form fingerprint() gives (colons, case, a prefix
    `sha256:` / `SHA256 Fingerprint=` as openssl or a browser shows it, all accepted)."""
    value = text.strip()
    if "=" in value:
        value = value.split("=", 1)[1]
    if value.lower().startswith("sha256:"):
        value = value[7:]
    hexdigits = "".join(ch for ch in value if ch not in ": ").upper()
    if len(hexdigits) != 64 or any(ch not in "0123456789ABCDEF" for ch in hexdigits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 64, 2))


def proof(secret: str, purpose: str, nonce: str) -> str:
    """HMAC-SHA256 of a nonce under a key derived from node.ha.secret (scrypt, then a label of
    its own: core/hakeys.py): shows the secret without sending it, and a proof obtained for a
    chosen nonce lets nobody test guesses of the secret cheaply."""
    message = f"pacslb-ha-pair\0{purpose}\0{nonce}".encode()
    return hmac.new(
        hakeys.derive(secret, hakeys.PAIRING_LABEL), message, hashlib.sha256
    ).hexdigest()


def proof_ok(secret: str, purpose: str, nonce: str, given: str) -> bool:
    return hmac.compare_digest(proof(secret, purpose, nonce), given)


# --- the replicated state --------------------------------------------------------------------


def admin_json(admin: Mapping[ServerKey, AdminState]) -> dict[str, dict[str, str]]:
    """Admin states as JSON ({service: {server: state}}), online ones left out."""
    out: dict[str, dict[str, str]] = {}
    for (service, server), state in sorted(admin.items()):
        if state is not AdminState.ONLINE:
            out.setdefault(service, {})[server] = str(state)
    return out


def admin_from_json(data: Any) -> dict[ServerKey, AdminState]:
    """The inverse of admin_json; ValueError naming what is malformed."""
    if not isinstance(data, dict):
        raise ValueError("admin: expected {service: {server: state}}")
    out: dict[ServerKey, AdminState] = {}
    for service, servers in data.items():
        if not isinstance(servers, dict):
            raise ValueError(f"admin.{service}: expected {{server: state}}")
        for server, state in servers.items():
            out[(str(service), str(server))] = AdminState(state)
    return out


def replicated_state(
    services: list[dict[str, Any]], admin: Mapping[ServerKey, AdminState]
) -> dict[str, Any]:
    """What leaves a node: its virtual services (as JSON) and admin states. Never `node:`."""
    return {"virtual_services": services, "admin": admin_json(admin)}


def digest(state: Mapping[str, Any]) -> str:
    """A short digest of a replicated state: equal digests, equal states."""
    canonical = json.dumps(
        {"virtual_services": state["virtual_services"], "admin": state["admin"]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerView:
    """What a node knows of its peer at one moment (from its last poll)."""

    reachable: bool
    unreachable_since: float | None  # unix time of the first failed poll in a row
    role: Role | None  # the peer's role, from its last answer
    digest: str | None  # the peer's replicated state, from its last answer
    generation: int  # the peer's generation, from its last answer
    applied_revision: int  # the revision of ours the peer last applied (0: none)


@dataclass(frozen=True, slots=True)
class Replication:
    """A node's replication state, as status, the WebUI and /metrics give it."""

    state: str  # in-sync | behind | ahead | unreachable | refused | split-brain | not-paired
    text: str  # the words for a person
    behind: int  # revisions the peer has not applied yet (0 when in sync)


def replication_status(
    own_digest: str,
    own_generation: int,
    own_revision: int,
    peer: PeerView | None,
    refused: str | None,
    split: bool,
) -> Replication:
    """The one line a node shows about replication (`pacslb ha status`, the Overview)."""
    if peer is None:
        return Replication("not-paired", "not paired", 0)
    behind = 0
    if peer.digest != own_digest and own_generation >= peer.generation:
        behind = max(own_revision - peer.applied_revision, 1)
    if split:
        return Replication(
            "split-brain", "split brain: both nodes are active; replication stopped", behind
        )
    if not peer.reachable:
        since = when(peer.unreachable_since)
        tail = f"; {behind} revision{'s' if behind != 1 else ''} behind" if behind else ""
        return Replication("unreachable", f"peer unreachable since {since}{tail}", behind)
    if refused is not None and peer.digest != own_digest:
        return Replication("refused", f"refused ({refused})", behind)
    if peer.digest == own_digest:
        return Replication("in-sync", "in sync", 0)
    if own_generation < peer.generation:
        return Replication("ahead", "the peer has newer changes; taking them", 0)
    noun = "revision" if behind == 1 else "revisions"
    return Replication("behind", f"{behind} {noun} behind", behind)


def when(moment: float | None) -> str:
    if moment is None:
        return "start"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def should_push(
    own_role: Role, own_generation: int, own_digest: str, peer: PeerView, split: bool
) -> bool:
    """Whether this node sends its state to the peer now: the peer answers, no split brain,
    and this node holds the newer state: a higher generation (even on the passive node: it can
    only have one from changes made while it was active that the peer never received, say
    while the link was down), or the same generation with a different state (a push that was
    lost), which the active node settles."""
    if split or not peer.reachable:
        return False
    if peer.digest == own_digest:
        return False
    if own_generation > peer.generation:
        return True
    # Same generation, different states: only the node that holds the addresses decides.
    return own_generation == peer.generation and own_role is Role.ACTIVE


# --- split brain ----------------------------------------------------------------------------


def split_brain(own: Role, peer: Role | None) -> bool:
    """Both nodes say they are active (hold the floating addresses) at once."""
    return own is Role.ACTIVE and peer is Role.ACTIVE


@dataclass(frozen=True, slots=True)
class SplitChange:
    """A split brain began (`started`) or ended; `kept_by` names who holds the addresses."""

    started: bool
    message: str


class SplitBrainWatch:
    """Turns each poll's (own role, peer role) into the events of a split brain: one when it
    begins, one when it ends (naming the node that kept the addresses)."""

    def __init__(self) -> None:
        self.split = False

    def observe(self, own: Role, peer: Role | None, peer_name: str) -> SplitChange | None:
        now_split = split_brain(own, peer)
        if now_split == self.split:
            return None
        self.split = now_split
        if now_split:
            return SplitChange(True, "split brain: both nodes are active")
        if own is Role.ACTIVE:
            kept = "this node"
        elif peer is Role.ACTIVE:
            kept = peer_name
        else:
            kept = "neither node"
        return SplitChange(False, f"split brain ended: {kept} kept the addresses")
