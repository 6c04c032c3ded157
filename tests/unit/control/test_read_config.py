"""Reading a config file: relative paths are resolved against its folder, once, for good."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacslb import config as c
from pacslb.control.store import read_config


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "web.pem").write_text("x")
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "pacs.sh").write_text("#!/bin/sh\nexit 0\n")
    path = tmp_path / "pacslb.yaml"
    path.write_text(
        """version: 1
virtual_services:
  - label: Web
    vip: 127.0.0.30
    ports: [443]
    mode: l7-http
    tls: {certificates: [{certificate: certs/web.pem}]}
    health_check: {type: all, checks: [{type: external, command: checks/pacs.sh}]}
    real_servers: [{label: A, address: 127.0.0.1}]
"""
    )
    monkeypatch.chdir("/")  # pacslb run started from anywhere
    _, config = read_config(path)
    vs = config.virtual_services[0]
    assert vs.tls is not None
    assert vs.tls.certificates[0].certificate == tmp_path / "certs" / "web.pem"
    check = vs.health_check
    assert isinstance(check, c.AllChecks) and isinstance(check.checks[0], c.ExternalCheck)
    assert check.checks[0].command == str(tmp_path / "checks" / "pacs.sh")
