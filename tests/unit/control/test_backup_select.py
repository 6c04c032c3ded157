"""Which files of a state directory a backup holds (control/backup.py), by name alone."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from pacslb.control.backup import is_state_file


@pytest.mark.parametrize(
    "name",
    [
        "revisions/index.json",
        "revisions/000012.yaml",
        "admin-state.json",
        "webui-users.json",
        "api-tokens.json",
        "webui-device.key",
        "webui-cert.pem",
        "webui-key.pem",
        "ha-peer.json",
        "pacslb.yaml",
    ],
)
def test_state_is_kept(name: str) -> None:
    assert is_state_file(PurePosixPath(name))


@pytest.mark.parametrize(
    "name",
    [
        "events.jsonl",
        "events.jsonl.1",
        "proxy-0.log",
        "proxy-spare.log",
        "control.sock",
        "proxy-0.sock",
        "revisions/.lock",
        "admin-state.json.lock",
        "kernel-addresses.json",
        "keepalived/keepalived.conf",
        "keepalived/release",
        "conntrackd/lock",
        ".admin-state.json.x1y2.tmp",
        "pre-restore-20261206T230000Z-ab12/admin-state.json",
        ".restore-1a2b3c4d/webui-users.json",
    ],
)
def test_runtime_and_logs_are_not(name: str) -> None:
    assert not is_state_file(PurePosixPath(name))
