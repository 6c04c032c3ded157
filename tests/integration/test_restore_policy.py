"""`pacslb restore` writes only what a pacslb backup holds, with clamped modes.

The manifest is not signed, so an archive edited with a consistent manifest (sha256 sums
recomputed) passes the integrity checks; what it may write is then decided from the restored
config alone (control/restore_policy.py). Each refused archive leaves the target as it was and
writes nothing outside it. The archives are made by `pacslb backup` of a state directory with
revisions saved by the CLI and a config naming a WebUI certificate and key.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import secrets
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pacslb.core.certs import self_signed

HOST = "127.10.13.1"  # this helper's loopback block
Members = dict[str, tuple[bytes, int]]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(archive, config file, certificate folder) of a backup made by the CLI."""
    certs = tmp_path / "etc" / "certs"
    certs.mkdir(parents=True)
    cert, key = self_signed(HOST, datetime.datetime.now(datetime.UTC), addresses=[HOST])
    (certs / "webui.pem").write_bytes(cert)
    (certs / "webui.pem").chmod(0o666)  # too open: a restore writes it 0o644
    (certs / "webui.key").write_bytes(key)
    (certs / "webui.key").chmod(0o644)  # too open: a restore writes it 0o600
    config = tmp_path / "etc" / "pacslb.yaml"
    config.write_text(
        f"""version: 1
node:
  webui: {{listen: "{HOST}:9443", certificate: {certs}/webui.pem, key: {certs}/webui.key}}
virtual_services:
  - label: Web
    vip: 127.10.13.30
    ports: [80]
    mode: l7-http
    real_servers:
      - {{label: Srv1, address: {HOST}}}
"""
    )
    state = tmp_path / "src-state"
    cli("config", "save", "--file", str(config), "--state-dir", str(state))
    (state / "admin-state.json").write_text('{"version": 1, "servers": {}}')
    (state / "admin-state.json").chmod(0o664)
    (state / "notes.txt").write_text("an operator's note\n")  # no part of pacslb keeps it
    archive = tmp_path / "good.tar.gz"
    out = cli("backup", str(archive), "--state-dir", str(state), "--config", str(config))
    assert "left out state/notes.txt" in out.stderr, out.stderr
    assert "credentials" in out.stderr
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    return archive, config, certs


def rewrite(archive: Path, out: Path, edit: Callable[[Members, dict[str, object]], None]) -> None:
    """A copy of `archive` changed by `edit`, with a manifest that matches it (as anyone who
    can write the archive can make: it is not signed)."""
    with tarfile.open(archive) as tar:
        members: Members = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            members[m.name] = (f.read(), m.mode)
    meta = json.loads(members.pop("MANIFEST.json")[0])
    edit(members, meta)
    meta["members"] = [
        {"name": n, "size": len(d), "mode": mode, "sha256": hashlib.sha256(d).hexdigest()}
        for n, (d, mode) in members.items()
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        head = json.dumps(meta).encode()
        for name, data, mode in [("MANIFEST.json", head, 0o600)] + [
            (n, d, mode) for n, (d, mode) in members.items()
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(buf.getvalue())


def refused(tmp_path: Path, bad: Path, naming: str, outside: Path | None = None) -> None:
    """Restored into an empty state dir and, with --force, over an existing one: refused,
    naming `naming`, and nothing changed (nor `outside` written)."""
    empty = tmp_path / "empty-state"
    empty.mkdir(exist_ok=True)
    done = cli("restore", str(bad), "--state-dir", str(empty), "--force", check=False)
    assert done.returncode == 1, done.stdout
    assert "refused, nothing was changed" in done.stderr and naming in done.stderr, done.stderr
    assert list(empty.iterdir()) == []
    if outside is not None:
        assert not outside.exists() and not outside.is_symlink()


def test_a_member_for_a_path_the_config_does_not_name_is_refused(
    tmp_path: Path, source: tuple[Path, Path, Path]
) -> None:
    archive, _, _ = source
    cron = Path(f"/etc/cron.d/pacslb-test-{secrets.token_hex(4)}")  # must never be written
    bad = tmp_path / "cron.tar.gz"

    def add_cron(members: Members, meta: dict[str, object]) -> None:
        members["files" + str(cron)] = (b"# harmless if it were ever written\n", 0o644)

    rewrite(archive, bad, add_cron)
    refused(tmp_path, bad, f"files{cron}", outside=cron)


def test_a_setuid_mode_is_refused(tmp_path: Path, source: tuple[Path, Path, Path]) -> None:
    archive, _, certs = source
    bad = tmp_path / "setuid.tar.gz"
    name = "files" + str(certs / "webui.pem")

    def setuid(members: Members, meta: dict[str, object]) -> None:
        members[name] = (members[name][0], 0o4755)

    rewrite(archive, bad, setuid)
    (certs / "webui.pem").unlink()  # so a restore would write it
    refused(tmp_path, bad, name, outside=certs / "webui.pem")


def test_an_unknown_state_file_and_a_config_file_outside_yaml_are_refused(
    tmp_path: Path, source: tuple[Path, Path, Path]
) -> None:
    archive, _, _ = source
    bad = tmp_path / "hook.tar.gz"

    def hook(members: Members, meta: dict[str, object]) -> None:
        members["state/hooks/run.sh"] = (b"#!/bin/sh\n", 0o700)

    rewrite(archive, bad, hook)
    refused(tmp_path, bad, "state/hooks/run.sh")

    # The manifest names where the config file goes: a cron folder is no config file.
    cron = Path(f"/etc/cron.d/pacslb-test-{secrets.token_hex(4)}")

    def move_config(members: Members, meta: dict[str, object]) -> None:
        old = "files" + str(meta["config_file"])
        members["files" + str(cron)] = members.pop(old)
        meta["config_file"] = str(cron)

    rewrite(archive, bad, move_config)
    refused(tmp_path, bad, str(cron), outside=cron)


def test_restored_modes_are_clamped(tmp_path: Path, source: tuple[Path, Path, Path]) -> None:
    archive, config, certs = source
    for path in (config, certs / "webui.pem", certs / "webui.key"):
        path.unlink()
    state = tmp_path / "restored"
    done = cli("restore", str(archive), "--state-dir", str(state))
    assert str(certs / "webui.key") in done.stdout, done.stdout
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (config, *certs.iterdir())}
    assert mode[certs / "webui.pem"] == 0o644  # was 0o666
    assert mode[certs / "webui.key"] == 0o600  # was 0o644
    assert mode[config] & 0o133 == 0  # at most 0o644
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), [
        (p, oct(p.stat().st_mode)) for p in files
    ]
    assert not (state / "notes.txt").exists()  # left out of the backup
    assert (state / "admin-state.json").read_text() == '{"version": 1, "servers": {}}'
