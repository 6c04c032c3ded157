"""Health checks at scale: CPU, probe jitter and spread of the HealthChecker (DESIGN §7).

    .venv/bin/python bench/checks_1000.py [--servers 1000] [--interval 2] [--seconds 30]
                                          [--hanging 50] [--refused 5] [--uvloop]
                                          [--timeout 1] [--concurrency 256]

The real servers run in a separate process (this script with the hidden --serve flag), one
listening socket on 127.0.0.1 per real server, so every probe is a real TCP handshake:

- `--servers` healthy servers, connect checks: the server accepts and closes at once;
- `--hanging` servers, http checks: the server accepts and reads but never answers, so each
  probe holds a connection (and a slot of the checker's semaphore) until its timeout;
- `--refused` servers, connect checks: a port bound but not listening, so connect is refused.

The checker runs in this process for a warm-up of one interval plus one timeout (every server
probed once, its first result in) and then `--seconds` of measurement. CPU is this process's
user+sys time (getrusage) over the measurement window, as a percentage of one core.
Lateness is the checker's own figure (probe start minus its slot, semaphore wait included),
read per probe by wrapping `pacslb.control.checker.run_check` (an observer only: it adds a few
microseconds per probe); "spread" is a histogram of probe starts modulo the interval.
Timing only: nothing here passes or fails (DESIGN §6).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pacslb import config as c
from pacslb.control import checker as checker_mod
from pacslb.control.checker import HealthChecker
from pacslb.control.probes import ProbeResult, ProbeTarget
from pacslb.core.health import Transition
from pacslb.core.plan import ServerKey
from pacslb.core.state import Health
from pacslb.core.validate import load_data

KINDS = ("healthy", "refused", "hanging")
SERVICE_SIZE = 100  # real servers per virtual service (a config of many services, as in life)
BUCKETS = 10


# --- the real servers (child process) ------------------------------------------------------


class _AcceptClose(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Hang(asyncio.Protocol):
    """Accept, read and discard, never answer; close when the client gives up."""

    def data_received(self, data: bytes) -> None:
        pass


def _listener(backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if backlog:
        sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def _serve(healthy: int, hanging: int, refused: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def done() -> None:
        if not stop.done():
            stop.set_result(None)

    def stdin_ready() -> None:  # the parent holds our stdin: EOF means it is gone
        if not os.read(sys.stdin.fileno(), 4096):
            done()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done)

    loop.add_reader(sys.stdin.fileno(), stdin_ready)
    servers: list[asyncio.Server] = []
    ports: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for kind, count, factory in (
        ("healthy", healthy, _AcceptClose),
        ("hanging", hanging, _Hang),
    ):
        for _ in range(count):
            sock = _listener(512)
            servers.append(await loop.create_server(factory, sock=sock))
            ports[kind].append(sock.getsockname()[1])
    closed = [_listener(0) for _ in range(refused)]  # bound, not listening: connect is refused
    ports["refused"] = [s.getsockname()[1] for s in closed]
    print(json.dumps(ports), flush=True)
    await stop
    for server in servers:
        server.close()
    for sock in closed:
        sock.close()


def serve_main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.servers + args.hanging + args.refused + 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    asyncio.run(_serve(args.servers, args.hanging, args.refused))


class ServerProcess:
    """The child process with the real servers; stopped by PID (terminate, wait, kill)."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            f"--servers={args.servers}",
            f"--hanging={args.hanging}",
            f"--refused={args.refused}",
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid

    def ports(self, timeout: float = 30.0) -> dict[str, list[int]]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"server process {self.pid} gave no ports in {timeout:g} s")
        data: dict[str, list[int]] = json.loads(line)
        return data

    def cpu_seconds(self) -> float:
        """user+sys of the child so far (from /proc; 0 where /proc is not there)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


# --- the checker (this process) ------------------------------------------------------------


def build_config(
    ports: dict[str, list[int]], interval: float, timeout: float
) -> tuple[c.Config, dict[ServerKey, str]]:
    """Services of SERVICE_SIZE real servers each; returns the config and each server's kind."""
    timing = {"interval": interval, "timeout": timeout, "rise": 2, "fall": 3}
    checks: dict[str, dict[str, Any]] = {
        "healthy": {"type": "connect", **timing},
        "refused": {"type": "connect", **timing},
        "hanging": {"type": "http", "path": "/health", **timing},
    }
    services: list[dict[str, Any]] = []
    kinds: dict[ServerKey, str] = {}
    vip_port = 10000
    for kind in KINDS:
        for first in range(0, len(ports[kind]), SERVICE_SIZE):
            label = f"{kind}-{first // SERVICE_SIZE:03d}"
            reals: list[dict[str, Any]] = [
                {"label": f"{kind}-{i:04d}", "address": "127.0.0.1", "port": port}
                for i, port in enumerate(ports[kind][first : first + SERVICE_SIZE], first)
            ]
            services.append(
                {
                    "label": label,
                    "vip": "127.0.0.30",
                    "ports": [vip_port],
                    "mode": "l7-tcp",
                    "health_check": checks[kind],
                    "real_servers": reals,
                }
            )
            kinds.update({(label, str(rs["label"])): kind for rs in reals})
            vip_port += 1
    return load_data({"virtual_services": services}), kinds


@dataclass
class Recorder:
    """What the run_check wrapper sees, per kind, while `on` is set."""

    on: bool = False
    starts: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    lateness: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    latency: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    transitions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


RunCheck = Callable[
    [c.HealthCheck, c.VirtualService, c.RealServer, ProbeTarget],
    Coroutine[Any, Any, ProbeResult],
]


def instrument(checker: HealthChecker, rec: Recorder, kinds: dict[ServerKey, str]) -> RunCheck:
    """Wrap the checker module's run_check. The checker appends the probe's lateness just
    before it calls run_check, with no await in between, so lateness[-1] is this probe's."""
    real: RunCheck = getattr(checker_mod, "run_check")  # noqa: B009 (not in its __all__)
    loop = asyncio.get_running_loop()

    async def run_check(
        check: c.HealthCheck, vs: c.VirtualService, rs: c.RealServer, target: ProbeTarget
    ) -> ProbeResult:
        if not rec.on:
            return await real(check, vs, rs, target)
        kind = kinds[(vs.label, rs.label)]
        rec.starts[kind].append(loop.time())
        rec.lateness[kind].append(checker.lateness[-1])
        result = await real(check, vs, rs, target)
        rec.latency[kind].append(result.latency)
        return result

    setattr(checker_mod, "run_check", run_check)  # noqa: B010
    return real


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


@dataclass
class Result:
    loop_name: str
    configure_cpu: float = 0.0
    cpu: float = 0.0
    cpu_user: float = 0.0
    floor: tuple[int, float, float] = (0, 0.0, 0.0)  # raw connects, their user and sys seconds
    wall: float = 0.0
    server_cpu: float = 0.0
    completed: int = 0
    rec: Recorder = field(default_factory=Recorder)
    base: float = 0.0
    health: dict[str, dict[str, int]] = field(default_factory=dict)
    server_pid: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after


def total_checks(checker: HealthChecker) -> int:
    states = (checker.target(key) for key in checker.health())
    return sum(state.checks for state in states if state is not None)


def cpu_now() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def user_now() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def raw_connect_floor(ports: list[int]) -> tuple[int, float, float]:
    """CPU of plain blocking connect+close to each port once, no event loop: the floor that a
    connect probe to a loopback server costs (on loopback much of the peer's side of the
    handshake is also accounted to the connecting process, as sys time)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    after = resource.getrusage(resource.RUSAGE_SELF)
    return len(ports), after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


async def run(
    args: argparse.Namespace, ports: dict[str, list[int]], server: ServerProcess
) -> Result:
    loop = asyncio.get_running_loop()
    result = Result(type(loop).__module__ + "." + type(loop).__name__, server_pid=server.pid)
    config, kinds = build_config(ports, args.interval, args.timeout)
    rec = result.rec

    def on_transition(key: ServerKey, transition: Transition, probe: ProbeResult) -> None:
        if rec.on and transition.previous is not Health.UNKNOWN:  # a flap, not a first result
            rec.transitions[kinds[key]] += 1

    checker = HealthChecker(on_transition, concurrency=args.concurrency)
    real = instrument(checker, rec, kinds)
    try:
        result.floor = raw_connect_floor(ports["healthy"])
        before = cpu_now()
        result.base = loop.time()
        checker.configure(config)
        result.configure_cpu = cpu_now() - before
        # Warm-up: every server probed once and its first result (which decides) in.
        await asyncio.sleep(args.interval + args.timeout)

        checks_before = total_checks(checker)
        server_before = server.cpu_seconds()
        rec.on = True
        load0 = os.getloadavg()[0]
        cpu0, user0, wall0 = cpu_now(), user_now(), time.perf_counter()
        await asyncio.sleep(args.seconds)
        result.cpu, result.wall = cpu_now() - cpu0, time.perf_counter() - wall0
        result.cpu_user = user_now() - user0
        result.load = (load0, os.getloadavg()[0])
        rec.on = False
        result.server_cpu = server.cpu_seconds() - server_before
        checks_after = total_checks(checker)
        result.completed = checks_after - checks_before

        health = checker.health()
        for kind in KINDS:
            states = [health[k] for k, v in kinds.items() if v == kind]
            result.health[kind] = {h.value: states.count(h) for h in Health}
    finally:
        await checker.close()
        setattr(checker_mod, "run_check", real)  # noqa: B010
    return result


def report(args: argparse.Namespace, r: Result) -> None:
    interval, rec = args.interval, r.rec
    total = args.servers + args.hanging + args.refused
    started = sum(len(v) for v in rec.starts.values())
    print(f"command   : {shlex.join(sys.orig_argv)}")
    print(
        f"host      : {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, loop {r.loop_name}, load average {r.load[0]:.2f} -> "
        f"{r.load[1]:.2f} (other work on the host skews jitter)"
    )
    print(
        f"targets   : {args.servers} healthy (connect), {args.hanging} hanging (http, never "
        f"answers), {args.refused} refused (connect); one listening socket per real server on "
        f"127.0.0.1 in server process {r.server_pid}"
    )
    print(
        f"schedule  : interval {interval:g} s, timeout {args.timeout:g} s, concurrency "
        f"{args.concurrency}, warm-up {interval + args.timeout:g} s, measured {r.wall:.2f} s"
    )
    print()
    cpu_pct = 100 * r.cpu / r.wall
    per_probe = r.cpu / r.completed * 1e6 if r.completed else float("nan")
    user_pct = 100 * r.cpu_user / r.wall
    n, fu, fs = r.floor
    floor = (
        f"{(fu + fs) / n * 1e6:.1f} us (user {fu / n * 1e6:.1f}, sys {fs / n * 1e6:.1f})"
        if n
        else "-"
    )
    rows = [
        (
            "checker CPU",
            f"{cpu_pct:.2f} % of one core ({r.cpu:.3f} s in {r.wall:.2f} s; user "
            f"{user_pct:.2f} %, sys {cpu_pct - user_pct:.2f} %)",
        ),
        ("CPU per probe", f"{per_probe:.1f} us"),
        ("raw connect+close", f"{floor} each, {n} blocking connects without a loop"),
        ("configure() CPU", f"{r.configure_cpu * 1000:.1f} ms for {total} servers"),
        ("server process CPU", f"{100 * r.server_cpu / r.wall:.2f} % of one core (not counted)"),
        (
            "probes/s",
            f"{started / r.wall:.1f} started, {r.completed / r.wall:.1f} done "
            f"(expected {total / interval:.1f})",
        ),
    ]
    for name, value in rows:
        print(f"{name:20}: {value}")
    print()
    print(
        f"{'kind':8} {'probes':>7} {'late p50':>9} {'p99':>8} {'max':>8} "
        f"{'probe p50':>10} {'p99':>8}   health at end    flaps"
    )
    for kind in KINDS:
        late, lat = rec.lateness[kind], rec.latency[kind]
        health = ", ".join(f"{n} {s}" for s, n in r.health[kind].items() if n)
        print(
            f"{kind:8} {len(late):7d} {ms(pct(late, 50)):>9} {ms(pct(late, 99))} "
            f"{ms(max(late, default=float('nan')))} {ms(pct(lat, 50)):>10} {ms(pct(lat, 99))}   "
            f"{health:16} {rec.transitions[kind]:5d}"
        )
    print("(ms; late = probe start minus its slot, semaphore wait included; probe = its latency)")
    if "uvloop" in r.loop_name:
        print("(uvloop's loop.time() counts whole milliseconds: lateness is quantized to 1 ms)")

    every = [t for v in rec.starts.values() for t in v]
    hist = [0] * BUCKETS
    for t in every:
        hist[min(BUCKETS - 1, int((t - r.base) % interval / interval * BUCKETS))] += 1
    mean = len(every) / BUCKETS
    print()
    print(
        f"spread of probe starts over the interval, {BUCKETS} buckets of {interval / BUCKETS:g} s:"
    )
    print("  " + " ".join(f"{n:6d}" for n in hist))
    if mean:
        print(f"  min/mean {min(hist) / mean:.2f}, max/mean {max(hist) / mean:.2f}")
    window = 0.01
    bins: dict[int, int] = {}
    for t in every:
        bins[int(t // window)] = bins.get(int(t // window), 0) + 1
    print(
        f"  peak starts in one {window * 1000:g} ms window: {max(bins.values(), default=0)} "
        f"(mean {len(every) * window / r.wall:.1f})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", type=int, default=1000, help="healthy real servers (connect)")
    p.add_argument("--interval", type=float, default=2.0, help="check interval, seconds")
    p.add_argument("--timeout", type=float, default=1.0, help="check timeout, seconds")
    p.add_argument("--seconds", type=float, default=30.0, help="measured time after warm-up")
    p.add_argument("--hanging", type=int, default=50, help="servers that never answer (http)")
    p.add_argument("--refused", type=int, default=5, help="closed ports (connect refused)")
    p.add_argument("--concurrency", type=int, default=256, help="the checker's semaphore")
    p.add_argument("--uvloop", action="store_true", help="run the checker on uvloop")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seconds > 600 or args.seconds <= 0:
        p.error("--seconds must be in (0, 600]")
    if args.timeout > args.interval:
        p.error("--timeout must not exceed --interval")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_main(args)
        return 0
    server = ServerProcess(args)
    try:
        ports = server.ports()
        coro = asyncio.wait_for(run(args, ports, server), args.interval + args.seconds + 60)
        if args.uvloop:
            import uvloop

            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
    report(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
