"""`pacslb backup` and `pacslb restore` against a real `pacslb run` and its HTTPS API.

A node is set up as an operator would (a WebUI certificate of its own named in the config, a
config change over the API, a drained and a halted server, an API token), backed up with the
CLI, and its state directory, config file and certificate are deleted. The restore brings them
back; a second `pacslb run` on them has the same revisions, admin states and logins (the old
password logs in through the API, the old token answers). Archives that are truncated, corrupt,
edited or carrying an extra member are refused, and the target is left as it was.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from tests.faults.control_run import Pacslb
from tests.peers.procs import free_port, http_peer

from pacslb.core.certs import self_signed

HOST = "127.10.5.1"  # this helper's loopback block
VIP = "127.10.5.30"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def write_node(tmp: Path, web: int, rip1: int, rip2: int) -> tuple[Path, Path]:
    certs = tmp / "etc" / "certs"
    certs.mkdir(parents=True)
    cert, key = self_signed(HOST, datetime.datetime.now(datetime.UTC), addresses=[HOST])
    (certs / "webui.pem").write_bytes(cert)
    (certs / "webui.key").write_bytes(key)
    config = tmp / "etc" / "pacslb.yaml"
    config.write_text(
        f"""version: 1
node:
  webui: {{listen: "{HOST}:{web}", certificate: certs/webui.pem, key: certs/webui.key}}
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [{free_port(VIP)}]
    mode: l7-http
    health_check: {{type: http, path: /ok, expect: OK, interval: 0.5, timeout: 0.4}}
    real_servers:
      - {{label: Srv1, address: {HOST}, port: {rip1}}}
      - {{label: Srv2, address: {HOST}, port: {rip2}}}
"""
    )
    return config, certs


def snapshot(state: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(state)): p.read_bytes()
        for p in sorted(state.rglob("*"))
        if p.is_file() and not p.name.endswith((".sock", ".log"))
    }


def test_backup_restore_round_trip_through_a_real_node(tmp_path: Path) -> None:
    rip1, rip2, web = free_port(HOST), free_port(HOST), free_port(HOST)
    config, certs = write_node(tmp_path, web, rip1, rip2)
    state = tmp_path / "state"
    archive = tmp_path / "node.tar.gz"
    with ExitStack() as stack:
        stack.enter_context(http_peer(HOST, rip1, "/ok=200:OK"))
        stack.enter_context(http_peer(HOST, rip2, "/ok=200:OK"))
        node = Pacslb(config, state, (HOST, web), tmp_path / "run1.log")
        _start(node, stack, certs / "webui.pem")
        r = node.api("POST", "/virtual_services/Web/real_servers/Srv2/drain")
        assert r.status_code == 200, r.text
        r = node.api("POST", "/tokens", {"name": "monitoring", "role": "readonly"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        r = node.api("GET", "/config")
        assert r.status_code == 200, r.text
        changed = r.json()
        changed["virtual_services"][0]["real_servers"][0]["weight"] = 50
        r = node.api("PUT", "/config", changed)
        assert r.status_code == 200, r.text
        node.cli("halt", "Web", "Srv1")
        revisions = node.api("GET", "/config/revisions").json()
        assert len(revisions) == 2  # the start, and the change above

        # Backup while it runs: the config file comes from the running process.
        out = cli("backup", str(archive), "--state-dir", str(state))
        assert "wrote" in out.stdout, out.stderr
        node.stop()

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "MANIFEST.json"
    for expected in (
        "state/revisions/index.json",
        "state/revisions/000001.yaml",
        "state/revisions/000002.yaml",
        "state/admin-state.json",
        "state/webui-users.json",
        "state/api-tokens.json",
        "files" + str(config.resolve()),
        "files" + str((certs / "webui.pem").resolve()),
        "files" + str((certs / "webui.key").resolve()),
    ):
        assert expected in names, names
    assert not any(n.endswith((".log", ".sock", "events.jsonl")) for n in names), names
    assert archive.stat().st_mode & 0o077 == 0  # password hashes and keys inside

    before = snapshot(state)
    config_text = config.read_bytes()
    shutil.rmtree(state)
    shutil.rmtree(certs)
    config.unlink()

    out = cli("restore", str(archive), "--state-dir", str(state))
    assert "restored 2 config revisions (latest 2)" in out.stdout, out.stdout + out.stderr
    assert config.read_bytes() == config_text
    after = snapshot(state)
    for name in ("revisions/index.json", "admin-state.json", "webui-users.json", "api-tokens.json"):
        assert after[name] == before[name], name
    assert (state / "webui-users.json").stat().st_mode & 0o777 == 0o600

    # A restored node: the same revisions, admin states and logins.
    with ExitStack() as stack:
        stack.enter_context(http_peer(HOST, rip1, "/ok=200:OK"))
        stack.enter_context(http_peer(HOST, rip2, "/ok=200:OK"))
        node = Pacslb(config, state, (HOST, web), tmp_path / "run2.log")
        _start(node, stack, certs / "webui.pem")  # logs in with the old password
        listed = node.api("GET", "/config/revisions").json()
        assert [r["sha256"] for r in listed[:2]] == [r["sha256"] for r in revisions]
        servers = {
            rs["label"]: rs
            for rs in node.api("GET", "/status").json()["services"][0]["real_servers"]
        }
        assert servers["Srv1"]["admin"] == "halt" and servers["Srv2"]["admin"] == "drain"
        assert servers["Srv1"]["weight"] == 50
        assert node.client is not None
        r = node.client.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        node.stop()


def _start(node: Pacslb, stack: ExitStack, cafile: Path) -> None:
    """Pacslb.start, trusting the node's own certificate (it trusts the generated one's path)."""
    generated = node.state / "webui-cert.pem"
    node.state.mkdir(parents=True, exist_ok=True)
    shutil.copy(cafile, generated)  # Pacslb.start trusts this path
    try:
        node.start(stack)
    finally:
        generated.unlink(missing_ok=True)
    assert isinstance(node.client, httpx.Client)


# --- refusals: nothing changed -------------------------------------------------------------


@pytest.fixture
def good_archive(tmp_path: Path) -> Path:
    """A backup of a state directory made without a running node (revisions saved by the CLI)."""
    state = tmp_path / "src-state"
    config = tmp_path / "pacslb.yaml"
    config.write_text(
        "version: 1\nvirtual_services:\n  - label: Web\n    vip: 127.10.5.30\n    ports: [80]\n"
        "    mode: l7-http\n    real_servers:\n      - {label: Srv1, address: 127.10.5.1}\n"
    )
    cli("config", "save", "--file", str(config), "--state-dir", str(state))
    archive = tmp_path / "good.tar.gz"
    cli("backup", str(archive), "--state-dir", str(state), "--config", str(config))
    return archive


def _rewrite(archive: Path, out: Path, change: str) -> None:
    """A copy of `archive` with one member changed (`edit`), or one added (`add`)."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if change == "edit" and info.name == "state/revisions/000001.yaml":
                data = data.replace(b"127.10.5.1", b"127.10.5.9")
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if change == "add":
            extra = b"#!/bin/sh\n"
            info = tarfile.TarInfo("state/hooks.sh")
            info.size = len(extra)
            tar.addfile(info, io.BytesIO(extra))
    out.write_bytes(buf.getvalue())


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "edited", "extra", "not-gzip"])
def test_a_broken_archive_is_refused_and_changes_nothing(
    tmp_path: Path, good_archive: Path, damage: str
) -> None:
    raw = good_archive.read_bytes()
    bad = tmp_path / f"{damage}.tar.gz"
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "corrupt":
        middle = len(raw) // 2
        bad.write_bytes(
            raw[:middle] + bytes(b ^ 0xFF for b in raw[middle : middle + 16]) + raw[middle + 16 :]
        )
    elif damage == "edited":
        _rewrite(good_archive, bad, "edit")
    elif damage == "extra":
        _rewrite(good_archive, bad, "add")
    else:
        bad.write_bytes(b"this is not an archive\n")

    # Onto an empty state directory: stays empty.
    empty = tmp_path / "empty-state"
    empty.mkdir()
    out = cli("restore", str(bad), "--state-dir", str(empty), check=False)
    assert out.returncode == 1, out.stdout
    assert "not a usable pacslb backup" in out.stderr, out.stderr
    assert list(empty.iterdir()) == []

    # Onto an existing one with --force: byte for byte as before.
    existing = tmp_path / "existing-state"
    cli("restore", str(good_archive), "--state-dir", str(existing))
    before = snapshot(existing)
    out = cli("restore", str(bad), "--state-dir", str(existing), "--force", check=False)
    assert out.returncode == 1 and "not a usable pacslb backup" in out.stderr, out.stderr
    assert snapshot(existing) == before
    assert not [p for p in existing.iterdir() if p.name.startswith((".restore-", "pre-restore-"))]


def test_restore_refuses_existing_state_without_force_and_sets_it_aside_with(
    tmp_path: Path, good_archive: Path
) -> None:
    state = tmp_path / "state"
    cli("restore", str(good_archive), "--state-dir", str(state))
    before = snapshot(state)
    out = cli("restore", str(good_archive), "--state-dir", str(state), check=False)
    assert out.returncode == 1 and "already holds state" in out.stderr, out.stderr
    assert snapshot(state) == before
    out = cli("restore", str(good_archive), "--state-dir", str(state), "--force")
    assert "the state it replaced is in" in out.stdout
    aside = [p for p in state.iterdir() if p.name.startswith("pre-restore-")]
    assert len(aside) == 1
    assert (aside[0] / "revisions" / "index.json").read_bytes() == before["revisions/index.json"]
    assert snapshot(state)["revisions/index.json"] == before["revisions/index.json"]


def test_manifest_lists_every_member_with_its_sha256(good_archive: Path) -> None:
    with tarfile.open(good_archive) as tar:
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
        for entry in manifest["members"]:
            data = tar.extractfile(entry["name"]).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert manifest["format"] == "pacslb-backup" and manifest["pacslb"]
    assert gzip.decompress(good_archive.read_bytes())[:512]  # a plain tar.gz for tar(1)
