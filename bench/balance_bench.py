"""Sequential new clients on equal servers: where do they land? And what a scheduler pick costs.

    .venv/bin/python bench/balance_bench.py [--clients 100] [--vip 127.0.0.51]
                                            [--backends 127.0.0.52,127.0.0.53] [--skip-split]
                                            [--skip-pick] [--rounds 15] [--workers 1]

Split (issue 14 item 9, goal 50/50 +- 10): two real HTTP servers (tests/peers/http_peer.py,
each answers /who with its name) behind one `pacslb run` with five l7 services on --vip, all
with the default scheduler unless named: `http` (l7-http, wlc), `tcp` (l7-tcp, wlc), `cookie`
(l7-http, wlc, http-cookie persistence), `lc` (l7-http, lc) and `weighted` (l7-http, wlc,
weights 3:1, goal 75/25). `--clients` clients go to each service one after another, each on a
new connection with one request and no cookie, closed before the next starts; the table gives
who answered, and `pacslb status --json`'s totals per server as a cross-check. With --workers
above 1 each worker takes turns on its own, so the total is even within a client or so a
worker.

Pick cost: the wlc and lc schedulers' `choose()` on 2 and 8 idle servers (every decision a tie,
the dearest case for the tie rotation) and the proxy's whole `ServiceRuntime.pick()` (wlc, 2
servers, no persistence), per call: the minimum over --rounds rounds of 100,000 calls, CPU time
(time.process_time, so that a busy machine's waits are not counted).

Only --vip and --backends (loopback) are bound; every process started is stopped by PID.
Timing only: nothing here passes or fails (DESIGN §6).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.peers.procs import free_port, http_peer, running, wait_until  # noqa: E402

from pacslb.core.plan import build_plan  # noqa: E402
from pacslb.core.schedule import make_scheduler  # noqa: E402
from pacslb.core.validate import load_data  # noqa: E402
from pacslb.proxy.runtime import ServiceRuntime  # noqa: E402

SERVICES: dict[str, tuple[str, str]] = {  # label -> (mode, extra YAML)
    "http": ("l7-http", ""),
    "tcp": ("l7-tcp", ""),
    "cookie": ("l7-http", "\n    persistence: {type: http-cookie}"),
    "lc": ("l7-http", "\n    scheduler: lc"),
    "weighted": ("l7-http", ""),
}


def one_client(vip: str, port: int) -> str:
    with socket.create_connection((vip, port), timeout=5) as sock:
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode() if head.startswith(b"HTTP/1.1 200") else f"error {head[:40]!r}"


def split(args: argparse.Namespace) -> list[str]:
    backends = args.backends.split(",")
    ports = [free_port(host) for host in backends]
    vip_ports = {label: free_port(args.vip) for label in SERVICES}
    check = "{type: http, path: /check, expect: OK, interval: 0.5, timeout: 0.4, rise: 1}"
    node = f"node: {{webui: {{enabled: false}}, proxy: {{workers: {args.workers}}}}}"
    lines = ["version: 1", node, "virtual_services:"]
    for label, (mode, extra) in SERVICES.items():
        weights = (3, 1) if label == "weighted" else (1, 1)
        lines += [
            f"  - label: {label}",
            f"    vip: {args.vip}",
            f"    ports: [{vip_ports[label]}]",
            f"    mode: {mode}",
            f"    health_check: {check}{extra}",
            "    real_servers:",
        ]
        lines += [
            f"      - {{label: srv{i}, address: {host}, port: {port}, weight: {weight}}}"
            for i, (host, port, weight) in enumerate(zip(backends, ports, weights, strict=True), 1)
        ]
    out = [
        "| service | clients | srv1 | srv2 | errors | status totals srv1/srv2 |",
        "|---" * 6 + "|",
    ]
    with tempfile.TemporaryDirectory(prefix="balance-bench-") as tmp, ExitStack() as stack:
        config, state = Path(tmp) / "pacslb.yaml", Path(tmp) / "state"
        config.write_text("\n".join(lines) + "\n")
        for i, (host, port) in enumerate(zip(backends, ports, strict=True), 1):
            stack.enter_context(http_peer(host, port, "/check=200:OK", f"/who=200:srv{i}"))
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
        stack.enter_context(running(argv, args.vip, vip_ports["http"], log=Path(tmp) / "run.log"))

        def status() -> dict[str, Any]:
            done = subprocess.run(
                [sys.executable, "-m", "pacslb.cli", "status", "--json", "--state-dir", str(state)],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            return dict(json.loads(done.stdout))

        def all_up() -> bool:
            return all(
                rs["health"] == "up" for s in status()["services"] for rs in s["real_servers"]
            )

        wait_until(all_up, 20, "every real server up", step=0.2)
        for label in SERVICES:
            served = Counter(one_client(args.vip, vip_ports[label]) for _ in range(args.clients))
            time.sleep(1.5)  # the worker's counters reach `status` about once a second
            svc = next(s for s in status()["services"] if s["label"] == label)
            totals = {rs["label"]: rs["connections"]["total"] for rs in svc["real_servers"]}
            errors = sum(n for k, n in served.items() if k.startswith("error"))
            out.append(
                f"| {label} | {args.clients} | {served['srv1']} | {served['srv2']} | {errors} "
                f"| {totals.get('srv1', 0)}/{totals.get('srv2', 0)} |"
            )
    return out


def pick_cost(args: argparse.Namespace) -> list[str]:
    def runtime(n: int) -> ServiceRuntime:
        svc = {
            "label": "bench",
            "vip": "127.0.0.1",
            "ports": [80],
            "mode": "l7-http",
            "real_servers": [
                {"label": f"s{i}", "address": f"127.0.0.{10 + i}", "port": 80} for i in range(n)
            ],
        }
        return ServiceRuntime(build_plan(load_data({"virtual_services": [svc]})).services[0])

    def cost(call: Any) -> float:
        n = 100_000
        timer = timeit.Timer(call, timer=time.process_time)
        return min(timer.timeit(n) for _ in range(args.rounds)) / n * 1e6

    out = ["| what | us a call |", "|---|---|"]
    for name in ("wlc", "lc"):
        for n in (2, 8):
            choose, live = make_scheduler(name).choose, runtime(n).candidates()
            us = cost(lambda choose=choose, live=live: choose(live))
            out.append(f"| {name} choose(), {n} idle servers | {us:.3f} |")
    rt = runtime(2)
    out.append(
        f"| ServiceRuntime.pick(), wlc, 2 servers | {cost(lambda: rt.pick('10.0.0.1')):.3f} |"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--vip", default="127.0.0.51")
    parser.add_argument("--backends", default="127.0.0.52,127.0.0.53")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=1, help="proxy worker processes")
    parser.add_argument("--skip-split", action="store_true")
    parser.add_argument("--skip-pick", action="store_true")
    args = parser.parse_args()
    if not args.skip_split:
        print("\n".join(split(args)) + "\n")
    if not args.skip_pick:
        print("\n".join(pick_cost(args)) + "\n")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
