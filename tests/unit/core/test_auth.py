"""Password hashes, tokens, CSRF, sessions and the login rate limit (pure, time passed in)."""

from __future__ import annotations

from pacslb.core import auth as a


def test_password_hash_verifies_only_the_same_password() -> None:
    stored = a.hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$")
    assert a.verify_password("correct horse", stored)
    assert not a.verify_password("correct hors", stored)
    assert not a.verify_password("correct horse", "garbage")
    assert not a.verify_password("x", "bcrypt$1$2$3$4$5")


def test_same_password_different_salt() -> None:
    assert a.hash_password("same password") != a.hash_password("same password")


def test_generated_password_is_long_and_unambiguous() -> None:
    passwords = {a.generate_password() for _ in range(20)}
    assert len(passwords) == 20
    for pw in passwords:
        assert len(pw) == 18 and a.password_problem(pw) is None
        assert not set(pw) & set("0O1lI")
    assert a.password_problem("short") is not None


def test_token_carries_its_id_and_matches_only_its_hash() -> None:
    tid, token = a.new_token()
    assert a.token_id(token) == tid
    stored = a.hash_token(token)
    assert a.token_matches(token, stored)
    assert not a.token_matches(token + "x", stored)
    assert a.token_id("Bearer nonsense") is None
    assert a.token_id("pacslb_") is None


def test_csrf_token_is_bound_to_session_and_secret() -> None:
    secret = b"k" * 32
    token = a.csrf_token(secret, "session-1")
    assert a.csrf_ok(secret, "session-1", token)
    assert not a.csrf_ok(secret, "session-2", token)
    assert not a.csrf_ok(b"other" * 8, "session-1", token)
    assert not a.csrf_ok(secret, "session-1", None)
    assert not a.csrf_ok(secret, "session-1", "")


def test_sessions_expire_and_end() -> None:
    table = a.SessionTable(lifetime=100)
    s = table.create("admin", a.Role.ADMIN, now=1000)
    assert table.get(s.id, now=1099) == s
    assert table.get(s.id, now=1100) is None  # expired, and dropped
    assert len(table) == 0
    s2 = table.create("viewer", a.Role.READONLY, now=2000)
    table.end(s2.id)
    assert table.get(s2.id, now=2001) is None
    assert table.get(None, now=0) is None


def test_rate_limit_blocks_after_five_failures_in_a_minute() -> None:
    limiter = a.RateLimiter(limit=5, window=60)
    for i in range(5):
        assert not limiter.blocked("127.0.0.9", now=float(i))
        limiter.failure("127.0.0.9", now=float(i))
    assert limiter.blocked("127.0.0.9", now=10)
    assert not limiter.blocked("127.0.0.8", now=10)  # per source address
    assert limiter.retry_after("127.0.0.9", now=10) == 50
    assert not limiter.blocked("127.0.0.9", now=60.5)  # the oldest failure left the window
    assert not limiter.blocked("127.0.0.9", now=200)
    assert limiter.retry_after("127.0.0.9", now=200) == 0
