"""The pure parts of WebUI/API security: password hashes, CSRF tokens, sessions, rate limits,
device cookies, the client address behind a trusted proxy.

Sans-I/O: no files, no clock (time comes in as `now`); the control process keeps the state on
disk (control/auth.py). Secrets come from `secrets`, comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# scrypt cost: n=2**14, r=8 is the interactive-login setting of the scrypt paper (~16 MiB and
# some 50 ms here): slow for an attacker with a stolen hash, fast enough for a login form.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8


class Role(StrEnum):
    ADMIN = "admin"  # may change anything
    READONLY = "readonly"  # may look at everything; every changing request is refused (403)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$n$r$p$salt$hash`: the parameters travel with the hash so they can be raised later."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def generate_password() -> str:
    """18 random characters (~107 bits) from an alphabet without look-alikes (0/O, 1/l/I)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(18))


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"a password needs at least {MIN_PASSWORD} characters"
    return None


# --- API tokens -----------------------------------------------------------------------------

TOKEN_PREFIX = "pacslb_"


def new_token() -> tuple[str, str]:
    """(token id, the secret token). The token is shown once; only its hash is kept."""
    token_id = secrets.token_hex(4)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def token_id(token: str) -> str | None:
    """The id inside a token, so the store finds its hash without trying every one."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    ident, sep, _ = token.removeprefix(TOKEN_PREFIX).partition("_")
    return ident if sep and ident else None


def hash_token(token: str) -> str:
    """SHA-256 suffices: a token holds 256 random bits, so there is nothing to brute-force and a
    slow hash would only slow every API call."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


# --- CSRF -----------------------------------------------------------------------------------


def csrf_token(secret: bytes, session_id: str) -> str:
    """A token bound to one session: a page from another site cannot read it, so it cannot send
    it (OWASP's synchronizer-token pattern, derived rather than stored)."""
    return hmac.new(secret, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, session_id: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(csrf_token(secret, session_id), token)


# --- sessions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user: str
    role: Role
    expires: float
    stamp: str = ""  # the user's password hash at login: a changed password ends the session


class SessionTable:
    """Logged-in browsers, in memory: a restart of the control process logs everyone out."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._sessions: dict[str, Session] = {}

    def create(self, user: str, role: Role, now: float, stamp: str = "") -> Session:
        self._expire(now)
        session = Session(secrets.token_urlsafe(32), user, role, now + self.lifetime, stamp)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        if session.expires <= now:
            del self._sessions[session.id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if s.expires <= now]:
            del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)


# --- login rate limit -----------------------------------------------------------------------


@dataclass
class RateLimiter:
    """At most `limit` failed logins per source address in `window` seconds (sliding)."""

    limit: int = 5
    window: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, key: str, now: float) -> bool:
        times = self._trim(key, now)
        return times is not None and len(times) >= self.limit

    def failure(self, key: str, now: float) -> None:
        self._failures.setdefault(key, deque()).append(now)
        self._trim(key, now)
        if len(self._failures) > 10000:  # an address sweep must not grow memory without bound
            for k in list(self._failures):
                self._trim(k, now)

    def retry_after(self, key: str, now: float) -> float:
        times = self._trim(key, now)
        return 0.0 if not times else max(0.0, times[0] + self.window - now)

    def _trim(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times


# --- device cookies and the login limiter ---------------------------------------------------
#
# OWASP, "Slow Down Online Guessing Attacks with Device Cookies": a browser or client that once
# logged in as a user holds a signed cookie naming that user. Failures from such a known device
# count against that device only; failures from unknown devices count per (address, user), per
# address and per user. An attacker who guesses the admin's password from a shared address (a
# reading room's NAT, a jump host) locks out unknown devices, not the admin's own browser.


def device_cookie(secret: bytes, user: str) -> str:
    """`<user, base64>.<nonce>.<mac>`: bound to one user; the nonce names the device."""
    nonce = secrets.token_urlsafe(16)
    name = _b64(user.encode())
    return f"{name}.{nonce}.{_device_mac(secret, name, nonce)}"


def device_of(secret: bytes, cookie: str | None, user: str) -> str | None:
    """The device's nonce when `cookie` is a genuine device cookie of `user`, else None."""
    if not cookie:
        return None
    name, _, rest = cookie.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (nonce and mac) or name != _b64(user.encode()):
        return None
    return nonce if hmac.compare_digest(_device_mac(secret, name, nonce), mac) else None


def _device_mac(secret: bytes, name: str, nonce: str) -> str:
    return _b64(hmac.new(secret, f"device:{name}:{nonce}".encode(), hashlib.sha256).digest())


@dataclass
class LoginLimiter:
    """Failed logins in a sliding `window`, counted on the keys an attempt belongs to."""

    per_device: int = 5  # a known device (its own key: nobody else can lock it)
    per_address_user: int = 5  # unknown devices guessing one user from one address
    per_address: int = 20  # unknown devices from one address, any users (a sweep of names)
    per_user: int = 30  # unknown devices guessing one user from anywhere (a botnet)
    window: float = 60.0
    _limiters: dict[str, RateLimiter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in ("device", "address_user", "address", "user"):
            limit = getattr(self, f"per_{kind}")
            self._limiters[kind] = RateLimiter(limit=limit, window=self.window)

    def _keys(self, client: str, user: str, device: str | None) -> list[tuple[str, str]]:
        if device is not None:
            return [("device", device)]
        return [("address_user", f"{client} {user}"), ("address", client), ("user", user)]

    def retry_after(self, client: str, user: str, device: str | None, now: float) -> float:
        """0 when this attempt may go ahead; else the seconds until it may."""
        waits = [
            self._limiters[kind].retry_after(key, now)
            for kind, key in self._keys(client, user, device)
            if self._limiters[kind].blocked(key, now)
        ]
        return max(waits, default=0.0)

    def failure(self, client: str, user: str, device: str | None, now: float) -> None:
        for kind, key in self._keys(client, user, device):
            self._limiters[kind].failure(key, now)


# --- the client address ---------------------------------------------------------------------


def forwarded_client(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """Who the client is: the peer, unless the peer is one of our `trusted` proxies; then the
    right-most X-Forwarded-For entry that is not itself a trusted proxy. Each proxy appends the
    address it saw, so only the entries our own proxies appended can be believed: anything to
    their left was written by the client (and rotating it must not make a new client)."""
    current = peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    while _trusted(current, trusted) and hops:
        hop = hops.pop()
        try:
            current = str(ipaddress.ip_address(hop))
        except ValueError:
            return current  # garbage: the last address we could trust is all we know
    return current


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


# --- events that an attacker can cause ----------------------------------------------------


@dataclass
class Throttle:
    """At most `limit` events in `window` seconds; the caller counts what it held back in
    `held_back` and records the count later."""

    limit: int = 10
    window: float = 60.0
    held_back: int = 0
    _times: deque[float] = field(default_factory=deque)

    def allow(self, now: float) -> bool:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def take_held_back(self) -> int:
        count, self.held_back = self.held_back, 0
        return count


@dataclass
class FirstSeen:
    """Whether a key is new, or was last new more than `window` seconds ago (one event per
    lockout rather than one per refused try)."""

    window: float = 60.0
    _seen: dict[str, float] = field(default_factory=dict)

    def first(self, key: str, now: float) -> bool:
        if len(self._seen) > 10000:  # a sweep of keys must not grow memory without bound
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        self._seen[key] = now
        return True
