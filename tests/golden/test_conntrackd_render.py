"""Config -> conntrackd.conf, compared with the reviewed files beside this test
(`UPDATE_GOLDEN=1 pytest tests/golden` regenerates them; review the diff like code). conntrackd
itself reads each rendered file (`conntrackd -C FILE -s` fails on a config it cannot parse
before it looks for a daemon) when it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pacslb.control.store import read_config
from pacslb.core import conntrackd

HERE = Path(__file__).parent / "conntrackd"
FILES = conntrackd.ConntrackdFiles.under(Path("/var/lib/pacslb"))


def check(name: str, text: str) -> None:
    path = HERE / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs: UPDATE_GOLDEN=1 and review the diff"


def parses(text: str, tmp_path: Path) -> None:
    """conntrackd's own parser: a config error is reported before any daemon is looked for."""
    if shutil.which("conntrackd") is None:
        return
    conf = tmp_path / "c.conf"
    conf.write_text(text.replace("/var/lib/pacslb", str(tmp_path)))
    (tmp_path / "conntrackd").mkdir(exist_ok=True)
    done = subprocess.run(
        ["conntrackd", "-C", str(conf), "-s"], capture_output=True, text=True, check=False
    )
    message = (done.stdout + done.stderr).lower()
    assert "parse" not in message and "syntax" not in message, message


def test_a_nat_pair_syncs_its_services_flows_to_the_peer(tmp_path: Path) -> None:
    _, config = read_config(HERE / "nat-pair.yaml")
    assert conntrackd.wanted(config)
    text = conntrackd.render(config, "198.18.1.2", FILES)
    check("nat-pair.conf", text)
    assert "Port 9446" in text  # not pacslb's own state sync port
    assert "198.18.0.11" not in text  # the DR service's flows are not conntrack's
    parses(text, tmp_path)
    # The design measured against the default: the external cache, committed at a takeover.
    committing = conntrackd.render(config, "198.18.1.2", FILES, inject=False)
    assert committing == text.replace("DisableExternalCache on", "DisableExternalCache off")
    parses(committing, tmp_path)


def test_the_role_changes_run_what_primary_backup_sh_runs() -> None:
    flags = {
        (role, inject): [flag for flag, _ in conntrackd.steps(role, inject)]
        for role in ("active", "passive", "fault", "stopped")
        for inject in (False, True)
    }
    assert flags[("active", False)] == ["-c", "-f", "-R", "-B"]
    assert flags[("passive", False)] == ["-t", "-n"]
    assert flags[("fault", False)] == ["-t"]
    # Injecting: nothing to commit, and the peer's flows in the kernel keep their timers.
    assert flags[("active", True)] == ["-f", "-R", "-B"]
    assert flags[("passive", True)] == ["-n"]
    assert flags[("fault", True)] == [] and flags[("stopped", False)] == []


def test_more_than_one_peer_syncs_by_multicast(tmp_path: Path) -> None:
    _, config = read_config(HERE / "nat-pair.yaml")
    assert config.node.ha is not None
    ha = config.node.ha.model_copy(update={"peers": ["198.18.1.3", "198.18.1.4"]})
    three = config.model_copy(update={"node": config.node.model_copy(update={"ha": ha})})
    text = conntrackd.render(three, "198.18.1.2", FILES)
    check("three-nodes.conf", text)
    parses(text, tmp_path)


def test_no_nat_service_or_no_ha_needs_no_conntrackd() -> None:
    _, config = read_config(HERE / "nat-pair.yaml")
    dr_only = config.model_copy(update={"virtual_services": config.virtual_services[2:]})
    assert not conntrackd.wanted(dr_only)
    assert config.node.ha is not None
    off = config.node.ha.model_copy(update={"enabled": False})
    assert not conntrackd.wanted(
        config.model_copy(update={"node": config.node.model_copy(update={"ha": off})})
    )
    with pytest.raises(ValueError, match="peers"):
        bare = config.node.ha.model_copy(update={"peers": []})
        conntrackd.render(
            config.model_copy(update={"node": config.node.model_copy(update={"ha": bare})}),
            "198.18.1.2",
            FILES,
        )
