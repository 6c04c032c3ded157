"""`pacslb config rollback|save`: the config revisions that change something.

When a pacslb runs on the state directory (its control socket answers), the change goes
through it, as a change through the API does: validated, recorded as a revision, written into
the config file, replicated to an HA peer and applied. A revision written into the state
directory behind its back would change nothing that runs (the running process neither reads
nor applies it) while the command said it was done. When none runs, the revision is recorded
in the state directory, the config file untouched (docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

# Applying a config waits for the engines and, in an HA pair, for the peer to prepare it.
APPLY_TIMEOUT = 120.0


def _who() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER", "cli")


def _running(state_dir: Path) -> bool:
    """Whether a control process answers on the state directory's control socket."""
    from pacslb.control.local import NotRunning, request

    try:
        request(state_dir, {"cmd": "status"}, timeout=5.0)
    except NotRunning:
        return False
    return True


def _print_applied(result: dict[str, Any], what: str) -> None:
    if result["changed"]:
        print(f"revision {result['revision']}: {what}, applied by the running pacslb")
    else:
        print(f"nothing changed: revision {result['revision']}, the config in force, is the same")


def rollback(state_dir: Path, number: int) -> int:
    from pacslb.control.local import request

    what = f"rollback to revision {number}"
    if _running(state_dir):
        payload = {"cmd": "config-rollback", "revision": number, "by": _who()}
        _print_applied(request(state_dir, payload, timeout=APPLY_TIMEOUT), what)
        return 0
    from pacslb.control.store import ConfigStore

    rev = ConfigStore(state_dir).rollback(number, author=os.environ.get("USER", ""))
    print(f"revision {rev.number}: {rev.comment} (recorded; no pacslb runs on {state_dir})")
    return 0


def save(state_dir: Path, file: Path, comment: str) -> int:
    from pacslb.control.local import request

    if _running(state_dir):
        # The process reads the file itself: a config may be longer than one socket request.
        payload = {
            "cmd": "config-save",
            "file": str(file.resolve()),
            "comment": comment,
            "by": _who(),
        }
        result = request(state_dir, payload, timeout=APPLY_TIMEOUT)
        _print_applied(result, comment or f"saved from {file}")
        return 0
    from pacslb.control.store import ConfigStore

    text = file.read_text(encoding="utf-8")
    rev = ConfigStore(state_dir).save(text, comment=comment, author=os.environ.get("USER", ""))
    print(f"revision {rev.number} (recorded; no pacslb runs on {state_dir})")
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    """`config rollback N` and `config save --file F`."""
    state_dir = Path(args.state_dir)
    if args.action == "rollback":
        return rollback(state_dir, args.a)
    return save(state_dir, Path(args.file), args.comment)
