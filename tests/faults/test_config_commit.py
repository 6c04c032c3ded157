"""A change is committed revision-first or not at all (issue 14, item 4).

Fault: the state directory is a 1 MiB tmpfs filled to the last page, as a full /var would be.
An API change must be refused with its reason (507, "state disk full: ... (ENOSPC)"), leave
the config file, the revisions and the running config as they were, say so as an event, and a
restart must not apply it. `pacslb reload` must get the reason too, not "connection closed"."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.faults.control_run import Pacslb
from tests.peers.procs import free_port

pytestmark = pytest.mark.timeout(120)

WEB_HOST = "127.10.3.1"
VIP = "127.10.3.10"


def config_text(web_port: int, vip_port: int) -> str:
    return f"""version: 1
node:
  webui: {{listen: "{WEB_HOST}:{web_port}"}}
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [{vip_port}]
    mode: l7-tcp
    health_check: {{type: none}}
    real_servers:
      - {{label: Srv1, address: 127.10.3.2, port: 18081}}
"""


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=True,
        timeout=10,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=10)


def fill(directory: Path) -> Path:
    """Write a file until the file system says ENOSPC; return it (deleting it frees the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(4096):  # bounded: 4096 x 4 KiB = 16 MiB, far past a 1 MiB tmpfs
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            raise AssertionError(f"{directory} never filled up")
    finally:
        os.close(fd)
    return filler


def snapshot(state: Path) -> dict[str, bytes]:
    revisions = state / "revisions"
    return {p.name: p.read_bytes() for p in sorted(revisions.iterdir()) if p.name != ".lock"}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs as the state dir needs root")
def test_full_state_disk_refuses_the_change_with_its_reason(tmp_path: Path) -> None:
    config = tmp_path / "pacslb.yaml"
    web_port, vip_port = free_port(WEB_HOST), free_port(VIP)
    original = config_text(web_port, vip_port)
    config.write_text(original)
    new_server = {"label": "Srv2", "address": "127.10.3.3", "port": 18082}
    with tmpfs(tmp_path / "state", "1m") as state, ExitStack() as stack:
        run = Pacslb(config, state, (WEB_HOST, web_port), tmp_path / "run.log")
        run.start(stack)
        revisions = snapshot(state)
        assert run.api("GET", "/config/revisions").json()[-1]["number"] == 1
        filler = fill(state)

        r = run.api("POST", "/virtual_services/Web/real_servers", new_server)
        assert r.status_code == 507, (r.status_code, r.text)
        detail = r.json()["detail"]
        assert "state disk full" in detail and "ENOSPC" in detail, detail
        assert config.read_text() == original  # the file still holds the running config
        os.unlink(filler)  # the rest reads and must not depend on free space
        assert snapshot(state) == revisions  # no new revision, no temp file left behind
        servers = run.api("GET", "/virtual_services/Web/real_servers").json()
        assert [rs["label"] for rs in servers] == ["Srv1"]  # running config unchanged
        assert run.cli_status()["revision"] == 1
        assert any("change refused" in m and "ENOSPC" in m for m in run.events("config"))

        # A reload over the control socket gets the reason as well.
        filler = fill(state)
        config.write_text(
            original.replace(
                "port: 18081}",
                "port: 18081}\n      - {label: Srv3, address: 127.10.3.4, port: 18083}",
            )
        )
        out = run.cli("reload", check=False)
        assert out.returncode != 0
        assert "state disk full" in out.stderr and "closed" not in out.stderr, out.stderr
        config.write_text(original)
        os.unlink(filler)
        assert run.cli_status()["revision"] == 1

        run.stop()
        assert config.read_text() == original
        again = Pacslb(config, state, (WEB_HOST, web_port), tmp_path / "again.log")
        again.start(stack)
        servers = again.api("GET", "/virtual_services/Web/real_servers").json()
        assert [rs["label"] for rs in servers] == ["Srv1"]  # the refused change never went live
        assert [rev["number"] for rev in again.api("GET", "/config/revisions").json()] == [1]
        again.stop()
