"""Transparent l7 (`source: client`) vs the default (`source: auto`), side by side in network
namespaces: the cost of IP_TRANSPARENT + bind per upstream connection and of the policy
routing on the return path (docs/transparent.md; goal: within 10 %).

    .venv/bin/python bench/tproxy_bench.py [--rounds 3] [--seconds 5]

Needs root, nftables, iperf3, wrk and nginx. The hosts are the netns test harness's
`two_arm(gateway=True)` (client 198.18.1.10, LB 198.18.1.2 / 198.18.2.1, rs1 198.18.2.11 with
the LB as its gateway), deleted at the end. One `pacslb run` (one proxy worker) holds a pair of
services per workload, the same but for `source`, on VIP 198.18.1.100, all to rs1 (nginx with
one worker, iperf3 -s: bench/kernel_bench.py's backends). Workloads, each round running both
sources of every workload in turn (order swapped every round):

- `tcp-bulk`: iperf3, one stream through l7-tcp (splice), Gbit/s;
- `tcp-conn`: wrk -c16 `Connection: close` for a 1 KiB file through l7-tcp: a new client and
  upstream connection per request (the bind and the transparent socket each time), conn/s;
- `http-ka`: wrk -c16 keep-alive through l7-http (pooled upstreams, one per client address
  with `client`), req/s;
- `http-close`: the same with `Connection: close`, conn/s.

The table gives the medians, the ratio client/auto of the medians and each round's own ratio
(runs close in time: a slow spell of the shared machine cancels out better). Timing only:
nothing passes or fails (DESIGN §6).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.kernel_bench import (  # noqa: E402
    IPERF_PORT,
    WEB_PORT,
    in_namespace,
    log,
    start_backends,
    wait_port,
)
from tests.netns.conftest import Pacslb  # noqa: E402
from tests.netns.topology import Host, two_arm  # noqa: E402

VIP, RS1 = "198.18.1.100", "198.18.2.11"
FILE_1K = "1k.bin"
SOURCES = ("auto", "client")
# workload -> (mode, backend port, VIP port for auto; client's is +1)
WORKLOADS = {
    "tcp-bulk": ("l7-tcp", IPERF_PORT, 6000),
    "tcp-conn": ("l7-tcp", WEB_PORT, 6100),
    "http-ka": ("l7-http", WEB_PORT, 6200),
    "http-close": ("l7-http", WEB_PORT, 6200),  # the same services as http-ka
}


def config() -> dict[str, Any]:
    services = []
    seen = set()
    for name, (mode, backend, port) in WORKLOADS.items():
        for i, source in enumerate(SOURCES):
            if (mode, port + i) in seen:
                continue
            seen.add((mode, port + i))
            services.append(
                {
                    "label": f"{name}-{source}",
                    "vip": VIP,
                    "ports": [port + i],
                    "mode": mode,
                    "source": source,
                    "health_check": {"type": "none"},  # no probes beside iperf3's one test
                    "real_servers": [{"label": "rs1", "address": RS1, "port": backend}],
                }
            )
    return {"version": 1, "node": {"proxy": {"workers": 1}}, "virtual_services": services}


Sample = tuple[float, float]  # (rate, the proxy worker's CPU µs per unit: request or MB)


def iperf(client: Host, port: int, seconds: float) -> tuple[float, float] | None:
    """(Gbit/s, MB moved)."""
    argv = ["iperf3", "-c", VIP, "-p", str(port), "-t", f"{seconds:g}", "-P", "1", "-J"]
    done = in_namespace(client, argv, seconds)
    with contextlib.suppress(ValueError, KeyError):
        got = json.loads(done.stdout)["end"]["sum_received"]
        return float(got["bits_per_second"]) / 1e9, float(got["bytes"]) / 1e6
    log(f"iperf3 on {port}: {done.stderr.strip()[:200] or done.stdout[:200]}")
    return None


def wrk(client: Host, port: int, seconds: float, close: bool) -> tuple[float, float] | None:
    """(requests/s, requests)."""
    argv = ["wrk", "-c16", "-t1", f"-d{seconds:g}s"]
    if close:
        argv += ["-H", "Connection: close"]
    done = in_namespace(client, [*argv, f"http://{VIP}:{port}/{FILE_1K}"], seconds)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    count = re.search(r"(\d+) requests in", done.stdout)
    bad = re.search(r"(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]*)", done.stdout)
    if bad:
        log(f"wrk on {port}: {bad.group(1)}")
    return (float(rate.group(1)), float(count.group(1))) if rate and count else None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(state: Path) -> int:
    """The one proxy worker of the run whose state directory is `state`."""
    needle = f"{state}/proxy-0.sock".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (proc / "cmdline").read_bytes():
                    return int(proc.name)
    raise RuntimeError(f"no proxy worker for {state}")


def measure(client: Host, worker: int, workload: str, source: str, seconds: float) -> Sample | None:
    _, _, port = WORKLOADS[workload]
    port += SOURCES.index(source)
    before = cpu_seconds(worker)
    if workload == "tcp-bulk":
        done = iperf(client, port, seconds)
    else:
        done = wrk(client, port, seconds, close=workload != "http-ka")
    if done is None:
        return None
    rate, units = done
    return rate, (cpu_seconds(worker) - before) * 1e6 / max(units, 1.0)


@contextlib.contextmanager
def estate() -> Iterator[tuple[Host, Pacslb, int]]:
    work = Path(tempfile.mkdtemp(prefix="tproxy-bench-"))
    try:
        with two_arm(servers=1, gateway=True) as topo:
            start_backends(topo, work)
            for www in work.glob("*-rs1/www"):
                (www / FILE_1K).write_bytes(bytes(range(256)) * 4)
                (www / FILE_1K).chmod(0o644)
            lb, client = topo.hosts["lb"], topo.hosts["client"]
            lb.run("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
            state = work / "state"
            state.mkdir()
            run = Pacslb(lb, state, config())
            run.start()
            try:
                wait_port(client, VIP, WORKLOADS["tcp-conn"][2] + 1)
                yield client, run, worker_pid(state)
            finally:
                run.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


UNIT = {"tcp-bulk": ("Gbit/s", "MB"), "tcp-conn": ("conn/s", "conn")}
UNIT |= {"http-ka": ("req/s", "req"), "http-close": ("conn/s", "conn")}


def table(samples: dict[tuple[str, str], list[Sample | None]]) -> str:
    lines = [
        "| workload | auto | client | client/auto | per round | CPU µs/unit auto | client "
        "| CPU client/auto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload in WORKLOADS:
        auto, client = samples[(workload, "auto")], samples[(workload, "client")]
        good_a = [v for v in auto if v]
        good_c = [v for v in client if v]
        if not good_a or not good_c:
            lines.append(f"| {workload} | failed | failed | | | | | |")
            continue
        ma, mc = (statistics.median(v[0] for v in good) for good in (good_a, good_c))
        ca, cc = (statistics.median(v[1] for v in good) for good in (good_a, good_c))
        rounds = " ".join(
            f"{c[0] / a[0]:.2f}" for a, c in zip(auto, client, strict=True) if a and c
        )
        digits = 2 if workload == "tcp-bulk" else 0
        rate, unit = UNIT[workload]
        lines.append(
            f"| {workload} ({rate}) | {ma:.{digits}f} | {mc:.{digits}f} | {mc / ma:.2f}× "
            f"| {rounds} | {ca:.1f} /{unit} | {cc:.1f} /{unit} | {cc / ca:.2f}× |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    samples: dict[tuple[str, str], list[Sample | None]] = {
        (w, s): [] for w in WORKLOADS for s in SOURCES
    }
    with estate() as (client, run, worker):
        rules = run.lb.run("ip", "rule", "show", "pref", "21584").strip()
        log(f"transparent mode's rule: {rules or 'MISSING'}")
        for r in range(args.rounds):
            order = SOURCES if r % 2 == 0 else SOURCES[::-1]
            for workload in WORKLOADS:
                for source in order:
                    value = measure(client, worker, workload, source, args.seconds)
                    samples[(workload, source)].append(value)
                    log(f"round {r + 1} {workload} {source}: {value}")
    print(table(samples))
    print(f"\n{args.rounds} round(s) of {args.seconds:g} s, one proxy worker, netns two_arm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
