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


def test_device_cookie_names_one_user_and_is_signed() -> None:
    key = b"k" * 32
    cookie = a.device_cookie(key, "admin")
    device = a.device_of(key, cookie, "admin")
    assert device is not None and device in cookie
    assert a.device_of(key, cookie, "viewer") is None  # another user's device is unknown
    assert a.device_of(b"x" * 32, cookie, "admin") is None  # another key (forged)
    assert a.device_of(key, cookie[:-2] + "AA", "admin") is None
    for junk in (None, "", "a.b", "...", "YWRtaW4..x"):
        assert a.device_of(key, junk, "admin") is None
    assert a.device_cookie(key, "admin") != cookie  # each login a new device id


def test_login_limiter_locks_out_the_attacker_not_the_known_device() -> None:
    limiter = a.LoginLimiter(per_device=5, per_address_user=5, per_address=20, per_user=30)
    for i in range(5):  # an attacker guesses admin's password from a shared address
        assert limiter.retry_after("10.0.0.1", "admin", None, now=float(i)) == 0
        limiter.failure("10.0.0.1", "admin", None, now=float(i))
    assert limiter.retry_after("10.0.0.1", "admin", None, now=10) == 50
    assert limiter.retry_after("10.0.0.1", "admin", "dev-1", now=10) == 0  # the admin's browser
    assert limiter.retry_after("10.0.0.1", "viewer", None, now=10) == 0  # another user
    assert limiter.retry_after("10.0.0.2", "admin", None, now=10) == 0  # another address
    for i in range(5):  # a known device mistyping is limited on its own key
        limiter.failure("10.0.0.1", "admin", "dev-1", now=20 + i)
    assert limiter.retry_after("10.0.0.1", "admin", "dev-1", now=30) > 0
    assert limiter.retry_after("10.0.0.1", "admin", "dev-2", now=30) == 0
    assert limiter.retry_after("10.0.0.1", "admin", None, now=61) == 0  # the window slid


def test_login_limiter_per_address_and_per_user_for_unknown_devices() -> None:
    limiter = a.LoginLimiter(per_address_user=5, per_address=20, per_user=30)
    for i in range(20):  # a sweep of user names from one address
        limiter.failure("10.0.0.1", f"user{i}", None, now=1)
    assert limiter.retry_after("10.0.0.1", "someone", None, now=2) > 0
    assert limiter.retry_after("10.0.0.1", "someone", "dev", now=2) == 0
    for i in range(30):  # one user from many addresses
        limiter.failure(f"10.1.0.{i}", "admin", None, now=1)
    assert limiter.retry_after("10.2.0.1", "admin", None, now=2) > 0
    assert limiter.retry_after("10.2.0.1", "admin", "dev", now=2) == 0


def test_forwarded_client_believes_only_trusted_proxies() -> None:
    import ipaddress

    proxies = [ipaddress.ip_network("10.0.0.0/30"), ipaddress.ip_network("fd00::1/128")]
    assert a.forwarded_client("192.0.2.7", ["198.51.100.1"], proxies) == "192.0.2.7"
    assert a.forwarded_client("10.0.0.1", ["198.51.100.1"], proxies) == "198.51.100.1"
    # The client wrote the left part; our proxy appended the right-most entry.
    assert a.forwarded_client("10.0.0.1", ["1.2.3.4, 198.51.100.1"], proxies) == "198.51.100.1"
    assert a.forwarded_client("10.0.0.1", ["1.2.3.4", "198.51.100.1"], proxies) == "198.51.100.1"
    # Through two of our proxies: skip both.
    assert a.forwarded_client("10.0.0.1", ["198.51.100.1, 10.0.0.2"], proxies) == "198.51.100.1"
    assert a.forwarded_client("fd00::1", ["2001:db8::5"], proxies) == "2001:db8::5"
    assert a.forwarded_client("10.0.0.1", [], proxies) == "10.0.0.1"
    assert a.forwarded_client("10.0.0.1", ["not-an-address"], proxies) == "10.0.0.1"
    assert a.forwarded_client("10.0.0.1", ["198.51.100.1"], []) == "10.0.0.1"
    assert a.forwarded_client("testclient", ["198.51.100.1"], proxies) == "testclient"


def test_throttle_and_first_seen() -> None:
    throttle = a.Throttle(limit=3, window=60)
    assert [throttle.allow(now=float(i)) for i in range(5)] == [True, True, True, False, False]
    throttle.held_back += 2
    assert throttle.take_held_back() == 2 and throttle.take_held_back() == 0
    assert throttle.allow(now=60.5)  # the first one left the window
    seen = a.FirstSeen(window=60)
    assert seen.first("x", now=0) and not seen.first("x", now=30) and seen.first("y", now=30)
    assert seen.first("x", now=61)
