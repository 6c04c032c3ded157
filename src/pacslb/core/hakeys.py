"""Keys derived from `node.ha.secret` (no I/O): one slow master, one key per use.

The secret is chosen by a person, so it may be guessable. VRRPv2 carries its password in clear
on the HA link: were it a fast hash of the secret, whoever hears one advert could test guesses
offline at billions a second, and the guess found would also key state sync and pairing. So the
secret is first stretched by scrypt (memory-hard: ~16 MiB and tens of ms per guess), and each
use takes its own key from that master by HMAC with a label of its own: the VRRP password, the
state sync key and the pairing proofs reveal nothing of one another, nor of the secret beyond
what a full scrypt per guess can find.

The salt is fixed (both nodes must derive the same keys with nothing exchanged); it is distinct
to pacslb, so tables computed for other systems do not apply.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import string

SALT = b"pacslb node.ha.secret v2"
# scrypt's cost: N=2^14, r=8 (16 MiB, ~30-60 ms here); both nodes pay it once per process.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1

VRRP_LABEL = b"pacslb vrrp password"
SYNC_LABEL = b"pacslb state sync"
PAIRING_LABEL = b"pacslb pairing proof"
_ALPHABET = string.ascii_letters + string.digits  # keepalived takes printable text; no quoting


@functools.lru_cache(maxsize=8)
def master(secret: str) -> bytes:
    """The stretched secret, from which every key is taken (cached: it is slow on purpose)."""
    return hashlib.scrypt(
        secret.encode(), salt=SALT, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
    )


def derive(secret: str, label: bytes) -> bytes:
    """The key for one use: HMAC-SHA256(master, label) (HKDF's expand step, one block)."""
    return hmac.new(master(secret), label + b"\x01", hashlib.sha256).digest()


def vrrp_password(secret: str) -> str:
    """The 8 characters VRRPv2 carries (keepalived uses only the first 8), letters and digits
    (47 bits rather than the 32 of 8 hex digits)."""
    raw = derive(secret, VRRP_LABEL)
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in raw[:8])


def sync_key(secret: str) -> bytes:
    """The HMAC key of state sync datagrams (core/syncwire.py)."""
    return derive(secret, SYNC_LABEL)
