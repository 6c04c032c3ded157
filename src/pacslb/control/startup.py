"""What `pacslb run` decides before the control process starts: which config to run, and
whether this host can place its services at all.

A broken config file at start runs the last good revision, loudly (an event, the System
Overview's banner, a "degraded" reason in `pacslb status` and /metrics), rather than nothing:
after a reboot at 3 a.m. the operator wants the imaging service up, and the config it last
ran is on disk in the state directory's revisions. Refusing would stop every VIP for a typo
in one of them. The file is never touched: `pacslb check` still fails on it, and once it is
fixed, `pacslb reload` runs it and the flag goes. With no good revision (a first start) the
start is refused, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pacslb import config as c
from pacslb.control.store import ConfigStore, StateFileError, absolute_paths, file_exists
from pacslb.core.doctor import Finding, Level
from pacslb.core.validate import load_text
from pacslb.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BrokenFile:
    """The config file could not be used at start; `revision` runs instead."""

    path: Path
    problems: tuple[str, ...]  # each as `pacslb check` words it
    revision: int  # the one that runs: start() renumbers it when it saves that text again

    def reason(self) -> str:
        """The "degraded" line of status, /metrics and the banner."""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        return (
            f"the config file {self.path} has {count} {noun} (`pacslb check {self.path}`): "
            f"running revision {self.revision}, the last good one, until the file is fixed "
            "and reloaded"
        )


def state_dir_of(path: Path) -> Path:
    """The state directory a config file names, read as leniently as possible: a file with
    problems elsewhere still says where its revisions are. The config's default otherwise."""
    default: Path = c.Node.model_fields["state_dir"].default
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        value = data["node"]["state_dir"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return default
    return Path(value) if isinstance(value, str) and value else default


def last_good(
    config_path: Path, state_dir: Path, error: ConfigError
) -> tuple[str, c.Config, BrokenFile] | None:
    """The newest revision that is still a valid config here (its TLS files and check scripts
    present, relative to the config file's folder), with a BrokenFile saying why; None when
    there is none (nothing to fall back on: the start is refused)."""
    store = ConfigStore(state_dir)
    base = config_path.resolve().parent
    try:
        revisions = store.revisions()
    except StateFileError:
        return None
    for rev in reversed(revisions):
        try:
            text = store.text(rev.number)
            config = load_text(text, f"revision {rev.number}", file_exists(base))
        except (StateFileError, ConfigError):
            continue
        problems = tuple(str(p) for p in error.problems)
        return text, absolute_paths(config, base), BrokenFile(config_path, problems, rev.number)
    return None


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level is Level.PROBLEM]


def unplaceable(config: c.Config) -> list[str]:
    """What of `config` this host cannot place (doctor.placement's problems), one line each, as
    the control process lists them under "degraded" (`pacslb run --degraded`)."""
    from pacslb.control import doctor  # the host's side: routes, nftables, root

    return [f"{f.subject}: {f.message}" for f in blocking(doctor.placement(config))]


def problem_lines(findings: list[Finding]) -> str:
    """The problems as `pacslb run` prints them: each with its fix."""
    lines = []
    for f in findings:
        lines.append(f"  {f.subject}: {f.message}")
        if f.fix:
            lines.append(f"    fix: {f.fix}")
    return "\n".join(lines)
