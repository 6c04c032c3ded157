"""Who may use the WebUI and REST API: users, API tokens, sessions, CSRF and the login limit.

Users and tokens live in the state directory, mode 0600, as hashes only:
    webui-users.json   {"version": 1, "users": {"admin": {"hash": "scrypt$...", "role": "admin"}}}
    api-tokens.json    {"version": 1, "tokens": {"<id>": {"name", "role", "hash", "created", "by"}}}
    webui-device.key   the key that signs device cookies (so they survive a restart)
Both are read on every login or token use, so `pacslb passwd` takes effect at once. Sessions are
kept in memory (a restart logs everyone out). The pure parts are in core/auth.py.

The FastAPI dependencies at the end decide every request: `reader` (any logged-in user or token)
and `admin` (role admin; with a session cookie, also a valid CSRF token on changing methods).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from pacslb.config import WebUI
from pacslb.control.store import StateFileError, write_atomic
from pacslb.core import auth as a
from pacslb.errors import PacslbError

SESSION_COOKIE = "pacslb_session"
LOGIN_COOKIE = "pacslb_login"  # double-submit token of the login form (login CSRF)
DEVICE_COOKIE = "pacslb_device"  # this browser once logged in as this user (the login limit)
DEVICE_LIFETIME = 365 * 86400
NO_CREDENTIALS = "log in or send an API token (Authorization: Bearer ...)"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DUMMY_HASH = a.hash_password(secrets.token_hex(8))  # unknown users cost as much as known ones


class LoginRefused(PacslbError):
    """Wrong user or password."""


class RateLimited(PacslbError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


def _read(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StateFileError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise StateFileError(f"{path}: malformed")
    return dict(data[key])


def _write(path: Path, key: str, items: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": 1, key: items}, indent=2, sort_keys=True) + "\n"
    write_atomic(path, body.encode(), 0o600)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    role: a.Role
    created: str
    by: str

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "name": self.name,
            "role": str(self.role),
            "created": self.created,
            "by": self.by,
        }


class AuthStore:
    """Users and API tokens on disk, as hashes."""

    def __init__(self, state_dir: Path) -> None:
        self.users_path = state_dir / "webui-users.json"
        self.tokens_path = state_dir / "api-tokens.json"

    def device_key(self) -> bytes:
        """The key that signs device cookies, made on first use (mode 0600)."""
        path = self.users_path.parent / "webui-device.key"
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = b""
        except OSError as exc:
            raise StateFileError(f"{path}: cannot read: {exc}") from exc
        if len(key) < 32:
            key = secrets.token_bytes(32)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, key, 0o600)
            except OSError as exc:
                # A full or read-only state disk must not cost the WebUI: the key lives in
                # memory, and device cookies are forgotten at the next start.
                print(f"pacslb: {path}: cannot write ({exc}); device cookies last until restart")
        return key

    def users(self) -> dict[str, a.Role]:
        return {name: a.Role(u["role"]) for name, u in _read(self.users_path, "users").items()}

    def ensure_admin(self) -> str | None:
        """On first start there is no user: make `admin` with a random password and return it
        (the caller shows it once). There is never a default password."""
        if self.users_path.exists():
            return None
        password = a.generate_password()
        self.set_password("admin", password, a.Role.ADMIN)
        return password

    def set_password(self, user: str, password: str, role: a.Role | None = None) -> None:
        problem = a.password_problem(password)
        if problem:
            raise PacslbError(problem)
        users = _read(self.users_path, "users")
        keep = users.get(user, {}).get("role", a.Role.ADMIN)
        users[user] = {"hash": a.hash_password(password), "role": str(role or keep)}
        _write(self.users_path, "users", users)

    def check_password(self, user: str, password: str) -> a.Role | None:
        entry = _read(self.users_path, "users").get(user)
        ok = a.verify_password(password, entry["hash"] if entry else _DUMMY_HASH)
        return a.Role(entry["role"]) if ok and entry else None

    def stamp(self, user: str) -> tuple[str, a.Role] | None:
        """The user's current password hash and role, to check sessions against: `pacslb
        passwd` (another process) ends the sessions of the user whose password it changes."""
        entry = _read(self.users_path, "users").get(user)
        return None if entry is None else (str(entry["hash"]), a.Role(entry["role"]))

    def tokens(self) -> list[TokenInfo]:
        return [
            TokenInfo(tid, t["name"], a.Role(t["role"]), t["created"], t.get("by", ""))
            for tid, t in sorted(_read(self.tokens_path, "tokens").items())
        ]

    def create_token(self, name: str, role: a.Role, by: str) -> tuple[TokenInfo, str]:
        tokens = _read(self.tokens_path, "tokens")
        tid, secret = a.new_token()
        created = datetime.now(UTC).isoformat(timespec="seconds")
        tokens[tid] = {
            "name": name,
            "role": str(role),
            "hash": a.hash_token(secret),
            "created": created,
            "by": by,
        }
        _write(self.tokens_path, "tokens", tokens)
        return TokenInfo(tid, name, a.Role(role), created, by), secret

    def revoke(self, token_id: str) -> bool:
        tokens = _read(self.tokens_path, "tokens")
        if tokens.pop(token_id, None) is None:
            return False
        _write(self.tokens_path, "tokens", tokens)
        return True

    def check_token(self, token: str) -> TokenInfo | None:
        tid = a.token_id(token)
        entry = _read(self.tokens_path, "tokens").get(tid or "")
        if tid is None or entry is None or not a.token_matches(token, entry["hash"]):
            return None
        return TokenInfo(tid, entry["name"], a.Role(entry["role"]), entry["created"], "")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a logged-in user (session) or an API token."""

    name: str
    role: a.Role
    session: a.Session | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is a.Role.ADMIN


class Security:
    """Sessions, CSRF, the login limit and the anonymous /metrics networks, for one app.

    `record(message)` writes an `auth` event; what an attacker can cause (failed logins,
    refusals by the limit) is throttled so that a brute force cannot flood the event log."""

    def __init__(
        self, store: AuthStore, settings: WebUI, record: Callable[[str], None] | None = None
    ) -> None:
        self.store = store
        self.sessions = a.SessionTable(settings.session_lifetime)
        self.limiter = a.LoginLimiter()
        self.secret = secrets.token_bytes(32)  # per process, like the sessions it protects
        self.device_key = store.device_key()
        self.metrics_allow = list(settings.metrics_allow)
        self._record = record
        self._throttle = a.Throttle(limit=10, window=60.0)
        self._refusals = a.FirstSeen(window=60.0)
        self._flush: asyncio.TimerHandle | None = None

    def login(self, user: str, password: str, client: str, device: str | None = None) -> a.Session:
        """`device`: the request's device cookie, if any (see core/auth.py, LoginLimiter)."""
        now = time.monotonic()
        known = a.device_of(self.device_key, device, user)
        wait = self.limiter.retry_after(client, user, known, now)
        if wait > 0:
            # One event when a lockout begins, not one per refused try.
            first = self._refusals.first(f"{client} {user} {known}", now)
            self._attacker_event(
                f"login as {self._name(user)} from {client} refused: too many failed logins "
                f"(again in {wait:.0f} s)",
                now,
                worth_recording=first,
            )
            raise RateLimited(wait)
        role = self.store.check_password(user, password)
        stamp = self.store.stamp(user)
        if role is None or stamp is None:
            self.limiter.failure(client, user, known, now)
            device_text = " (a known device)" if known else ""
            self._attacker_event(
                f"failed login as {self._name(user)} from {client}{device_text}", now
            )
            raise LoginRefused("wrong user name or password")
        return self.sessions.create(user, role, now, stamp[0])

    def new_device(self, user: str) -> str:
        """A device cookie for `user`, given at each successful login."""
        return a.device_cookie(self.device_key, user)

    def _name(self, user: str) -> str:
        # A name that is no user is not repeated: people type their password into it.
        return repr(user) if self.store.stamp(user) is not None else "an unknown user"

    def _attacker_event(self, message: str, now: float, worth_recording: bool = True) -> None:
        """Record an event a guesser causes, within the throttle; what it holds back is counted
        and recorded as one line when the minute is over."""
        if self._record is None:
            return
        if worth_recording and self._throttle.allow(now):
            self._record(message)
            return
        self._throttle.held_back += 1
        if self._flush is None:
            with contextlib.suppress(RuntimeError):  # no event loop (a direct call in a test)
                loop = asyncio.get_running_loop()
                self._flush = loop.call_later(self._throttle.window, self._record_held_back)

    def _record_held_back(self) -> None:
        self._flush = None
        held = self._throttle.take_held_back()
        if held and self._record is not None:
            self._record(f"{held} more failed or refused logins in the last minute")

    def csrf(self, session: a.Session) -> str:
        return a.csrf_token(self.secret, session.id)

    def principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            info = self.store.check_token(credentials.strip())
            return None if info is None else Principal(f"token:{info.name}", info.role)
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE), time.monotonic())
        if session is None:
            return None
        current = self.store.stamp(session.user)
        if current is None or current[0] != session.stamp:
            self.sessions.end(session.id)  # password changed or user removed since login
            return None
        return Principal(session.user, current[1], session)

    def anonymous_metrics(self, request: Request) -> bool:
        if not self.metrics_allow or request.client is None:
            return False
        try:
            address = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(address in net for net in self.metrics_allow)


PEER_TOKEN = "token:ha-peer"  # the principal of a token minted by HA pairing


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def security(request: Request) -> Security:
    sec: Security = request.app.state.security
    return sec


async def reader(request: Request) -> Principal:
    """Anyone logged in or holding a token (admin or readonly)."""
    who = getattr(request.state, "principal", None) or security(request).principal(request)
    if who is None:
        raise HTTPException(401, NO_CREDENTIALS)
    if who.name == PEER_TOKEN and not request.url.path.startswith("/api/v1/ha/"):
        # The tokens an HA pairing mints for the peer (control/pairing.py) replicate, nothing
        # else: a peer's token that leaked is no admin token of the whole node.
        raise HTTPException(403, "the HA peer token may call /api/v1/ha/* only")
    if request.method not in SAFE_METHODS:
        await _check_csrf(request, who)
    return who


async def admin(request: Request) -> Principal:
    """An admin; a readonly user or token gets 403 on every changing endpoint."""
    who = await reader(request)
    if not who.is_admin:
        raise HTTPException(403, f"{who.name} has the readonly role")
    return who


async def _check_csrf(request: Request, who: Principal) -> None:
    """A browser sends its cookie with any request, even one a hostile page makes it send; only
    our own pages know the session's CSRF token. API tokens are never sent by a browser on its
    own, so requests that carry one need no CSRF token."""
    if who.session is None:
        return
    token = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if token is None and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    if not a.csrf_ok(security(request).secret, who.session.id, token):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")
