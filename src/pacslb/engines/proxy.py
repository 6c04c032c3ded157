"""The control process's side of the built-in proxy: start or adopt `pacslb proxy` workers,
hand them Plans, read their counters back, and replace any that crashes or hangs.

Each worker is its own process with its own control socket (`state_dir/proxy-N.sock`); with
`workers: N` they share every listening port through SO_REUSEPORT and get the same Plan. A worker
left running by a control process that died is adopted, not restarted, so its connections live.

A watchdog pings every worker each second and reads its counters and notices. A worker that
exits is replaced the moment its exit is seen (its pidfd); one that stops answering for
HANG_MISSES pings in a row (not counting those while it applies a Plan of ours) is killed and
replaced, in the background, so that the other workers are still watched meanwhile (stopped, it
would still hold its share of every port). Each worker process is held by a pidfd, so no signal
reaches another process given its pid later. Each start, adoption, crash, hang and replacement
is an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pacslb.core.plan import Plan, ServerKey
from pacslb.core.workers import CounterSum, PingWatch, WorkerCounters
from pacslb.engines.base import Counters
from pacslb.engines.proxy_sticky import (
    SHARED_KINDS,
    StickyMirror,
    outcome,
    replaces_steered_listeners,
)
from pacslb.engines.unix_peer import listener
from pacslb.errors import EngineError

START_TIMEOUT = 15.0
POLL_INTERVAL = 1.0  # the watchdog's period: a ping, the counters and the notices
PING_TIMEOUT = 1.0  # a worker's loop answers a ping in well under a millisecond
READ_TIMEOUT = 5.0  # counters of many services take longer to encode than a ping


def stop_workers(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop the proxy workers still serving from `state_dir` (left by `pacslb stop
    --keep-data-plane` or a crash) and wait for them to exit; returns what was done."""
    done = []
    for path in sorted(state_dir.glob("proxy-*.sock")):
        try:
            pid = _ask(path, {"cmd": "ping"})["pid"]
            pidfd = os.pidfd_open(pid)  # waits for that process, not for its pid
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a stale socket file: nobody answers there
        try:
            try:
                _ask(path, {"cmd": "stop"})
            except (OSError, ValueError, KeyError, TypeError):
                continue
            poll = select.poll()
            poll.register(pidfd, select.POLLIN)
            if not poll.poll(timeout * 1000):
                raise EngineError(f"proxy worker {pid} ({path.name}) did not stop in {timeout:g} s")
        finally:
            os.close(pidfd)
        done.append(f"stopped proxy worker {pid} ({path.name})")
    for stale in state_dir.glob("proxy-*.pid"):  # written by earlier versions; never read now
        stale.unlink(missing_ok=True)
    return done


def _ask(path: Path, payload: dict[str, Any]) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        answer = json.loads(sock.makefile("rb").readline())
    if not answer.get("ok"):
        raise ValueError(answer.get("error"))
    return answer.get("result")


def _apply_line(plan: Plan, workers: int) -> bytes:
    """The worker's apply request for `plan`, one line (Plan.to_json() is compact JSON: a
    string in it holds no raw newline), without decoding and encoding the Plan again.
    `workers`: how many share the ports (the modulus of the client steering)."""
    return b'{"cmd": "apply", "workers": %d, "plan": ' % workers + plan.to_json() + b"}\n"


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Worker:
    """One `pacslb proxy` process: started here (a child), or adopted (left serving by a control
    process that died or was stopped with --keep-data-plane; known by the pid it reports).

    The process is held by a pidfd from the moment it is started, adopted or promoted: signals
    go through it and its exit is watched through it, so neither can reach another process that
    was given the same pid after this one exited."""

    def __init__(self, name: str, state_dir: Path) -> None:
        self.name = name
        self.path = state_dir / f"{self.name}.sock"
        self.log = state_dir / f"{self.name}.log"
        self.process: asyncio.subprocess.Process | None = None  # None when adopted
        self.pid: int | None = None  # None while no worker runs (a start failed)
        self.pidfd: int | None = None  # that very process
        self.exited: asyncio.Future[None] | None = None  # done once that process has exited
        self.state = "down"  # up, slow (a ping missed), crashed, hung, down
        self.started_at: float | None = None  # unix time this worker was started or adopted
        self.restarts = 0
        self.last: WorkerCounters | None = None  # its counters as last read
        self.watch = PingWatch(0.0)
        self.retry_at = 0.0  # monotonic time of the next start after a failed one
        self.failures = 0  # starts that failed in a row
        self.replacing = 0  # replacements or restarts under way: the watchdog leaves it alone
        self.applying = 0  # Plans of ours it is applying (bounded by the apply's own timeout)
        self.reports = True  # knows "report"; False for an adopted worker of an older version

    async def call(self, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        """One request on a fresh connection (a Plan, or a ping and the counters each second).
        No lock: a ping must be answered while a large Plan is being applied."""
        return await self.send(json.dumps(payload).encode() + b"\n", timeout)

    async def send(self, line: bytes, timeout: float = 10.0) -> Any:
        """call() of a request already encoded (one Plan, encoded once for every worker)."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=64 << 20)
            try:
                writer.write(line)
                await writer.drain()
                answer_line = await reader.readline()
            finally:
                writer.close()
        if not answer_line:
            raise EngineError(f"proxy worker {self.name} closed the connection")
        answer = json.loads(answer_line)
        if not answer.get("ok"):
            raise EngineError(answer.get("error", "proxy worker refused the request"))
        return answer.get("result")

    async def read(self) -> tuple[WorkerCounters, list[dict[str, Any]]]:
        """Its counters and its queued notices, in one request (two for a worker of the
        previous version, adopted after an upgrade, which does not know "report")."""
        if self.reports:
            try:
                report = await self.call({"cmd": "report"}, READ_TIMEOUT)
                return report["counters"], report["notices"]
            except EngineError as exc:
                if "unknown command" not in str(exc):
                    raise
                self.reports = False
        counters = await self.call({"cmd": "counters"}, READ_TIMEOUT)
        return counters, await self.call({"cmd": "notices"}, READ_TIMEOUT)

    async def ping(self, timeout: float) -> dict[str, Any]:
        result = await self.call({"cmd": "ping"}, timeout)
        if not isinstance(result, dict) or not isinstance(result.get("pid"), int):
            raise ValueError(f"proxy worker {self.name} answered ping with {result!r}")
        return result

    async def answers(self, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            return await self.ping(timeout)
        except (OSError, EngineError, TimeoutError, ValueError):
            return None

    async def stuck(self) -> tuple[int, int] | None:
        """The process whose control socket accepts but does not answer (stopped, hung), as
        (pid, pidfd): the one listening there as the kernel records it, also when its backlog
        is full. None if nobody listens (a stale file). Off the event loop: it reads /proc."""
        found = await asyncio.to_thread(listener, self.path)
        if found is not None and found[0] == os.getpid():
            os.close(found[1])
            raise EngineError(f"proxy worker at {self.path} is alive but does not answer")
        return found

    def track(
        self, pid: int, process: asyncio.subprocess.Process | None = None, pidfd: int | None = None
    ) -> None:
        """Hold this process by a pidfd from now on (a child, an adopted or a stuck worker);
        `pidfd`, if given, is that process's, handed over (from SO_PEERPIDFD)."""
        self.forget()
        loop = asyncio.get_running_loop()
        self.pid, self.process, self.reports = pid, process, True
        exited: asyncio.Future[None] = loop.create_future()
        self.exited = exited
        if pidfd is not None:
            fd = pidfd
        else:
            try:
                fd = os.pidfd_open(pid)
            except OSError:  # it has exited already
                exited.set_result(None)
                return
        self.pidfd = fd

        def readable() -> None:  # once: a pidfd stays readable after its process exits
            loop.remove_reader(fd)
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, readable)

    def forget(self) -> None:
        """Let go of the process (it has exited, or another Worker took it over)."""
        if self.pidfd is not None:
            asyncio.get_running_loop().remove_reader(self.pidfd)
            os.close(self.pidfd)
        if self.exited is not None and not self.exited.done():
            self.exited.cancel()  # its exit watcher ends without a replacement
        self.process, self.pid, self.pidfd, self.exited = None, None, None, None

    def take_over(self, other: Worker) -> None:
        """Take the process of `other` (a spare promoted to this worker's name)."""
        self.forget()
        self.process, self.pid, self.pidfd, self.exited = (
            other.process,
            other.pid,
            other.pidfd,
            other.exited,
        )
        self.reports = other.reports
        other.process, other.pid, other.pidfd, other.exited = None, None, None, None

    def adopt(self, pid: int) -> None:
        self.track(pid)
        self.state = "up"
        self.started_at = time.time()
        self.watch.answered(time.monotonic())

    async def spawn(self) -> None:
        """Start a new worker and wait until it answers; EngineError if it does not."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # the caller made sure nobody answers there
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pacslb.cli",
                "proxy",
                "--socket",
                str(self.path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on `pacslb run` reaches us, not the data plane
            )
        finally:
            out.close()
        self.track(process.pid, process)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while await self.answers() is None:
            if process.returncode is not None:
                self.forget()
                raise EngineError(
                    f"proxy worker {self.name} {_exit_text(process.returncode)}; see {self.log}"
                )
            if loop.time() > deadline:
                self.kill()
                await self.gone(5.0)
                self.forget()
                raise EngineError(f"proxy worker did not start within {START_TIMEOUT:g} s")
            await asyncio.sleep(0.02)
        self.state, self.started_at = "up", time.time()
        self.watch.answered(time.monotonic())

    def kill(self) -> None:
        """SIGKILL: a stopped or hung worker holds its listening sockets (SO_REUSEPORT) and the
        kernel keeps dealing it new connections until it is gone."""
        self.signal(signal.SIGKILL)

    def signal(self, sig: signal.Signals) -> None:
        """Signal the worker through its pidfd: never another process given its pid since."""
        if self.pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, sig)

    async def gone(self, timeout: float) -> bool:
        """Wait (bounded) until the worker has exited; True if it has."""
        exited = self.exited
        if exited is None:
            return True
        await asyncio.wait({exited}, timeout=timeout)
        return exited.done()

    async def stop(self) -> None:
        try:
            await self.call({"cmd": "stop"}, timeout=5.0)
        except (OSError, EngineError, TimeoutError, ValueError):
            # Not answering: still starting (a spare), or hung. SIGTERM stops one that starts.
            self.signal(signal.SIGTERM)
        if not await self.gone(10.0):
            self.kill()
            await self.gone(5.0)
        self.state = "down"
        self.forget()

    def describe(self) -> dict[str, Any]:
        return {
            "worker": self.name,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "adopted": self.pid is not None and self.process is None,
            "started": self.started_at,
        }


def _ignore(message: str, key: ServerKey | None = None, data: dict[str, Any] | None = None) -> None:
    pass


class ProxyEngine:
    """The proxy workers, watched: a worker that exits is replaced at once, one that stops
    answering (HANG_MISSES pings in a row) is killed and replaced, each with an event; their
    counters are summed with those of the workers they replaced."""

    name = "proxy"

    def __init__(self, state_dir: Path, workers: int, spare: bool = True) -> None:
        # `workers` has no default here: the one default is config.default_workers (via
        # ProxySettings), which a default of this class would silently contradict.
        self.state_dir = state_dir
        self.workers = [Worker(f"proxy-{i}", state_dir) for i in range(workers)]
        # An idle worker started ahead (imports done, no Plan) that takes over a crashed or
        # hung worker's name in milliseconds instead of an interpreter start (~0.5-1.5 s).
        self.spare = Worker("proxy-spare", state_dir) if spare else None
        self._spare_ready = False
        # Set by the control process: records an event (kind "engine") for this engine.
        self.notify: Callable[..., None] = _ignore
        self.restarts = {"crashed": 0, "hung": 0}  # replacements by reason
        self._sum = CounterSum()
        self._counters: dict[ServerKey, Counters] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the watchdog and the exit watchers
        self._started = False
        self._closing = False
        self._lock = asyncio.Lock()  # a Plan, a start or a replacement: one at a time
        self._last_plan: Plan | None = None
        self._spare_task_running = False
        # every worker's source-ip persistence entries (engines/proxy_sticky.py)
        self.sticky = StickyMirror()
        self._sticky_services = False  # the Plan has an l7 service with source-ip persistence

    async def apply(self, plan: Plan) -> None:
        async with self._lock:  # one Plan at a time, and never two starts of a worker
            await self._apply(plan)

    async def _apply(self, plan: Plan) -> None:
        if not self._started:
            if all(s.mode.is_kernel for s in plan.services):
                return  # nothing for the proxy: start no process
            await self._stop_extra_workers()
            # all at once: each start is an interpreter start (~0.5-1 s of one core)
            ups = [self._bring_up(worker) for worker in self.workers]
            for result in await asyncio.gather(*ups, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
            self._started = True
            self._spawn_task(self._watchdog())
            await self.sticky.seed(self.workers)  # entries the peer sent before we started
        previous, self._last_plan = self._last_plan, plan
        self.sticky.plan_applied(plan)  # learnt entries live no longer than their timeout
        self._sticky_services = any(
            not s.mode.is_kernel and s.persistence.kind in SHARED_KINDS for s in plan.services
        )
        line = _apply_line(plan, len(self.workers))  # encoded once, sent to every worker at once
        gives = [self._give_plan(worker, line) for worker in self.workers]
        if replaces_steered_listeners(previous, plan):
            # one worker after another, so that no two swap places in the group (proxy_sticky)
            results = [await outcome(give) for give in gives]
        else:
            results = await asyncio.gather(*gives, return_exceptions=True)
        errors = []
        for worker, result in zip(self.workers, results, strict=True):
            if isinstance(result, EngineError):
                errors.append(f"{worker.name}: {result}")
            elif isinstance(result, BaseException):
                raise result
        if errors:
            raise EngineError("; ".join(errors))

    async def _stop_extra_workers(self) -> None:
        """Stop the workers a previous `pacslb run` left beyond node.proxy.workers (it had
        more): unwatched, they would serve their old Plan on the same ports for ever."""
        ours = {w.path for w in self.workers}
        if self.spare is not None:
            ours.add(self.spare.path)
        for path in sorted(self.state_dir.glob("proxy-*.sock")):
            if path in ours:
                continue
            extra = Worker(path.name.removesuffix(".sock"), self.state_dir)
            info = await extra.answers()
            if info is None:
                continue
            extra.track(info["pid"])
            await extra.stop()
            self.notify(
                f"worker {extra.name} (pid {info['pid']}) stopped: beyond node.proxy.workers",
                None,
                {"worker": extra.name, "reason": "stopped", "pid": info["pid"]},
            )

    async def _give_plan(self, worker: Worker, line: bytes) -> None:
        """Send an apply request (_apply_line) and wait until the worker serves that Plan."""
        if worker.pid is None:
            raise EngineError("not running (a start failed; it is retried)")
        worker.applying += 1
        try:
            await worker.send(line)
        except (OSError, TimeoutError, ValueError) as exc:
            raise EngineError(str(exc) or type(exc).__name__) from exc
        finally:
            worker.applying -= 1

    async def _bring_up(self, worker: Worker) -> None:
        """Adopt the worker already serving from this state directory, or start one."""
        info = await worker.answers()
        if info is not None and info["pid"] == worker.pid:
            return  # ours, started by an earlier try whose other workers failed
        if info is not None:
            worker.adopt(info["pid"])
            self._event(
                worker,
                "adopted",
                f"adopted (pid {worker.pid}, serving revision {info.get('revision')})",
            )
            self._watch_exit(worker)
            return
        try:
            stuck = await worker.stuck()
        except (OSError, EngineError) as exc:  # not a second worker beside one we cannot kill
            self._event(worker, "unidentified", f"not started: {exc}")
            raise EngineError(f"{worker.name}: {exc}") from exc
        if stuck is not None:
            worker.track(stuck[0], pidfd=stuck[1])
            how = "found alive but not answering; killed with SIGKILL"
            self._event(worker, "hung", f"(pid {stuck[0]}) hung: {how}")
            self.restarts["hung"] += 1
            worker.restarts += 1
            worker.kill()
            await worker.gone(5.0)
            worker.forget()
        try:
            await worker.spawn()
        except OSError as exc:
            raise EngineError(f"cannot start the proxy: {exc}") from exc
        self._event(worker, "started", f"started (pid {worker.pid})")
        self._watch_exit(worker)

    # --- the watchdog ------------------------------------------------------------------

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch_exit(self, worker: Worker) -> None:
        """Replace the worker the moment its process exits (a child: its exit status; adopted:
        its pidfd), not at the next ping."""
        pid, process, exited = worker.pid, worker.process, worker.exited
        assert pid is not None and exited is not None

        async def watch() -> None:
            if process is not None:
                how = _exit_text(await process.wait())
            else:
                await asyncio.wait({exited})
                if exited.cancelled():
                    return  # let go of (replaced or stopped) before it exited
                how = "exited (adopted: its exit status is not ours to read)"
            await self._replace(worker, pid, "crashed", how)

        self._spawn_task(watch())

    async def _watchdog(self) -> None:
        """Each second: ping every worker (PING_TIMEOUT), read its counters and notices; a
        worker that stopped answering is killed and replaced, one whose start failed retried."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await asyncio.gather(
                    *(self._check(worker) for worker in self.workers), self._check_spare()
                )
                self._recount()
                if self._sticky_services:  # those that answered this round's ping
                    await self.sticky.collect([w for w in self.workers if w.state == "up"])
            except Exception as exc:  # the watchdog must outlive any one bad answer
                self.notify(f"watchdog error: {exc!r}")
            await asyncio.sleep(max(0.05, POLL_INTERVAL - (loop.time() - began)))

    async def _check(self, worker: Worker) -> None:
        if worker.replacing:
            return  # a replacement under way (a process starting does not answer yet)
        pid = worker.pid
        if pid is None:
            if time.monotonic() >= worker.retry_at:
                self._spawn_task(self._restart_when_due(worker))
            return
        try:
            await worker.ping(PING_TIMEOUT)
        except (OSError, EngineError, TimeoutError, ValueError):
            if worker.pid != pid or worker.exited is None or worker.exited.done():
                return  # replaced meanwhile, or it exited: its exit watcher replaces it
            if worker.applying:
                # Its loop is busy with a Plan of ours (a large one takes seconds): the apply's
                # own timeout bounds that; its pings count again once the apply has ended.
                worker.state = "slow"
                return
            if worker.watch.missed(time.monotonic()):
                misses = worker.watch.misses
                how = f"no answer to {misses} pings in a row; killed with SIGKILL"
                # In the background: a replacement takes seconds (a start, a Plan), in which
                # the other workers are still pinged. _replace's pid check dedupes.
                self._spawn_task(self._replace(worker, pid, "hung", how))
            elif worker.pid == pid:
                worker.state = "slow"
            return
        # After each await: if the worker was replaced meanwhile, this answer is the dead one's
        # (its counters were retired with it: written back, they would be counted twice).
        if worker.pid != pid:
            return
        worker.watch.answered(time.monotonic())
        worker.state = "up"
        try:
            counters, notices = await worker.read()
        except (OSError, EngineError, TimeoutError, ValueError, KeyError, TypeError):
            return  # the next ping decides
        if worker.pid == pid:  # (its notices are kept: they tell what happened before it died)
            worker.last = counters
        for item in notices or ():
            self.notify(
                f"{worker.name}: {item.get('message', '')}",
                (item.get("service", ""), item.get("server", "")),
                {"worker": worker.name, "pid": pid, "reason": "notice", "at": item.get("at")},
            )

    async def _check_spare(self) -> None:
        """Keep one spare worker ready: adopt the one a previous `pacslb run` left, start one
        if there is none (in the background: a start takes a second), drop one that died."""
        spare = self.spare
        if spare is None or self._spare_task_running:
            return
        if self._spare_ready and await spare.answers(PING_TIMEOUT) is not None:
            return
        self._spare_ready = False
        if time.monotonic() < spare.retry_at:
            return
        self._spare_task_running = True

        async def start() -> None:
            try:
                info = await spare.answers()
                if info is not None and info.get("revision") is None:
                    if info["pid"] != spare.pid:
                        spare.adopt(info["pid"])
                else:
                    if spare.pid is None and (stuck := await spare.stuck()) is not None:
                        # left by a previous run, alive but not answering
                        spare.track(stuck[0], pidfd=stuck[1])
                    spare.kill()  # one that died, or that serves a Plan (not a spare)
                    await spare.gone(5.0)
                    spare.forget()
                    await spare.spawn()
                self._spare_ready = not self._closing
                spare.failures = 0
            except (OSError, EngineError) as exc:
                spare.failures += 1
                spare.retry_at = time.monotonic() + min(60.0, 5.0 * spare.failures)
                if spare.failures == 1:
                    self.notify(f"the spare worker could not be started: {exc}")
            finally:
                self._spare_task_running = False

        self._spawn_task(start())

    async def _promote_spare(self, worker: Worker) -> bool:
        """Give a ready spare the name (socket, log) of `worker`, which is dead; False if
        there is none or it failed (it is killed then, and another started)."""
        spare = self.spare
        if spare is None or not self._spare_ready:
            return False
        self._spare_ready = False
        try:
            await spare.call(
                {"cmd": "serve-as", "socket": str(worker.path), "log": str(worker.log)}, 2.0
            )
        except (OSError, EngineError, TimeoutError, ValueError) as exc:
            self.notify(f"the spare worker could not take over {worker.name}: {exc}")
            spare.kill()
            await spare.gone(5.0)
            spare.forget()
            return False
        worker.take_over(spare)
        worker.state, worker.started_at = "up", time.time()
        worker.watch.answered(time.monotonic())
        return True

    async def _restart_when_due(self, worker: Worker) -> None:
        """Start again a worker whose start failed, once its pause is over."""
        worker.replacing += 1
        try:
            async with self._lock:
                if time.monotonic() >= worker.retry_at:
                    await self._restart(worker, "down", time.monotonic())
        finally:
            worker.replacing -= 1

    async def _replace(self, worker: Worker, pid: int, reason: str, how: str) -> None:
        """Kill the worker that crashed or hung, keep its counters, start another."""
        if reason == "hung" and worker.pid == pid and not self._closing:
            worker.kill()  # now: a Plan being applied to it fails at once, not after 10 s
        worker.replacing += 1
        try:
            await self._replace_locked(worker, pid, reason, how)
        finally:
            worker.replacing -= 1

    async def _replace_locked(self, worker: Worker, pid: int, reason: str, how: str) -> None:
        async with self._lock:
            if self._closing or worker.pid != pid:
                return  # already replaced (the exit watcher and the ping both saw it)
            began = time.monotonic()
            worker.state = reason
            self._sum.retire(worker.last)
            worker.last = None
            self._recount()
            self.restarts[reason] += 1
            worker.restarts += 1
            self._event(worker, reason, f"(pid {pid}) {reason}: {how}", pid=pid)
            if reason == "hung":  # (a crashed one has exited: its pid is not ours to signal)
                worker.kill()
                if not await worker.gone(5.0):
                    self._event(worker, "unkillable", f"(pid {pid}) alive 5 s after SIGKILL")
            worker.forget()
            await self._restart(worker, reason, began, pid)

    async def _restart(
        self, worker: Worker, reason: str, began: float, old: int | None = None
    ) -> None:
        """Start the worker again and give it the last Plan; the caller holds the lock."""
        if self._closing or worker.pid is not None:
            return
        try:
            if await self._promote_spare(worker):
                via = "the spare, "
            else:
                via = ""
                await worker.spawn()
        except (OSError, EngineError) as exc:
            # A start that fails (no memory, a broken install) is retried, more slowly each time.
            worker.failures += 1
            pause = min(30.0, 2.0 ** min(worker.failures, 5))
            worker.retry_at = time.monotonic() + pause
            worker.state = "down"
            self._event(worker, "start-failed", f"could not start: {exc}; retrying in {pause:g} s")
            return
        worker.failures = 0
        await self._seed_sticky(worker)
        if self._last_plan is not None:
            try:
                await self._give_plan(worker, _apply_line(self._last_plan, len(self.workers)))
            except EngineError as exc:  # a listener that cannot be opened: its VIP is named
                self._event(worker, "plan-failed", f"did not take the last Plan: {exc}")
        was = f"pid {old} -> " if old is not None else ""
        self._event(
            worker,
            "replaced",
            f"replaced ({reason}): {was}pid {worker.pid} ({via}serving in "
            f"{time.monotonic() - began:.2f} s, restart {worker.restarts})",
            old=old,
        )
        self._watch_exit(worker)

    async def _seed_sticky(self, worker: Worker) -> None:
        """Before a replacement's first Plan (before it listens): every worker gets the
        persistence entries of all, the dead one's as last read. Its socket's place in the
        SO_REUSEPORT group went to another worker's (core/steering.py), so clients move."""
        if not self._sticky_services:
            return
        self.sticky.worker_lost(worker.name)
        # (not one that missed its last ping: a second hung worker must not delay this one)
        others = [w for w in self.workers if w is not worker and w.state == "up"]
        await self.sticky.collect(others, share=False)
        for problem in await self.sticky.seed([worker, *others]):
            self._event(worker, "sticky-seed-failed", problem)

    def export_sticky(self, since: int) -> tuple[list[dict[str, Any]], int]:
        """Source-ip persistence entries of every worker new or changed after cursor `since`
        (0: all), as last read (each second), and the cursor to pass next time. Each entry:
        {"service", "key" (masked client address), "server", "ttl" (seconds left, or the
        service's timeout while the client has connections open)}."""
        return self.sticky.export(since)

    def import_sticky(self, entries: list[dict[str, Any]]) -> None:
        """Entries from the peer node (export_sticky's form): every worker adds those it does
        not have, with their ttl; an existing live entry is kept. Handed to the workers in the
        background (`await self.sticky.settled()` waits). A bad entry is skipped and counted
        (self.sticky.skipped), the others are taken; ValueError only when `entries` is not a
        list."""
        self.sticky.learn(entries, self.workers)

    def _event(self, worker: Worker, reason: str, message: str, **data: Any) -> None:
        data = {"worker": worker.name, "reason": reason, "pid": worker.pid, **data}
        self.notify(f"worker {worker.name} {message}", None, data)

    def _recount(self) -> None:
        tallies = self._sum.sum(worker.last for worker in self.workers)
        self._counters = {
            key: Counters(**tally.values, responses=tally.responses)
            for key, tally in tallies.items()
        }

    # --- views and stop ----------------------------------------------------------------

    def counters(self) -> Mapping[ServerKey, Counters]:
        return self._counters

    def status(self) -> dict[str, Any]:
        """The workers (pid, state, restarts) and replacements by reason, for status/metrics."""
        return {
            "workers": [w.describe() for w in self.workers] if self._started else [],
            "spare": self.spare.pid if self.spare is not None and self._spare_ready else None,
            "restarts": dict(self.restarts),
        }

    async def close(self, keep_running: bool = False) -> None:
        self._closing = True
        self.sticky.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        spares = [self.spare] if self.spare is not None and self.spare.pid is not None else []
        if keep_running:  # the workers serve their last Plan; the next `pacslb run` adopts them
            await asyncio.gather(*(s.stop() for s in spares))  # it serves nothing
            for worker in self.workers:
                worker.forget()
            return
        async with self._lock:
            running = [w for w in self.workers if w.pid is not None]
            await asyncio.gather(*(w.stop() for w in [*running, *spares]))
