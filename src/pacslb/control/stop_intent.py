"""The stop-intent marker and `pacslb stop-data-plane` (pacslb.service's ExecStopPost).

The control process writes `stop-intent` in its state directory the moment it is asked to
stop ("keep" or "stop"), and removes a stale one when it starts. ExecStopPost runs once the
control process is gone, however it went (clean exit, SIGKILL at TimeoutStopSec, a crash); it
reads and removes the marker (one marker, one stop) and, unless the stop was meant to keep the
data plane (core/stop_intent.py), stops the proxy workers and keepalived the state directory's
sockets and pid files name (each held by a pidfd, so a reused pid is never signalled).
The kernel tables stay, as after any stop: `pacslb teardown` ends them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacslb.core.stop_intent import KEEP, STOP, keeps_data_plane

MARKER = "stop-intent"


def record(state_dir: Path, keep: bool) -> None:
    """Called when the control process is asked to stop (before it starts stopping anything:
    a process that hangs from here on leaves the intent for ExecStopPost)."""
    path = state_dir / MARKER
    tmp = path.with_name(MARKER + ".tmp")
    tmp.write_text(KEEP if keep else STOP)
    os.replace(tmp, path)


def forget(state_dir: Path) -> None:
    """A starting control process: an intent left by an earlier stop is not about this one."""
    (state_dir / MARKER).unlink(missing_ok=True)


def take(state_dir: Path) -> str | None:
    """Read and remove the marker (consumed: the next stop decides anew)."""
    path = state_dir / MARKER
    try:
        intent = path.read_text().strip()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return intent


def stop_data_plane(state_dir: Path, service_result: str | None) -> list[str]:
    """What ExecStopPost does; returns lines saying what was done and why."""
    from pacslb.control.ha import stop_left_keepalived
    from pacslb.engines.proxy import stop_workers

    keep, why = keeps_data_plane(take(state_dir), service_result)
    if keep:
        return [f"data plane kept: {why}"]
    # keepalived first: the peer takes the addresses (priority-0 advert) before the workers
    # that serve them stop, so clients move rather than meet a refusal here.
    done = stop_left_keepalived(state_dir)
    done += stop_workers(state_dir)
    return [f"data plane stopped: {why}", *done]


def add_parser(
    sub: Any,
    locate: Callable[[argparse.ArgumentParser], None],
    state_dir_of: Callable[[argparse.Namespace], Path],
) -> None:
    """`pacslb stop-data-plane`; `locate` adds --state-dir/--config (cli.py)."""
    p = sub.add_parser(
        "stop-data-plane",
        help="stopped pacslb (systemd's ExecStopPost): stop the proxy workers and keepalived "
        "it left, unless it was stopped with --keep-data-plane",
    )
    locate(p)
    p.set_defaults(func=_cmd, state_dir_of=state_dir_of)


def _cmd(args: argparse.Namespace) -> int:
    from pacslb.control.local import NotRunning, request
    from pacslb.errors import PacslbError

    state_dir = args.state_dir_of(args)
    try:
        request(state_dir, {"cmd": "status"}, timeout=2.0)
    except NotRunning:
        pass
    else:
        raise PacslbError(f"pacslb is running with {state_dir}: `pacslb stop` stops it")
    print("\n".join(stop_data_plane(state_dir, os.environ.get("SERVICE_RESULT"))))
    return 0
