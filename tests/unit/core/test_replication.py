"""What an HA pair replicates, the proof of the shared secret, status wording, split brain."""

from __future__ import annotations

import pytest

from pacslb.core import replication as r
from pacslb.core.ha_role import Role
from pacslb.core.state import AdminState

SERVICES = [{"label": "Web", "vip": "192.168.85.40", "real_servers": [{"label": "Srv1"}]}]


def view(**kw: object) -> r.PeerView:
    base: dict[str, object] = {
        "reachable": True,
        "unreachable_since": None,
        "role": Role.PASSIVE,
        "digest": "peer",
        "generation": 1,
        "applied_revision": 3,
    }
    return r.PeerView(**{**base, **kw})  # type: ignore[arg-type]


def test_the_replicated_state_is_services_and_admin_states_never_node() -> None:
    admin = {("Web", "Srv1"): AdminState.DRAIN, ("Web", "Srv2"): AdminState.ONLINE}
    state = r.replicated_state(SERVICES, admin)
    assert set(state) == {"virtual_services", "admin"}
    assert state["admin"] == {"Web": {"Srv1": "drain"}}  # online is the absence of an entry
    assert r.admin_from_json(state["admin"]) == {("Web", "Srv1"): AdminState.DRAIN}
    with pytest.raises(ValueError):
        r.admin_from_json({"Web": {"Srv1": "sideways"}})


def test_digest_changes_with_the_services_or_an_admin_state_only() -> None:
    one = r.digest(r.replicated_state(SERVICES, {}))
    assert one == r.digest(r.replicated_state([dict(s) for s in SERVICES], {}))
    assert one != r.digest(r.replicated_state(SERVICES, {("Web", "Srv1"): AdminState.HALT}))
    assert one != r.digest(r.replicated_state([{**SERVICES[0], "vip": "192.168.85.41"}], {}))


def test_proof_needs_the_same_secret_and_purpose() -> None:
    secret = "a shared secret for the pair"
    given = r.proof(secret, r.PROOF_PEER, "nonce-1")
    assert secret not in given
    assert r.proof_ok(secret, r.PROOF_PEER, "nonce-1", given)
    assert not r.proof_ok("another secret entirely", r.PROOF_PEER, "nonce-1", given)
    assert not r.proof_ok(secret, r.PROOF_ACTIVE, "nonce-1", given)  # no reflection
    assert not r.proof_ok(secret, r.PROOF_PEER, "nonce-2", given)


def test_fingerprints_as_openssl_and_browsers_write_them() -> None:
    fp = r.fingerprint(b"certificate")
    assert len(fp) == 95 and fp.count(":") == 31 and fp == fp.upper()
    plain = fp.replace(":", "").lower()
    assert r.normal_fingerprint(plain) == fp
    assert r.normal_fingerprint(f"SHA256 Fingerprint={fp}") == fp
    assert r.normal_fingerprint(f"sha256:{plain}") == fp
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        r.normal_fingerprint("AB:CD")


def test_status_words() -> None:
    words = r.replication_status
    assert words("d", 2, 7, None, None, False).text == "not paired"
    assert words("d", 2, 7, view(digest="d"), None, False) == r.Replication("in-sync", "in sync", 0)
    behind = words("d", 2, 7, view(), None, False)
    assert behind == r.Replication("behind", "4 revisions behind", 4)
    assert words("d", 2, 4, view(), None, False).text == "1 revision behind"
    # Only admin states differ (same revision): still one change behind, never "0 behind".
    assert words("d", 2, 3, view(), None, False).behind == 1
    away = words("d", 2, 5, view(reachable=False, unreachable_since=0.0), None, False)
    assert away.state == "unreachable"
    assert away.text == "peer unreachable since 1970-01-01 00:00:00 UTC; 2 revisions behind"
    refused = words("d", 2, 5, view(), "no such file: /etc/web.pem", False)
    assert refused.text == "refused (no such file: /etc/web.pem)"
    assert words("d", 2, 5, view(), None, True).state == "split-brain"
    assert words("d", 1, 5, view(generation=4), None, False).state == "ahead"


def test_who_pushes() -> None:
    push = r.should_push
    assert push(Role.ACTIVE, 3, "d", view(), False)
    assert not push(Role.ACTIVE, 3, "d", view(digest="d"), False)  # in sync
    # The passive node pushes only changes made while it was active that the peer missed.
    assert push(Role.PASSIVE, 3, "d", view(), False)
    assert not push(Role.PASSIVE, 1, "d", view(generation=1), False)
    assert not push(Role.ACTIVE, 3, "d", view(), True)  # split brain: nothing moves
    assert not push(Role.ACTIVE, 3, "d", view(reachable=False), False)
    assert not push(Role.ACTIVE, 1, "d", view(generation=2), False)  # the peer's is newer
    # Same generation, different states (a push lost): the active decides, not the other.
    assert push(Role.ACTIVE, 1, "d", view(generation=1), False)
    assert not push(Role.STARTING, 1, "d", view(generation=1), False)
    assert push(Role.STARTING, 2, "d", view(generation=1), False)  # before keepalived says


def test_split_brain_begins_and_ends_once_naming_who_kept_the_addresses() -> None:
    watch = r.SplitBrainWatch()
    assert watch.observe(Role.ACTIVE, Role.PASSIVE, "peer 198.18.0.3") is None
    began = watch.observe(Role.ACTIVE, Role.ACTIVE, "peer 198.18.0.3")
    assert began == r.SplitChange(True, "split brain: both nodes are active")
    assert watch.split
    assert watch.observe(Role.ACTIVE, Role.ACTIVE, "peer 198.18.0.3") is None  # once
    ended = watch.observe(Role.PASSIVE, Role.ACTIVE, "peer 198.18.0.3")
    assert ended is not None and ended.message == (
        "split brain ended: peer 198.18.0.3 kept the addresses"
    )
    watch.observe(Role.ACTIVE, Role.ACTIVE, "peer 198.18.0.3")
    kept = watch.observe(Role.ACTIVE, Role.PASSIVE, "peer 198.18.0.3")
    assert kept is not None and kept.message == "split brain ended: this node kept the addresses"
    assert not r.split_brain(Role.ACTIVE, None)  # an unreachable peer is no split brain


PEER_CERT = r.fingerprint(b"the peer's certificate")
RELAY_CERT = r.fingerprint(b"a relay's certificate")
OWN_CERT = r.fingerprint(b"the pairing node's certificate")


def test_the_proofs_cover_the_certificates_each_node_sees_and_the_join() -> None:
    """A relay between the nodes (its own certificate towards the pairing node, relaying hello
    and join to the peer) cannot make the proofs pass: the peer proves the secret over its own
    certificate, which is not the one the pairing node pinned; and the pairing node's join
    proof covers the relay's certificate (what it saw), which is not the peer's own."""
    secret = "a shared secret for the pair"
    # hello: the peer proves over its own certificate; the pairing node checks against the one
    # it sees: through the relay, the relay's.
    hello = r.proof(secret, r.PROOF_PEER, "nonce-1", PEER_CERT)
    assert r.proof_ok(secret, r.PROOF_PEER, "nonce-1", hello, PEER_CERT)  # direct: passes
    assert not r.proof_ok(secret, r.PROOF_PEER, "nonce-1", hello, RELAY_CERT)  # relayed
    # join: the pairing node proves over (the peer's certificate as it saw it, its own, the
    # join's address, port, token); the peer checks with its own certificate.
    fields = ("198.18.0.2", "9443", "pacslb_id_secret")
    join = r.proof(secret, r.PROOF_ACTIVE, "nonce-2", RELAY_CERT, OWN_CERT, *fields)
    assert not r.proof_ok(secret, r.PROOF_ACTIVE, "nonce-2", join, PEER_CERT, OWN_CERT, *fields)
    direct = r.proof(secret, r.PROOF_ACTIVE, "nonce-2", PEER_CERT, OWN_CERT, *fields)
    assert r.proof_ok(secret, r.PROOF_ACTIVE, "nonce-2", direct, PEER_CERT, OWN_CERT, *fields)
    # The join's fields cannot be swapped by a relay either (its own token, address, cert).
    for i, other in enumerate((RELAY_CERT, "198.18.0.66", "9444", "pacslb_relay_token")):
        tampered = list((PEER_CERT, OWN_CERT, *fields))
        tampered[1 if i == 0 else i + 1] = other
        assert not r.proof_ok(secret, r.PROOF_ACTIVE, "nonce-2", direct, *tampered)


def test_a_conflict_is_both_nodes_changed_since_they_last_agreed() -> None:
    conflict = r.in_conflict
    assert not conflict("a", "a", "a")  # in sync
    assert not conflict("b", "a", "a")  # this node changed: it pushes
    assert not conflict("a", "b", "a")  # the peer changed: it pushes here
    assert conflict("b", "c", "a")  # both changed (edits on both sides of a partition)
    assert not conflict("b", "b", "a")  # both made the same change: nothing to resolve
    assert not conflict("b", "c", None)  # never synced yet: no common state to compare
    assert not conflict("b", None, "a")  # the peer's state unknown (not polled)
    # In conflict nothing is pushed, either way, whatever the generations and roles.
    assert not r.should_push(Role.ACTIVE, 9, "b", view(digest="c"), False, True)
    assert not r.should_push(Role.PASSIVE, 9, "b", view(digest="c"), False, True)
    words = r.replication_status("b", 2, 7, view(digest="c", revision=5), None, False, True)
    assert words.state == "conflict"
    assert "this node revision 7, the peer revision 5" in words.text
    assert "pacslb ha resolve --keep-this" in words.text
