"""The few shared exceptions, split by whose fault a failure is.

- ConfigError: the operator's input is wrong (every problem, each with its path).
- EngineError: a data plane could not apply a Plan (the previous state stays in force).
- ProtocolError: a peer sent bytes that break its protocol.

Expected outcomes (no healthy real server, a failed health check) are return values, not these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config.

    `path` is the machine path (`virtual_services[2].real_servers[0].port`, what scripts and
    the WebUI's fields match on); `where` names the same place by label for a person
    (`McK-Radiology_Web › McK-Radiology_Srv1 › port`); `line` is the line of the file the
    problem came from (1-based), when it came from YAML text."""

    path: str
    message: str
    where: str = ""
    line: int | None = None

    def __str__(self) -> str:
        head = self.where or self.path
        if self.line is not None:
            head = f"{head} (line {self.line})" if head else f"line {self.line}"
        return f"{head}: {self.message}" if head else self.message

    def to_json(self) -> dict[str, Any]:
        """The API's and `check --json`'s form: `path` and `message` as before, plus `where`
        and `line`."""
        return {"path": self.path, "message": self.message, "where": self.where, "line": self.line}


class PacslbError(Exception):
    """Base of pacslb's own exceptions."""


class ConfigError(PacslbError):
    """A config (file or REST body) is invalid; `problems` lists every problem found."""

    def __init__(self, problems: Iterable[Problem], source: str = "") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        where = f"{source}: " if source else ""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{where}{count} {noun}"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class EngineError(PacslbError):
    """A data plane could not apply a Plan; the previous state stays in force."""


class ProtocolError(PacslbError):
    """A peer broke its protocol (malformed HTTP, a bad DICOM PDU, ...)."""
