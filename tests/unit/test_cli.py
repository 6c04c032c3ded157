"""The command line, run in-process as a user would type it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacslb.cli import main
from pacslb.config import config_json_schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "options",
    [["--variant", v] for v in ("dr", "nat-l7", "proxy")] + [["--dicom-mode", "l7-dicom"]],
)
def test_profile_then_check_exits_zero(
    options: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "mckesson", *options]) == 0
    out = capsys.readouterr()
    assert "replace them" in out.err  # example addresses are flagged
    path = tmp_path / "m.yaml"
    path.write_text(out.out)
    assert main(["check", str(path)]) == 0
    assert "OK: 5 virtual services, 10 real servers" in capsys.readouterr().out


def test_check_lists_every_problem_and_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "tests/unit/data/ten-mistakes.yaml")]) == 1
    err = capsys.readouterr().err
    assert "11 problems" in err  # ten mistakes; the VIP:port clash is told to both services
    where = "McK-Radiology_DICOM › Srv1 (real server 1) › port (line 14)"
    assert f"{where}: l4-dr cannot translate ports" in err


def test_check_json_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--json", str(ROOT / "tests/unit/data/ten-mistakes.yaml")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and len(report["problems"]) == 11


def test_check_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_profile_refuses_unknown_service_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "mckesson", "--vip", "pacs=10.0.0.1"]) == 1
    assert "unknown service 'pacs'" in capsys.readouterr().err


def test_profile_writes_a_file_and_plan_shows_effective_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    argv = ["profile", "mckesson", "--variant", "proxy", "--dicom-check", "echo", "-o", str(path)]
    assert main([*argv, "--vip", "dicom=127.0.0.30", "--rip", "dicom=127.0.1.1,127.0.1.2"]) == 0
    text = path.read_text()
    assert "dicom-echo" in text and "127.0.0.30" in text
    capsys.readouterr()
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin-state.json").write_text(
        json.dumps(
            {"version": 1, "servers": {"McK-Radiology_DICOM": {"Radiology_DICOM_Srv2": "drain"}}}
        )
    )
    assert main(["plan", str(path), "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "Radiology_DICOM_Srv2" in ln)
    assert "effective=0" in line and "drain" in line
    # the interface each VIP and real server is reached on (this host's routing table)
    assert "  VIP on lo (this host's own address)" in out
    assert line.endswith("on lo (this host's own address)")
    assert main(["plan", "--json", str(path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["services"][0]["vip"] == "127.0.0.30"
    assert plan["interfaces"]["127.0.1.2"]["local"] is True
    assert main(["plan", "--no-routes", str(path)]) == 0
    assert "  VIP " not in capsys.readouterr().out


def test_config_revisions_by_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    main(["profile", "mckesson", "--variant", "proxy", "-o", str(first)])
    text = first.read_text().replace("scheduler: wlc", "scheduler: rr", 1)
    second.write_text(text)
    base = ["config", "--state-dir", str(state)]
    assert main([*base, "save", "--file", str(first), "--comment", "first"]) == 0
    assert main([*base, "save", "--file", str(second), "--comment", "round robin"]) == 0
    capsys.readouterr()
    assert main([*base, "diff", "1", "2"]) == 0
    diff = capsys.readouterr().out
    assert "-    scheduler: wlc" in diff and "+    scheduler: rr" in diff
    assert main([*base, "rollback", "1"]) == 0
    assert "revision 3" in capsys.readouterr().out
    assert main([*base, "list"]) == 0
    listing = capsys.readouterr().out
    assert "round robin" in listing and "rollback to revision 1" in listing
    assert main([*base, "show", "3"]) == 0
    assert capsys.readouterr().out == first.read_text()
    assert main([*base, "show", "9"]) == 1
    assert "9" in capsys.readouterr().err


def test_config_command_needs_its_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["config", "diff", "1"])


def test_docs_schema_is_current() -> None:
    """docs/schema.json is generated (`make schema`); it must match the models."""
    written = json.loads((ROOT / "docs/schema.json").read_text())
    assert written == config_json_schema()


def test_check_reads_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    assert main(["profile", "mckesson", "--variant", "nat-l7"]) == 0
    text = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["check", "-"]) == 0
    assert "-: OK: 5 virtual services" in capsys.readouterr().out


def test_passwd_sets_a_hashed_password_and_refuses_a_short_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from pacslb.control.auth import AuthStore
    from pacslb.core.auth import Role

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["passwd", "--password-stdin", "--state-dir", str(tmp_path)]) == 1
    assert "at least 8" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    argv = ["passwd", "--user", "ro", "--role", "readonly", "--password-stdin"]
    assert main([*argv, "--state-dir", str(tmp_path)]) == 0
    assert AuthStore(tmp_path).check_password("ro", "a long password") is Role.READONLY


def test_passwd_without_a_state_directory_makes_no_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --state-dir the default (/var/lib/pacslb) is used: missing there, no pacslb was
    set up on this host, and a password written would make a state directory for nobody."""
    import io

    from pacslb.control.auth import AuthStore

    missing = tmp_path / "var-lib-pacslb"
    monkeypatch.setattr("pacslb.cli.DEFAULT_STATE_DIR", missing)
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["passwd", "--password-stdin"]) == 1
    assert f"no state directory {missing}" in capsys.readouterr().err
    assert not missing.exists()
    named = tmp_path / "new-node"  # named: made, a password before the first start
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["passwd", "--password-stdin", "--state-dir", str(named)]) == 0
    assert AuthStore(named).check_password("admin", "a long password") is not None


def test_token_needs_the_state_directory_of_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "not-a-node"
    argv = ["token", "create", "pairing", "--role", "admin", "--state-dir", str(missing)]
    assert main(argv) != 0
    assert "no state directory" in capsys.readouterr().err
    assert not missing.exists()  # nothing made: a token for no node is a token for nobody
    missing.mkdir()
    assert main(argv) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("pacslb_")
