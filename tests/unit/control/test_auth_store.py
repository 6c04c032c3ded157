"""Users and API tokens on disk: hashes only, mode 0600, no default password."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pacslb.control.auth import AuthStore
from pacslb.core.auth import Role
from pacslb.errors import PacslbError


def test_first_start_generates_a_password_once(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    password = store.ensure_admin()
    assert password is not None
    assert store.ensure_admin() is None  # never again, never a default
    assert store.check_password("admin", password) is Role.ADMIN
    assert store.check_password("admin", password + "x") is None
    assert store.check_password("nobody", password) is None
    text = store.users_path.read_text()
    assert password not in text and "scrypt$" in text
    assert stat.S_IMODE(store.users_path.stat().st_mode) == 0o600


def test_set_password_keeps_role_and_refuses_short(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.set_password("viewer", "viewer password", Role.READONLY)
    store.set_password("viewer", "another password")
    assert store.check_password("viewer", "another password") is Role.READONLY
    with pytest.raises(PacslbError):
        store.set_password("viewer", "short")
    assert store.users() == {"viewer": Role.READONLY}


def test_tokens_are_stored_hashed_and_revocable(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    info, token = store.create_token("prometheus", Role.READONLY, "admin")
    assert token not in store.tokens_path.read_text()
    assert stat.S_IMODE(store.tokens_path.stat().st_mode) == 0o600
    found = store.check_token(token)
    assert found is not None and found.id == info.id and found.role is Role.READONLY
    assert store.check_token(token[:-1] + ("a" if token[-1] != "a" else "b")) is None
    assert [t.name for t in store.tokens()] == ["prometheus"]
    assert store.revoke(info.id)
    assert not store.revoke(info.id)
    assert store.check_token(token) is None
