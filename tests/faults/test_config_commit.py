"""A change is committed revision-first or not at all (issue 14, item 4).

Fault: the state directory is a 1 MiB tmpfs filled to the last page, as a full /var would be.
An API change must be refused with its reason (507, "state disk full: ... (ENOSPC)"), leave
the config file, the revisions and the running config as they were, say so as an event, and a
restart must not apply it. `pacslb reload` must get the reason too, not "connection closed"."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.faults.control_run import Pacslb
from tests.peers.procs import free_port
from tests.webapp import headers, login, web_client

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
        r = run.api("POST", "/virtual_services/Web/real_servers/Srv1/drain")  # an admin change
        assert r.status_code == 507 and "state disk full" in r.json()["detail"], r.text
        assert run.cli_status()["services"][0]["real_servers"][0]["admin"] == "online"
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
        fill(state)  # and the restart finds the disk still full: it starts all the same
        again = Pacslb(config, state, (WEB_HOST, web_port), tmp_path / "again.log")
        again.start(stack)
        servers = again.api("GET", "/virtual_services/Web/real_servers").json()
        assert [rs["label"] for rs in servers] == ["Srv1"]  # the refused change never went live
        assert [rev["number"] for rev in again.api("GET", "/config/revisions").json()] == [1]
        again.stop()


def test_config_file_not_written_withdraws_the_saved_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revision is saved first; if the config file then cannot be replaced (here: its
    disk is read-only), the revision is withdrawn and nothing is applied."""
    import pacslb.control.app

    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        before = process.config_path.read_text()

        def read_only(path: Path, data: bytes, mode: int = 0o644) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(pacslb.control.app, "write_atomic", read_only)
        server = {"label": "Srv3", "address": "127.10.3.5", "port": 18083}
        r = client.post("/api/v1/virtual_services/Web/real_servers", json=server, headers=h)
        assert r.status_code == 500, r.text
        detail = r.json()["detail"]
        assert detail.startswith("config disk read-only: cannot write ") and "EROFS" in detail
        assert process.config_path.read_text() == before
        assert [rev.number for rev in process.store.revisions()] == [1]
        assert process.revision == 1
        assert [rs.label for rs in process.config.virtual_services[0].real_servers] == [
            "Srv1",
            "Srv2",
        ]
        events = client.get("/api/v1/events", params={"kind": "config"}).json()
        assert "change refused: config disk read-only" in events[-1]["message"]
        # The WebUI's form shows the same reason on the page, not an error document.
        overview = client.get("/").text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', overview)[1]  # type: ignore[index]
        form = {"csrf_token": csrf, "label": "Srv3", "address": "127.10.3.5", "port": "18083"}
        r = client.post("/services/Web/servers/new", data=form)
        assert r.status_code == 500 and "config disk read-only" in r.text
        assert "<html" in r.text.lower()
        assert [rev.number for rev in process.store.revisions()] == [1]

        monkeypatch.undo()  # the disk is back: the same change goes through, as revision 2
        r = client.post("/api/v1/virtual_services/Web/real_servers", json=server, headers=h)
        assert r.status_code == 201 and r.json()["revision"] == 2
        assert "Srv3" in process.config_path.read_text()
