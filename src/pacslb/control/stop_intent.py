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
import contextlib
import os
import select
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacslb.core.stop_intent import KEEP, STOP, keeps_data_plane
from pacslb.errors import EngineError

MARKER = "stop-intent"
WORKER_STOP_TIMEOUT = 10.0  # a worker ends its connections and exits well within this


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
    """What ExecStopPost does; returns lines saying what was done and why. EngineError (after
    trying both) if keepalived or a worker would not end."""
    from pacslb.control.ha import stop_left_keepalived

    keep, why = keeps_data_plane(take(state_dir), service_result)
    if keep:
        return [f"data plane kept: {why}"]
    done = [f"data plane stopped: {why}"]
    failed = []
    # keepalived first: the peer takes the addresses (priority-0 advert) before the workers
    # that serve them stop, so clients move rather than meet a refusal here.
    try:
        done += stop_left_keepalived(state_dir)
    except EngineError as exc:
        failed.append(str(exc))
    try:
        done += end_workers(state_dir)
    except EngineError as exc:
        failed.append(str(exc))
    if failed:
        raise EngineError("; ".join([*done, *failed]))
    return done


def end_workers(state_dir: Path, timeout: float = WORKER_STOP_TIMEOUT) -> list[str]:
    """Stop every proxy worker listening in `state_dir`; one that does not stop within
    `timeout` (hung: it may not even answer) is SIGKILLed. Found by the kernel's record of
    who listens on its socket (engines/unix_peer.py), held by a pidfd, so a worker that no
    longer answers is found too and no other process is ever signalled."""
    from pacslb.engines.unix_peer import listener

    done = []
    for path in sorted(state_dir.glob("proxy-*.sock")):
        found = listener(path)
        if found is None:
            continue  # a stale socket file
        pid, pidfd = found
        try:
            with contextlib.suppress(OSError, ValueError):
                _ask_stop(path)  # it closes its listeners and ends its connections
            how = "stopped"
            if not _exited(pidfd, timeout):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                how = f"killed (it did not stop in {timeout:g} s)"
                if not _exited(pidfd, 5.0):
                    raise EngineError(f"proxy worker {pid} ({path.name}) survived SIGKILL")
        finally:
            os.close(pidfd)
        done.append(f"{how} proxy worker {pid} ({path.name})")
    return done


def _ask_stop(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(path))
        sock.sendall(b'{"cmd": "stop"}\n')
        sock.makefile("rb").readline()


def _exited(pidfd: int, timeout: float) -> bool:
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)  # readable once the process has exited
    return bool(poll.poll(timeout * 1000))


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
