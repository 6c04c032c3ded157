"""Every command the docs show, run as `make docs-check` runs it, output compared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = [sys.executable, str(ROOT / "scripts" / "docs_check.py")]


def run(*only: str) -> subprocess.CompletedProcess[str]:
    argv = [*CHECK, *(f"--only={k}" for k in only)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=400, env=env)


@pytest.mark.timeout(300)
def test_docs_commands_in_a_scratch_directory_and_an_empty_namespace() -> None:
    """Profiles, checks, `pacslb realserver`, broken files, a host with no network; and each
    benchmark's command line against its --help."""
    done = run("tmp", "netns")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.splitlines()[-1]
    assert " 0 failed" in summary
    ran = int(summary.split("docs-check: ")[1].split(" commands")[0])
    assert ran >= 30, summary  # not an empty pass: the docs hold that many such commands


@pytest.mark.timeout(400)
@pytest.mark.skipif(os.geteuid() != 0, reason="the demo runs in a network namespace: root only")
def test_docs_commands_beside_the_demo() -> None:
    """Quick start, the REST API, operations, the McKesson guide's verification and the
    troubleshooting faults, against `pacslb demo` in a namespace of its own."""
    done = run("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.splitlines()[-1]
    ran = int(summary.split("docs-check: ")[1].split(" commands")[0])
    assert ran >= 90, summary
