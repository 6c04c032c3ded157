"""Validation of the files `node.alerts` names: a CA bundle, the SMTP password, a bearer token.

Pure, as core/validate.py: the file system is asked through callables the caller passes in.
Apart from the models' own rules (config_alerts.py) because these need the files.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from pacslb.errors import Problem

__all__ = ["alert_file_problems", "secret_file_warnings"]

CHANNELS = ("email", "syslog", "webhook")
FILES = ("ca_file", "password_file", "token_file")
SECRETS = ("password_file", "token_file")  # a CA bundle is public


def _files(alerts: Any, fields: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path in the config, file) of each file named; `alerts` as plain data, any shape."""
    found = []
    for channel in CHANNELS:
        settings = alerts.get(channel) if isinstance(alerts, Mapping) else None
        if not isinstance(settings, Mapping):
            continue
        for field in fields:
            value = settings.get(field)
            if isinstance(value, str | Path) and str(value):
                found.append((f"node.alerts.{channel}.{field}", str(value)))
    return found


def alert_file_problems(
    alerts: Any, file_exists: Callable[[Path], bool], refused: Collection[str] = ()
) -> list[Problem]:
    """Each file named that does not exist. `alerts` is plain data, so that the files are
    checked in the same pass as the node's other mistakes (the model cannot be built then);
    `refused`: the paths whose values were refused already (nothing more to say of them)."""
    return [
        Problem(where, f"no such file: {path}")
        for where, path in _files(alerts, FILES)
        if where not in refused and not file_exists(Path(path))
    ]


def secret_file_warnings(alerts: Any, mode_of: Callable[[Path], int | None]) -> list[Problem]:
    """A password_file or token_file others may read (docs/alerts.md: mode 0600). `mode_of`
    gives a file's permission bits, None when it cannot be read (the check says so)."""
    out = []
    for where, path in _files(alerts, SECRETS):
        mode = mode_of(Path(path))
        if mode is not None and mode & 0o077:
            out.append(
                Problem(
                    where,
                    f"{path} is readable or writable by group or others (mode {mode & 0o777:04o}): "
                    f"the secret should be the pacslb user's alone: chmod 600 {path}",
                )
            )
    return out
