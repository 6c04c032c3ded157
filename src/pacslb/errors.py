"""The few shared exceptions, split by whose fault a failure is.

- ConfigError: the operator's input is wrong (every problem, each with its path).
- EngineError: a data plane could not apply a Plan (the previous state stays in force).
- ProtocolError: a peer sent bytes that break its protocol.

Expected outcomes (no healthy real server, a failed health check) are return values, not these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config, at a path like `virtual_services[2].real_servers[0].port`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


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
