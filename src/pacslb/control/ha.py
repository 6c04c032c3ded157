"""The keepalived supervisor: this node's floating addresses, and its HA role.

It renders keepalived.conf (core/keepalived.py) into the state directory, runs keepalived as a
child (`-n`: in the foreground, VRRP only), reads its notify FIFO and sets the control
process's `ha` role from it (MASTER -> active, BACKUP -> passive, FAULT -> fault), recording
every change as an event. keepalived that dies is started again (after a back-off) and the
addresses it left behind are taken away meanwhile, so that a dead daemon never leaves this
node answering for addresses the peer now holds. A config change that adds or removes a VIP
is a new keepalived.conf and a SIGHUP (keepalived keeps its state across a reload).

Stopping: SIGTERM makes keepalived send a priority-0 advert, so the peer takes over at once.
`pacslb stop --keep-data-plane` leaves it running instead: keepalived is part of the data
plane (the addresses the kernel tables and the proxy workers serve), and stopping it would move
every client to the peer, which is what a restart that drops no connection must not do. The
next `pacslb run` adopts it (pid file, cmdline check, pidfd) and learns its state from the
FIFO after a reload; `pacslb teardown` stops it for good.

`release()` is the manual hand-over for maintenance: the track file goes to 1 (FAULT: a
priority-0 advert, the peer becomes MASTER within its skew time), and is cleared once this node
is no longer active; with `nopreempt` the node then stays passive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacslb import config as c
from pacslb.core import keepalived as k
from pacslb.core.conntrackd import sync_port as conntrackd_sync_port
from pacslb.core.conntrackd import wanted as conntrackd_wanted
from pacslb.core.doctor import HOST, Finding, Level
from pacslb.core.ha_role import HaState, ListenerError, Role, ha_enabled
from pacslb.errors import EngineError, PacslbError

# Seconds before starting keepalived again after it died: longer each time in a row, back to
# the first once it has run for RESTART_RESET seconds.
RESTART_DELAYS = (0.2, 1.0, 2.0, 5.0, 10.0, 30.0)
RESTART_RESET = 60.0
STOP_TIMEOUT = 5.0  # seconds for keepalived to leave after SIGTERM before SIGKILL
EARLY_EXIT = 10.0  # keepalived that exits this soon after its start makes the node not ready
RETRY = 5.0  # seconds between tries while HA cannot run (keepalived missing, no interface)
RELEASE_TIMEOUT = 5.0  # seconds for this node to stop being MASTER once released
LOG_LIMIT = 1 << 20  # keepalived.log is started afresh above this size
INSTALL_HINT = "apt-get install keepalived"

Note = Callable[[str, dict[str, Any]], None]  # (message, data): an event of kind "ha"


class HaError(PacslbError):
    """An HA command that cannot be done now (not active, keepalived not running...)."""


def find_keepalived() -> str | None:
    """keepalived's path; /usr/sbin is often not in a non-root PATH."""
    found = shutil.which("keepalived")
    if found:
        return found
    for path in ("/usr/sbin/keepalived", "/sbin/keepalived", "/usr/local/sbin/keepalived"):
        if os.access(path, os.X_OK):
            return path
    return None


def _ip(*args: str) -> Any:
    done = subprocess.run(
        ["ip", "-j", *args], capture_output=True, text=True, check=False, timeout=5
    )
    if done.returncode != 0:
        raise HaError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout) if done.stdout.strip() else []


def host_facts(ha: c.HASettings, vips: list[str]) -> tuple[str, dict[str, str]]:
    """(the address adverts go out from, VIP -> interface of its subnet), from `ip -j addr`.

    Only interface addresses with a prefix shorter than a host's count as subnets: a /32 or
    /128 is a VIP itself (keepalived's, on the active node), never where a VIP belongs."""
    links = _ip("addr", "show")
    names = {link["ifname"] for link in links}
    if ha.interface not in names:
        raise HaError(f"node.ha.interface {ha.interface}: no such interface on this host")
    # Ours, never the node's own (the active node holds them): not a source, not a subnet.
    vip_set = set(vips) | {g.address.split("/")[0] for g in ha.gateways}
    source = str(ha.address) if ha.address is not None else None
    family = ipaddress.ip_address(str(ha.peers[0])).version if ha.peers else 4
    device_of: dict[str, str] = {}
    for link in links:
        for a in link.get("addr_info", []):
            local, prefix = a.get("local"), a.get("prefixlen", 0)
            if local is None or local in vip_set:
                continue
            net = ipaddress.ip_interface(f"{local}/{prefix}").network
            if (
                source is None
                and link["ifname"] == ha.interface
                and a.get("scope") == "global"
                and net.version == family
                and prefix < net.max_prefixlen
            ):
                source = local
            if prefix >= net.max_prefixlen:
                continue
            for vip in vips:
                if vip not in device_of and ipaddress.ip_address(vip) in net:
                    device_of[vip] = link["ifname"]
    if source is None:
        raise HaError(
            f"node.ha.interface {ha.interface} has no IPv{family} address to send VRRP adverts "
            "from; give it one or set node.ha.address"
        )
    return source, device_of


def holds_addresses(addresses: tuple[k.Floating, ...]) -> bool:
    """Whether this host has every one of `addresses` (and there is at least one)."""
    have = {a.get("local") for link in _ip("addr", "show") for a in link.get("addr_info", [])}
    return bool(addresses) and all(a.address in have for a in addresses)


def drop_addresses(addresses: tuple[k.Floating, ...]) -> list[str]:
    """Take our floating addresses off this host (keepalived died holding them)."""
    removed = []
    for a in addresses:
        done = subprocess.run(
            ["ip", "addr", "del", a.cidr, "dev", a.device],
            capture_output=True,
            check=False,
            timeout=5,
        )
        if done.returncode == 0:
            removed.append(a.cidr)
    return removed


def _wait_gone(paths: k.KeepalivedPaths, timeout: float) -> None:
    """Until our VRRP child named in its pid file has exited (bounded; then SIGKILL)."""
    try:
        pid = int(paths.vrrp_pid.read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while _is_keepalived(pid, paths.config):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)


def _is_keepalived(pid: int, config: Path) -> bool:
    """`pid` is a live keepalived running on `config` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    ours = os.fsencode(str(config)) in cmdline
    return ours and state != "Z" and Path(os.fsdecode(cmdline[0])).name == "keepalived"


def _alive_keepalived(paths: k.KeepalivedPaths) -> int | None:
    """The pid of a keepalived left running on our config (`stop --keep-data-plane`)."""
    try:
        pid = int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_keepalived(pid, paths.config) else None


class KeepalivedSupervisor:
    def __init__(
        self,
        state_dir: Path,
        ha: HaState,
        note: Note,
        find: Callable[[], str | None] = find_keepalived,
    ) -> None:
        self.paths = k.KeepalivedPaths.under(state_dir)
        self.find = find  # where keepalived is on this host (None: not installed)
        self.ha = ha
        self.note = note
        self.config: c.Config | None = None
        self.text = ""  # keepalived.conf as last written
        self.addresses: tuple[k.Floating, ...] = ()
        self.problem: str | None = None  # why HA cannot run (not ready while set)
        self.failing: str | None = None  # keepalived dies at start (not ready while set)
        self.pid: int | None = None
        self.restarts = 0
        self.started_at = 0.0
        self._child: subprocess.Popen[bytes] | None = None  # None: adopted, or none
        self._pidfd: int | None = None  # keepalived's, ours or adopted
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._fifo: tuple[int, int] | None = None  # (read end, our own write end)
        self._partial = b""
        self._role_changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None
        self._releasing = False

    # --- configure -----------------------------------------------------------------------

    async def configure(self, config: c.Config) -> None:
        """Make keepalived match `config`: start it, reload it, or stop it (HA turned off).
        Never raises for the host's sake: what stops HA is a not-ready reason instead."""
        async with self._lock:
            try:
                await self._configure(config)
            except OSError as exc:  # the state dir refused a file, the FIFO...
                self._fail(f"keepalived's files in {self.paths.directory}: {exc}")

    async def _configure(self, config: c.Config) -> None:
        self.config = config
        if not ha_enabled(config):
            if self._runner is not None:
                await self._stop(keep_running=False)
                self.note("HA turned off: keepalived stopped", {})
            self.problem = None
            self._set_role(Role.STANDALONE)
            return
        if self.ha.role is Role.STANDALONE:
            self._set_role(Role.STARTING)
        binary = self.find()
        if binary is None:
            self._fail(f"keepalived is not installed ({INSTALL_HINT})")
            return
        try:
            text, addresses = await asyncio.to_thread(self._render, config)
        except (HaError, ValueError) as exc:
            self._fail(str(exc))
            return
        if self.problem is not None:
            self.note(f"keepalived can run again: {self.problem} is resolved", {})
        self.problem = None
        old = {a.cidr for a in self.addresses}
        changed = text != self.text
        if changed:
            await asyncio.to_thread(self._write_config, text)
        self.text, self.addresses = text, addresses  # once written: a failed write is retried
        if self._runner is None:
            self._closing = False
            self._open_fifo()
            self._runner = asyncio.get_running_loop().create_task(self._run(binary))
        elif changed:
            new = {a.cidr for a in addresses}
            added, removed = sorted(new - old), sorted(old - new)
            self._signal(signal.SIGHUP)
            what = "; ".join(
                part
                for part in (
                    f"added {', '.join(added)}" if added else "",
                    f"removed {', '.join(removed)}" if removed else "",
                )
                if part
            )
            self.note(
                f"keepalived reloaded: {what or 'settings changed'}",
                {"added": added, "removed": removed},
            )

    def _fail(self, problem: str) -> None:
        """HA cannot run now (not ready, naming `problem`); tried again every RETRY s."""
        if problem != self.problem:
            self.note(f"HA cannot run: {problem}", {"problem": problem})
        self.problem = problem
        if self._runner is None:  # a running keepalived goes on with its last config
            self._set_role(Role.STOPPED)
        if self._retry is None:
            self._retry = asyncio.get_running_loop().create_task(self._retry_later())

    async def _retry_later(self) -> None:
        """Configure again now and then, so that a cause fixed on the host (keepalived
        installed, the interface back) ends the problem by itself."""
        try:
            while self.problem is not None and not self._closing and self.config is not None:
                await asyncio.sleep(RETRY)
                if self.problem is not None and not self._closing:
                    await self.configure(self.config)
        finally:
            self._retry = None

    def _render(self, config: c.Config) -> tuple[str, tuple[k.Floating, ...]]:
        ha = config.node.ha
        assert ha is not None and ha.interface is not None
        vips = list(dict.fromkeys(str(vs.vip) for vs in config.virtual_services))
        source, device_of = host_facts(ha, vips)
        addresses = k.floating_addresses(config, device_of, ha.interface)
        return k.render(config, self.paths, source, addresses), addresses

    def _write_config(self, text: str) -> None:
        self.paths.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.paths.config)

    def _open_fifo(self) -> None:
        """Read keepalived's notify FIFO without blocking; our own write end keeps it from
        reading EOF while keepalived restarts."""
        if self._fifo is not None:
            return
        path = self.paths.notify_fifo
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(path.stat().st_mode):
                path.unlink()
        if not path.exists():
            os.mkfifo(path, 0o600)
        read = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        write = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self._fifo = (read, write)
        asyncio.get_running_loop().add_reader(read, self._on_fifo)

    def _close_fifo(self) -> None:
        if self._fifo is None:
            return
        read, write = self._fifo
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(read)
        for fd in (read, write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fifo = None

    # --- the notify FIFO -----------------------------------------------------------------

    def _on_fifo(self) -> None:
        assert self._fifo is not None
        try:
            data = os.read(self._fifo[0], 65536)
        except BlockingIOError:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            state = k.parse_notify(line.decode(errors="replace"))
            if state is not None:
                self._on_state(state)

    def _set_role(self, role: Role) -> bool:
        """HaState.set, with a listener's failure an event (the others were told)."""
        try:
            return self.ha.set(role)
        except ListenerError as exc:
            self.note(f"role {role}: {exc}", {"role": str(role)})
            return True

    def _on_state(self, state: k.VrrpState) -> None:
        self.failing = None  # it runs: it reports
        old = self.ha.role
        if not self._set_role(state.role):
            return
        self._role_changed.set()
        held = len(self.addresses)
        what = {
            Role.ACTIVE: f"holds the {held} floating address{'es' if held != 1 else ''}",
            Role.PASSIVE: "stands by",
            Role.FAULT: "holds no address (its interface is down, or it was released)",
            Role.STOPPED: "VRRP stopped",
        }.get(state.role, "")
        self.note(
            f"role {old} -> {state.role} (VRRP {state.state}"
            + (f", priority {state.priority}" if state.priority is not None else "")
            + f"): this node {what}",
            {"previous": str(old), "role": str(state.role), "vrrp": state.state},
        )

    # --- the child -----------------------------------------------------------------------

    async def _run(self, binary: str) -> None:
        """Start keepalived, wait for it to exit, start it again: for as long as HA runs.
        Any trouble in one turn (an `ip` that hangs, an unreadable answer) is an event and a
        pause, never the end of the supervision (a role left ACTIVE with nobody watching)."""
        delay = 0
        while not self._closing:
            try:
                turned = await self._turn(binary, delay)
            except Exception as exc:
                await self._turn_failed(exc, delay)
            else:
                if turned is None:
                    return
                delay = turned
            self.pid = None
            await asyncio.sleep(RESTART_DELAYS[delay])
            delay = min(delay + 1, len(RESTART_DELAYS) - 1)
            self.restarts += 1

    async def _turn(self, binary: str, delay: int) -> int | None:
        """One start and exit of keepalived: the next delay's index (None: we are closing)."""
        try:
            await self._start(binary)
        except OSError as exc:
            self.failing = f"keepalived could not be started: {exc}"
            self.note(self.failing, {})
            return delay
        code = await self._wait_exit()
        if self._closing:
            return None
        ran = time.monotonic() - self.started_at
        if ran >= RESTART_RESET:
            delay = 0
        if ran < EARLY_EXIT:  # not ready until it reports a state again
            self.failing = (
                f"keepalived exited ({code}) {ran:.1f} s after it started: see {self.paths.log}"
            )
        # Its VRRP child outlives it for a moment (it was told to stop); a keepalived
        # started meanwhile would find its pid file and leave at once.
        await asyncio.to_thread(_wait_gone, self.paths, STOP_TIMEOUT)
        removed = await asyncio.to_thread(drop_addresses, self.addresses)
        self._set_role(Role.STOPPED)
        self._role_changed.set()
        self.note(
            f"keepalived (pid {self.pid}) exited ({code}) after {ran:.1f} s"
            + (f"; took away {', '.join(removed)}" if removed else "")
            + f"; starting it again in {RESTART_DELAYS[delay]:g} s",
            {"code": code, "removed": removed},
        )
        return delay

    async def _turn_failed(self, exc: Exception, delay: int) -> None:
        """A turn that raised: said, and the state made safe. The pidfd is let go (the next
        turn adopts a keepalived still running, whose FIFO still tells the role); with none
        running the role is STOPPED and its addresses are taken away."""
        self.failing = f"keepalived supervision failed: {exc!r}"
        self.note(f"{self.failing}; trying again in {RESTART_DELAYS[delay]:g} s", {})
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None
        with contextlib.suppress(Exception):
            if await asyncio.to_thread(_alive_keepalived, self.paths) is None:
                self._set_role(Role.STOPPED)
                self._role_changed.set()
                await asyncio.to_thread(drop_addresses, self.addresses)

    async def _start(self, binary: str) -> None:
        adopted = _alive_keepalived(self.paths)
        self.started_at = time.monotonic()
        if adopted is not None:
            self._pidfd = os.pidfd_open(adopted)
            self.pid = adopted
            os.kill(adopted, signal.SIGHUP)  # the config written now
            # keepalived 2.2.7 reports no state on a reload (fifo_write_vrrp_states_on_reload
            # wrote nothing here), so the role is read from the addresses: it holds them
            # exactly while MASTER. Its next transition comes through the FIFO as usual.
            held = await asyncio.to_thread(holds_addresses, self.addresses)
            self.note(f"keepalived (pid {adopted}) left running by the last run: adopted", {})
            self._on_state(k.VrrpState("MASTER" if held else "BACKUP", None))
            return
        # In the loop's thread, not to_thread: a stop that cancels this task must never find
        # a keepalived started behind its back (a few file operations and a fork: ms).
        self._spawn(binary)
        self.note(f"keepalived started (pid {self.pid})", {"pid": self.pid})

    def _spawn(self, binary: str) -> None:
        """A plain Popen watched through a pidfd, not an asyncio subprocess: the loop's
        transport would kill keepalived when the control process stops, and a kept one
        (`stop --keep-data-plane`) must outlive it."""
        self.paths.release_file.write_text("0\n")  # a hand-over is never left half done
        log = self.paths.log
        with contextlib.suppress(OSError):
            if log.stat().st_size > LOG_LIMIT:
                log.replace(log.with_suffix(".log.1"))
        with open(log, "ab") as out:
            self._child = subprocess.Popen(
                [
                    binary,
                    *("--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp"),
                    *("--use-file", str(self.paths.config)),
                    *("--pid", str(self.paths.pid), "--vrrp_pid", str(self.paths.vrrp_pid)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals to our session (Ctrl-C) are ours to pass on
            )
        self.pid = self._child.pid
        self._pidfd = os.pidfd_open(self._child.pid)

    async def _wait_exit(self) -> str:
        assert self._pidfd is not None
        fd, done = self._pidfd, asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, done.set)
        try:
            await done.wait()
        finally:
            loop.remove_reader(fd)
        os.close(fd)
        self._pidfd = None
        child, self._child = self._child, None
        if child is None:
            return "not our child: status unknown"
        code = child.wait()
        return f"status {code}" if code >= 0 else f"signal {-code}"

    def _signal(self, sig: signal.Signals) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    # --- stop ----------------------------------------------------------------------------

    async def close(self, keep_running: bool = False) -> None:
        self._closing = True  # no retry starts keepalived again
        if self._retry is not None:
            self._retry.cancel()
        async with self._lock:
            if self._runner is not None:
                await self._stop(keep_running)

    async def _stop(self, keep_running: bool) -> None:
        self._closing = True
        runner, self._runner = self._runner, None
        if keep_running and self.pid is not None:
            self.note(f"keepalived (pid {self.pid}) left running: it holds the addresses", {})
        elif self.pid is not None:
            pid = self.pid
            self._signal(signal.SIGTERM)  # a priority-0 advert: the peer takes over at once
            assert runner is not None
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await asyncio.shield(runner)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await asyncio.to_thread(drop_addresses, self.addresses)
            self.note(f"keepalived (pid {pid}) stopped", {})
            self._set_role(Role.STOPPED)
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._child = None  # kept running: never waited for, and never killed by us
        self.pid = None
        self._close_fifo()

    # --- hand-over -----------------------------------------------------------------------

    async def release(self, by: str = "", timeout: float = RELEASE_TIMEOUT) -> dict[str, Any]:
        """Hand the floating addresses to the peer (maintenance): FAULT, then passive."""
        config = self.config
        ha = config.node.ha if config is not None else None
        if ha is None or not ha.enabled:
            raise HaError("HA is not enabled on this node (node.ha)")
        if self.pid is None:
            raise HaError(f"keepalived is not running: {self.problem or 'it is starting'}")
        if ha.preempt:
            raise HaError(
                "node.ha.preempt is on: this node would take the addresses back at once; "
                "turn preempt off for a manual hand-over"
            )
        if self.ha.role is not Role.ACTIVE:
            raise HaError(f"this node is {self.ha.role}, not active: it holds nothing to hand over")
        if self._releasing:
            raise HaError("a hand-over is already under way")
        self._releasing = True
        try:
            return await self._release(ha, by, timeout)
        finally:
            self._releasing = False

    async def _release(self, ha: c.HASettings, by: str, timeout: float) -> dict[str, Any]:
        who = f" by {by}" if by else ""
        self.note(f"hand-over asked{who}: releasing the floating addresses to the peer", {})
        started = time.monotonic()
        await asyncio.to_thread(self.paths.release_file.write_text, "1\n")
        try:
            async with asyncio.timeout(timeout):
                while self.ha.role is Role.ACTIVE:
                    self._role_changed.clear()
                    await self._role_changed.wait()
            seconds = time.monotonic() - started
            # Held for an advert interval more: the peer, told by the priority-0 advert, is
            # MASTER by then, so this node comes back as BACKUP behind it.
            await asyncio.sleep(min(ha.advert_int, 1.0) + 0.2)
        except TimeoutError:
            raise HaError(f"this node was still active {timeout:g} s after the release") from None
        finally:
            await asyncio.to_thread(self.paths.release_file.write_text, "0\n")
        with contextlib.suppress(TimeoutError):  # FAULT ends (BACKUP) once the file is read
            async with asyncio.timeout(2.0):
                while self.ha.role is Role.FAULT:
                    self._role_changed.clear()
                    await self._role_changed.wait()
        self.note(f"released: this node is {self.ha.role}", {"seconds": round(seconds, 3)})
        return {"released": True, "role": str(self.ha.role), "seconds": round(seconds, 3)}

    # --- views ---------------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        return [f"ha: {p}" for p in (self.problem, self.failing) if p is not None]

    def status(self) -> dict[str, Any]:
        return {
            "role": str(self.ha.role),
            "since": datetime.fromtimestamp(self.ha.since_wall, UTC).isoformat(timespec="seconds"),
            "keepalived_pid": self.pid,
            "restarts": self.restarts,
            "addresses": [a.cidr for a in self.addresses],
        }


def stop_left_keepalived(state_dir: Path) -> list[str]:
    """`pacslb teardown` and `stop-data-plane`: end a keepalived left running (by `stop
    --keep-data-plane`, or by a control process that was killed). Held by a pidfd opened
    before the check that it is our keepalived: the signal cannot reach a process given its
    pid since."""
    paths = k.KeepalivedPaths.under(state_dir)
    pid = _alive_keepalived(paths)
    if pid is None:
        return []
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return []
    try:
        if _alive_keepalived(paths) != pid:  # exited between the check and the pidfd
            return []
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)  # priority-0 advert: the peer takes over
        poll = select.poll()
        poll.register(pidfd, select.POLLIN)  # readable once it has exited
        if not poll.poll(STOP_TIMEOUT * 1000):
            raise EngineError(f"keepalived (pid {pid}) did not stop in {STOP_TIMEOUT:g} s")
    finally:
        os.close(pidfd)
    return [f"stopped keepalived (pid {pid}): the floating addresses went to the peer"]


def doctor_findings(config: c.Config) -> list[Finding]:
    """`pacslb doctor`: an HA node needs keepalived, and warns of unauthenticated VRRPv3 and
    of conntrackd's unauthenticated sync (NAT services)."""
    ha = config.node.ha
    if ha is None or not ha.enabled:
        return []
    binary = find_keepalived()
    if binary is None:
        return [
            Finding(
                "keepalived",
                Level.PROBLEM,
                HOST,
                "node.ha is enabled and keepalived is not installed: the floating addresses "
                "cannot be held",
                INSTALL_HINT,
            )
        ]
    out = [Finding("keepalived", Level.OK, HOST, f"keepalived at {binary} (node.ha)")]
    if k.vrrp_version(ha.advert_int) == 3:
        out.append(
            Finding(
                "keepalived",
                Level.WARNING,
                HOST,
                f"node.ha.advert_int {ha.advert_int:g} needs VRRPv3, which has no "
                "authentication: keep the pair on a segment only trusted hosts reach",
                "a whole-second advert_int (VRRPv2) authenticates the adverts",
            )
        )
    if conntrackd_wanted(config):
        out.append(
            Finding(
                "conntrackd",
                Level.WARNING,
                HOST,
                f"NAT services under HA: conntrackd's sync (UDP {conntrackd_sync_port(ha)} on "
                f"{ha.interface}) is unauthenticated and injects into the kernel's conntrack "
                "table: the HA link must be a dedicated or isolated segment",
                "a back-to-back cable or a VLAN only the two nodes are on (docs/ha.md)",
            )
        )
    return out
