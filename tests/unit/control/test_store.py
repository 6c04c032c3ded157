from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
from pathlib import Path
from typing import Any

import pytest

from pacslb.control.store import (
    AdminStateStore,
    ConfigStore,
    RevisionNotFound,
    StateFileError,
    StorageError,
    file_exists,
    write_atomic,
)
from pacslb.core.state import AdminState
from pacslb.errors import ConfigError

EMPTY = "version: 1\nvirtual_services: []\n"
WEB = """\
# the web tier (this comment must survive)
version: 1
virtual_services:
  - label: Web
    vip: 127.0.0.30
    ports: [8080]
    mode: l7-tcp
    real_servers:
      - {label: Srv1, address: 127.0.0.1, port: 9001}
"""
WEB2 = WEB.replace("port: 9001", "port: 9002")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- ConfigStore ---------------------------------------------------------------------------


def test_save_first_revision_keeps_exact_text(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    rev = store.save(WEB, comment="first", author="alice")
    assert (rev.number, rev.comment, rev.author) == (1, "first", "alice")
    assert rev.created.utcoffset() is not None
    assert store.text(1) == WEB
    assert (tmp_path / "revisions" / "000001.yaml").read_bytes() == WEB.encode()
    assert store.latest() == rev == store.get(1)
    assert store.config(1).virtual_services[0].label == "Web"


def test_identical_save_returns_latest(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    first = store.save(EMPTY)
    assert store.save(EMPTY, comment="again") == first
    assert [r.number for r in store.revisions()] == [1]
    assert store.save(WEB).number == 2


def test_invalid_config_writes_nothing(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(ConfigError) as err:
        store.save("version: 1\nvirtual_services: [{label: x}]\n")
    assert err.value.problems
    assert listing(tmp_path) == before

    store.save(EMPTY)
    before = listing(tmp_path)
    with pytest.raises(ConfigError):
        store.save("version: 2\n")
    assert listing(tmp_path) == before
    assert [r.number for r in store.revisions()] == [1]


def test_numbering_continues_across_instances(tmp_path: Path) -> None:
    ConfigStore(tmp_path).save(EMPTY)
    ConfigStore(tmp_path).save(WEB)
    store = ConfigStore(tmp_path)
    assert store.save(WEB2).number == 3
    assert [r.number for r in store.revisions()] == [1, 2, 3]
    assert store.text(2) == WEB


def test_diff_shows_changed_lines(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    store.save(WEB)
    store.save(WEB2)
    diff = store.diff(1, 2)
    assert diff.startswith("--- revision 1\n+++ revision 2\n")
    assert "-      - {label: Srv1, address: 127.0.0.1, port: 9001}\n" in diff
    assert "+      - {label: Srv1, address: 127.0.0.1, port: 9002}\n" in diff
    assert store.diff(1, 1) == ""


def test_rollback_appends_old_text(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    store.save(WEB)
    store.save(WEB2)
    rev = store.rollback(1, author="bob")
    assert (rev.number, rev.comment, rev.author) == (3, "rollback to revision 1", "bob")
    assert store.text(3) == WEB
    assert store.text(2) == WEB2  # history untouched


def test_unknown_revision(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    assert store.latest() is None
    assert store.revisions() == []
    store.save(EMPTY)
    for call in (store.get, store.text, store.config, store.rollback):
        with pytest.raises(RevisionNotFound, match="revision 7"):
            call(7)
    with pytest.raises(LookupError):
        store.diff(1, 7)


def test_orphan_revision_file_is_overwritten(tmp_path: Path) -> None:
    # A crash between writing 000002.yaml and committing the index leaves an orphan.
    store = ConfigStore(tmp_path)
    store.save(EMPTY)
    (tmp_path / "revisions" / "000002.yaml").write_text("half-written junk")
    assert store.save(WEB).number == 2
    assert store.text(2) == WEB


def test_corrupt_index_and_tampered_revision(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    store.save(EMPTY)
    (tmp_path / "revisions" / "000001.yaml").write_text(EMPTY + "# edited\n")
    with pytest.raises(StateFileError, match=re.escape("000001.yaml")):
        store.text(1)
    index = tmp_path / "revisions" / "index.json"
    index.write_text("{not json")
    with pytest.raises(StateFileError, match=re.escape(str(index))):
        store.latest()


def _save_many(state_dir: str, worker: int, count: int) -> None:
    store = ConfigStore(Path(state_dir))
    for i in range(count):
        store.save(f"{EMPTY}# worker {worker} save {i}\n")


def test_concurrent_saves_take_distinct_numbers(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path), w, 10)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]

    store = ConfigStore(tmp_path)
    revs = store.revisions()
    assert [r.number for r in revs] == list(range(1, 21))
    texts = {store.text(r.number) for r in revs}
    expected = {f"{EMPTY}# worker {w} save {i}\n" for w in range(2) for i in range(10)}
    assert texts == expected


def test_a_full_disk_commits_nothing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ConfigStore(tmp_path)
    store.save(WEB)
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError) as caught:
        store.save(WEB2, comment="refused")
    monkeypatch.setattr(os, "write", real_write)
    message = str(caught.value)
    assert caught.value.disk_full and caught.value.errno == errno.ENOSPC
    assert message.startswith("state disk full: cannot write ") and message.endswith("(ENOSPC)")
    assert "000002.yaml" in message  # the file, not the temp file
    assert [r.number for r in store.revisions()] == [1]
    assert listing(tmp_path) == [
        "revisions",
        "revisions/.lock",
        "revisions/000001.yaml",
        "revisions/index.json",
    ]  # no temp file left


def test_withdraw_undoes_the_latest_commit_only(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    first = store.save(WEB)
    second = store.save(WEB2, comment="its file could not be written")
    with pytest.raises(LookupError):
        store.withdraw(first)  # it took effect: history is not rewritten
    store.withdraw(second)
    assert store.revisions() == [first]
    assert not (tmp_path / "revisions" / "000002.yaml").exists()
    assert store.save(WEB2).number == 2  # its number is taken again


def test_a_read_only_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(StorageError, match=r"^state disk read-only: .*\(EROFS\)$") as caught:
        ConfigStore(tmp_path).save(WEB)
    assert not caught.value.disk_full


# --- write_atomic --------------------------------------------------------------------------


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert listing(tmp_path) == ["f.json"]


def test_interrupted_write_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["f.json"]


# --- AdminStateStore -----------------------------------------------------------------------


def test_admin_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "admin-state.json"
    store = AdminStateStore(path)
    assert store.get("Web", "Srv1") is AdminState.ONLINE
    assert store.all() == {}
    store.set("Web", "Srv1", AdminState.DRAIN)
    store.set("Web", "Srv2", AdminState.HALT)
    store.set("DICOM", "Srv1", AdminState.HALT)

    again = AdminStateStore(path)
    assert again.get("Web", "Srv1") is AdminState.DRAIN
    assert again.get("Web", "Srv3") is AdminState.ONLINE
    assert again.all() == {
        ("Web", "Srv1"): AdminState.DRAIN,
        ("Web", "Srv2"): AdminState.HALT,
        ("DICOM", "Srv1"): AdminState.HALT,
    }
    assert json.loads(path.read_text())["servers"]["Web"] == {"Srv1": "drain", "Srv2": "halt"}


def test_online_removes_entry(tmp_path: Path) -> None:
    path = tmp_path / "admin-state.json"
    store = AdminStateStore(path)
    store.set("Web", "Srv1", AdminState.ONLINE)
    assert not path.exists()  # nothing to record
    store.set("Web", "Srv1", AdminState.HALT)
    store.set("Web", "Srv1", AdminState.ONLINE)
    assert json.loads(path.read_text()) == {"version": 1, "servers": {}}


def test_prune(tmp_path: Path) -> None:
    store = AdminStateStore(tmp_path / "admin-state.json")
    store.set("Web", "Srv1", AdminState.DRAIN)
    store.set("Web", "Old", AdminState.HALT)
    store.set("Gone", "Srv1", AdminState.HALT)
    assert store.prune({("Web", "Srv1"), ("Web", "Srv2")}) == [("Gone", "Srv1"), ("Web", "Old")]
    assert store.all() == {("Web", "Srv1"): AdminState.DRAIN}
    assert store.prune({("Web", "Srv1")}) == []


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"version": 2, "servers": {}}',
        '{"version": 1, "servers": {"Web": {"Srv1": "paused"}}}',
        '{"version": 1, "servers": {"Web": ["Srv1"]}}',
    ],
)
def test_corrupt_state_file_raises(tmp_path: Path, content: str) -> None:
    path = tmp_path / "admin-state.json"
    path.write_text(content)
    store = AdminStateStore(path)
    with pytest.raises(StateFileError, match=re.escape(str(path))):
        store.get("Web", "Srv1")
    with pytest.raises(StateFileError):
        store.set("Web", "Srv1", AdminState.ONLINE)
    assert path.read_text() == content  # never silently reset


def test_file_exists_takes_relative_paths_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("x")
    exists = file_exists(tmp_path)
    assert exists(Path("tls/cert.pem")) and exists(tmp_path / "tls" / "cert.pem")
    assert not exists(Path("tls")) and not exists(Path("tls/key.pem"))  # a folder is no file
