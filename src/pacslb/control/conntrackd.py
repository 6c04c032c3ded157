"""conntrackd as a child of the control process (HA with l4-nat or l4-snat services).

It writes the config (core/conntrackd.py), starts `conntrackd -C CONF` in the foreground, and
starts it again when it dies (with an event, and a growing pause if it dies at once each time).
On this node's role changes it runs what Debian's primary-backup.sh runs: becoming active, it
commits the peer's flows (the external cache) into the kernel before anything else; becoming
passive, it hands its own flows over and asks the active node for a resync. A command that fails
is an event, never an exception in the control loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from pacslb import config as c
from pacslb.control.hostaddr import global_addresses
from pacslb.core import conntrackd as render
from pacslb.core.ha_role import HaState, Role

BINARY = "conntrackd"
COMMAND_TIMEOUT = 10.0  # seconds for one `conntrackd -C conf -X` command
OUTPUT_LIMIT = 1 << 20  # bytes of the daemon's output file before it is rotated (.1)
RESTART_PAUSES = (0.5, 1.0, 2.0, 5.0, 10.0)  # after a death at start, then again and again
STABLE = 30.0  # seconds of life after which a death starts the pauses over

Note = Callable[[str], None]


class ConntrackdSupervisor:
    def __init__(
        self, config: c.Config, state_dir: Path, ha: HaState, note: Note, inject: bool = True
    ) -> None:
        self.config = config
        self.inject = inject
        self.files = render.ConntrackdFiles.under(state_dir)
        self.ha = ha
        self.note = note
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.commits = 0
        self._task: asyncio.Task[None] | None = None
        self._transition: asyncio.Task[None] | None = None
        self._stopping = False
        self._subscribed = False
        self._binary = shutil.which(BINARY) or f"/usr/sbin/{BINARY}"

    async def start(self) -> None:
        local = await _local_address(self.config)
        self.files.config.parent.mkdir(parents=True, exist_ok=True)
        self.files.config.write_text(render.render(self.config, local, self.files, self.inject))
        self.ha.subscribe(self._role_changed)
        self._subscribed = True
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        self._stopping = True
        if self._subscribed:  # a reload makes a new supervisor: this one hears no more
            self.ha.unsubscribe(self._role_changed)
            self._subscribed = False
        for task in (self._transition, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._terminate()

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        while not self._stopping:
            # A lock file left by a conntrackd that died keeps the next one from starting
            # (primary-backup.sh removes it too); ours is only ever ours, under the state dir.
            self.files.lock.unlink(missing_ok=True)
            started = loop.time()
            # Its output goes to a file, not a pipe: a pipe read only at its exit would hold
            # everything it printed for its whole life in memory.
            output = self.files.output
            with contextlib.suppress(OSError):
                if output.stat().st_size > OUTPUT_LIMIT:
                    output.replace(output.with_suffix(".out.1"))
            try:
                with open(output, "ab") as out:
                    mark = out.tell()
                    self.proc = await asyncio.create_subprocess_exec(
                        *_dies_with_us(self._binary),
                        "-C",
                        str(self.files.config),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                    )
            except OSError as exc:
                self.note(f"conntrackd could not be started: {exc}")
                code: int | None = None
                err = ""
            else:
                if self.restarts == 0 and quick_deaths == 0:
                    self.note(f"conntrackd started (pid {self.proc.pid}), FTFW sync of NAT flows")
                if self.ha.role in (Role.ACTIVE, Role.PASSIVE):
                    self._on(self.ha.role)  # its caches start empty: resync for the role
                code = await self.proc.wait()
                err = _output_since(output, mark)
            if self._stopping:
                return
            lived = loop.time() - started
            quick_deaths = 0 if lived >= STABLE else quick_deaths + 1
            pause = (
                RESTART_PAUSES[min(quick_deaths, len(RESTART_PAUSES)) - 1] if quick_deaths else 0
            )
            self.restarts += 1
            tail = err.splitlines()[-1] if err else _log_tail(self.files.log)
            self.note(
                f"conntrackd exited (code {code}) after {lived:.1f} s: {tail or 'no message'}; "
                f"started again in {pause:g} s"
            )
            await asyncio.sleep(pause)

    # --- role changes --------------------------------------------------------------------

    def _role_changed(self, old: Role, new: Role) -> None:
        if not self._stopping:  # a supervisor replaced by a reload stays subscribed, idle
            self._on(new)

    def _on(self, role: Role) -> None:
        steps = render.steps(str(role), self.inject)
        if not steps:
            return
        previous = self._transition
        self._transition = asyncio.get_running_loop().create_task(
            self._run_steps(role, steps, previous)
        )

    async def _run_steps(
        self,
        role: Role,
        steps: Sequence[tuple[str, str]],
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None and not previous.done():  # in order: a commit before a flush
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0  # a daemon just started opens its socket within ms
        while not self.files.socket.exists() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        failed = []
        for flag, why in steps:
            ok, message = await self.command(flag)
            if not ok:
                failed.append(f"conntrackd {flag} ({why}): {message}")
            elif flag == "-c":
                self.commits += 1
        if failed:
            self.note(f"becoming {role}: " + "; ".join(failed))
        elif role is Role.ACTIVE:
            self.note("conntrackd: the peer's NAT flows were committed into the kernel")

    async def command(self, flag: str) -> tuple[bool, str]:
        """`conntrackd -C CONF FLAG` against the running daemon: (ok, its message)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary,
                "-C",
                str(self.files.config),
                flag,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return False, str(exc)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return False, f"no answer in {COMMAND_TIMEOUT:g} s"
        text = out.decode(errors="replace").strip()
        return proc.returncode == 0, text or f"exit {proc.returncode}"

    def status(self) -> dict[str, object]:
        running = self.proc is not None and self.proc.returncode is None
        return {
            "running": running,
            "pid": self.proc.pid if running and self.proc else None,
            "restarts": self.restarts,
            "commits": self.commits,
        }


async def _local_address(config: c.Config) -> str:
    """node.ha.address, else the first global address of node.ha.interface."""
    ha = config.node.ha
    if ha is None:
        raise ValueError("conntrackd needs node.ha")
    if ha.address:
        return str(ha.address)
    if not ha.interface:
        raise ValueError("conntrackd needs node.ha.address or node.ha.interface")
    addresses = await global_addresses(ha.interface)
    if addresses:
        return addresses[0]
    raise ValueError(f"node.ha.interface {ha.interface} has no address for conntrackd's sync")


def _output_since(path: Path, offset: int) -> str:
    """What the daemon printed since `offset` (its last run), at most the last 4 KiB."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(offset, size - 4096))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _dies_with_us(binary: str) -> list[str]:
    """conntrackd ends with the control process that started it (SIGTERM as its parent dies,
    kept across exec by setpriv --pdeathsig). Unlike keepalived and the proxy workers it
    forwards nothing: killed with the control process (`KillMode=process`, a crash), it would
    hold the sync port and socket and keep the next control process's conntrackd from
    starting; that one resyncs from the peer at once instead."""
    setpriv = shutil.which("setpriv")  # util-linux: on every Debian system
    return [setpriv, "--pdeathsig", "TERM", binary] if setpriv else [binary]
