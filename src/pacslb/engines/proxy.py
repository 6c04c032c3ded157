"""The control process's side of the built-in proxy: start or adopt `pacslb proxy` workers,
hand them Plans, read their counters back.

Each worker is its own process with its own control socket (`state_dir/proxy-N.sock`); with
`workers: N` they share every listening port through SO_REUSEPORT and get the same Plan. A worker
left running by a control process that died is adopted, not restarted, so its connections live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pacslb.core.plan import Plan, ServerKey
from pacslb.engines.base import Counters
from pacslb.errors import EngineError

START_TIMEOUT = 15.0
POLL_INTERVAL = 1.0


# the counters of each worker (ServerStats.as_dict) that add up across workers
_SUMMED = ("active", "total", "bytes_in", "bytes_out", "connect_failures", "requests")


def stop_workers(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop the proxy workers still serving from `state_dir` (left by `pacslb stop
    --keep-data-plane` or a crash) and wait for them to exit; returns what was done."""
    done = []
    for path in sorted(state_dir.glob("proxy-*.sock")):
        try:
            pid = _ask(path, {"cmd": "ping"})["pid"]
            _ask(path, {"cmd": "stop"})
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a stale socket file: nobody answers there
        for _ in range(int(timeout / 0.05)):
            if not _pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            raise EngineError(f"proxy worker {pid} ({path.name}) did not stop in {timeout:g} s")
        done.append(f"stopped proxy worker {pid} ({path.name})")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child of this process, not yet reaped) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


class Worker:
    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log
        self.process: asyncio.subprocess.Process | None = None  # None when adopted
        self._lock = asyncio.Lock()

    async def call(self, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        """One request on a fresh connection (rare: a Plan, or the counters once a second)."""
        async with self._lock, asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=64 << 20)
            try:
                writer.write(json.dumps(payload).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
        if not line:
            raise EngineError(f"proxy worker at {self.path} closed the connection")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise EngineError(answer.get("error", "proxy worker refused the request"))
        return answer.get("result")

    async def alive(self) -> bool:
        try:
            await self.call({"cmd": "ping"}, timeout=2.0)
        except (OSError, EngineError, TimeoutError, ValueError):
            return False
        return True

    async def ensure(self) -> None:
        if await self.alive():
            return
        if self.path.exists():
            # Unlink only a dead worker's socket: one that is merely slow still serves its
            # ports (SO_REUSEPORT), and a second worker beside it would orphan it.
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1)
                    probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            except OSError as exc:
                raise EngineError(f"proxy worker at {self.path} does not answer: {exc}") from exc
            else:
                raise EngineError(f"proxy worker at {self.path} is alive but does not answer")
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.process = await asyncio.create_subprocess_exec(
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await self.alive():
            if self.process.returncode is not None:
                raise EngineError(
                    f"proxy worker exited with {self.process.returncode}; see {self.log}"
                )
            if loop.time() > deadline:
                raise EngineError(f"proxy worker did not start within {START_TIMEOUT:g} s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        with contextlib.suppress(OSError, EngineError, TimeoutError, ValueError):
            await self.call({"cmd": "stop"}, timeout=5.0)
        if self.process is not None:
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


class ProxyEngine:
    name = "proxy"

    def __init__(self, state_dir: Path, workers: int = 1) -> None:
        self.workers = [
            Worker(state_dir / f"proxy-{i}.sock", state_dir / f"proxy-{i}.log")
            for i in range(workers)
        ]
        self._counters: dict[ServerKey, Counters] = {}
        self._poller: asyncio.Task[None] | None = None
        self._started = False
        self._lock = asyncio.Lock()
        self._last_plan: Plan | None = None

    async def apply(self, plan: Plan) -> None:
        async with self._lock:  # one Plan at a time, and never two starts of a worker
            await self._apply(plan)

    async def _apply(self, plan: Plan) -> None:
        if not self._started:
            if all(s.mode.is_kernel for s in plan.services):
                return  # nothing for the proxy: start no process
            try:
                for worker in self.workers:
                    await worker.ensure()
            except OSError as exc:
                raise EngineError(f"cannot start the proxy: {exc}") from exc
            self._started = True
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        self._last_plan = plan
        payload = {"cmd": "apply", "plan": json.loads(plan.to_json())}
        errors = []
        for worker in self.workers:
            try:
                await worker.call(payload)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{worker.path.name}: {exc}")
            except EngineError as exc:
                errors.append(str(exc))
        if errors:
            raise EngineError("; ".join(errors))

    def counters(self) -> Mapping[ServerKey, Counters]:
        return self._counters

    async def refresh(self) -> None:
        merged: dict[ServerKey, dict[str, int]] = {}
        classes: dict[ServerKey, dict[str, int]] = {}
        for worker in self.workers:
            result = await worker.call({"cmd": "counters"})
            for service, servers in result.items():
                for server, c in servers.items():
                    key = (service, server)
                    acc = merged.setdefault(key, dict.fromkeys(_SUMMED, 0))
                    for name in _SUMMED:
                        acc[name] += int(c[name])
                    seen = classes.setdefault(key, {})
                    for cls, n in c["responses"].items():
                        seen[cls] = seen.get(cls, 0) + int(n)
        self._counters = {
            key: Counters(**values, responses=classes[key]) for key, values in merged.items()
        }

    async def _poll(self) -> None:
        """Read counters each second; a worker that stopped answering (killed, OOM) is
        restarted and given the last Plan, so its VIPs are back within a few seconds."""
        while True:
            try:
                await self.refresh()
            except (OSError, EngineError, TimeoutError, ValueError):
                with contextlib.suppress(OSError, EngineError, TimeoutError, ValueError):
                    await self._recover()
            await asyncio.sleep(POLL_INTERVAL)

    async def _recover(self) -> None:
        async with self._lock:
            if self._last_plan is None:
                return
            payload = {"cmd": "apply", "plan": json.loads(self._last_plan.to_json())}
            for worker in self.workers:
                if await worker.alive():
                    continue
                print(f"pacslb: proxy worker {worker.path.name} is gone; restarting it", flush=True)
                await worker.ensure()
                with contextlib.suppress(EngineError):  # a listener error is reported by apply
                    await worker.call(payload)

    async def close(self, keep_running: bool = False) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if keep_running:
            return  # the workers serve their last Plan; the next `pacslb run` adopts them
        async with self._lock:
            for worker in self.workers:
                if self._started or worker.process is not None:
                    await worker.stop()
