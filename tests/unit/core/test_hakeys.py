"""Keys from node.ha.secret: a slow master, one independent key per use."""

from __future__ import annotations

import hashlib
import hmac
import time

from pacslb.core import hakeys, syncwire
from pacslb.core import keepalived as k

SECRET = "radiology pair secret 2026"


def test_the_vrrp_password_is_eight_letters_or_digits_and_the_same_on_both_nodes() -> None:
    password = k.auth_pass(SECRET)
    assert len(password) == 8 and password.isalnum()
    hakeys.master.cache_clear()
    assert k.auth_pass(SECRET) == password  # recomputed, not only cached
    assert k.auth_pass(SECRET + "!") != password


def test_the_password_is_not_a_fast_hash_of_the_secret() -> None:
    """The old derivation (8 hex digits of one SHA-256) let a heard advert test guesses at
    hash speed; the new one costs a full scrypt per guess."""
    fast = hashlib.sha256(b"pacslb vrrp password\0" + SECRET.encode()).hexdigest()[:8]
    assert k.auth_pass(SECRET) != fast
    hakeys.master.cache_clear()
    started = time.perf_counter()
    hakeys.master("a guess")
    assert time.perf_counter() - started > 0.005  # a SHA-256 takes ~1 us: scrypt is slow


def test_the_state_sync_key_and_the_vrrp_password_are_independent() -> None:
    key = syncwire.sync_key(SECRET)
    assert len(key) == 32
    assert key == hakeys.derive(SECRET, hakeys.SYNC_LABEL)
    assert key != hakeys.derive(SECRET, hakeys.VRRP_LABEL)
    # Neither is the secret's plain hash nor the old state sync key.
    old = hashlib.sha256(b"pacslb state sync v1\0" + SECRET.encode()).digest()
    assert key != old and key != hmac.new(SECRET.encode(), b"", hashlib.sha256).digest()
    assert k.auth_pass(SECRET) not in key.hex()


def test_the_pairing_proof_is_keyed_by_its_own_derived_key() -> None:
    from pacslb.core import replication as r

    given = r.proof(SECRET, r.PROOF_PEER, "nonce-1")
    message = f"pacslb-ha-pair\0{r.PROOF_PEER}\0nonce-1".encode()
    fast = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert given != fast  # not testable at HMAC speed against guesses of the secret
    key = hakeys.derive(SECRET, hakeys.PAIRING_LABEL)
    assert given == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert key not in (syncwire.sync_key(SECRET), hakeys.derive(SECRET, hakeys.VRRP_LABEL))
