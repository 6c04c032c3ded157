"""A flood on one l7 VIP while a second one serves (issue 14 item 6), and the worker's memory
after each round.

A real `pacslb proxy` worker serves VIP A (flooded) and VIP B (a bounded loop of new
connections, one exchange each) through real backends, in 127.10.4.0/24. Each round opens
`--flood` connections to A that reconnect when reset (as retrying clients do), runs B's loop
meanwhile, closes the flood and waits for the worker to let go of it; then the worker's RSS.

    PYTHONPATH=src:. python bench/flood.py                       # this tree
    PYTHONPATH=/path/to/other/src:. python bench/flood.py        # another tree, same bench
    python bench/flood.py --nofile 256:256 --flood 1000 --mode-a l7-http

Prints, per round: B's failures, the worker's peak descriptors, the flood's resets, its RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from tests.faults.test_flood import (
    VIP_A,
    VIP_B,
    Worker,
    backends,
    flood,
    free_port,
    serve_loop,
    service,
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=5000, help="connections to VIP A")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300, help="VIP B exchanges per round")
    ap.add_argument("--mode-a", default="l7-tcp", choices=["l7-tcp", "l7-http"])
    ap.add_argument("--mode-b", default="l7-tcp", choices=["l7-tcp", "l7-http"])
    ap.add_argument("--nofile", default="", help="the worker's soft:hard limit (default: ours)")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = tuple(map(int, args.nofile.split(":"))) if args.nofile else (hard, hard)
    http_req = b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    with tempfile.TemporaryDirectory() as tmp, backends() as peer:
        worker = Worker(Path(tmp), (nofile[0], nofile[1]))
        try:
            a_port, b_port = free_port(VIP_A), free_port(VIP_B)
            back = {"l7-tcp": ("hold", "echo"), "l7-http": ("http", "http")}
            worker.apply(
                [
                    service("Flooded", VIP_A, a_port, args.mode_a, peer[back[args.mode_a][0]]),
                    service("Other", VIP_B, b_port, args.mode_b, peer[back[args.mode_b][1]]),
                ]
            )
            req, expect = (b"ping\n", b"ping\n") if args.mode_b == "l7-tcp" else (http_req, b"ok")
            base_fds = worker.descriptors()
            print(
                f"worker pid {worker.proc.pid}, nofile {nofile[0]}:{nofile[1]}, A {args.mode_a} "
                f"flood {args.flood}, B {args.mode_b}; RSS before {rss_kib(worker.proc.pid)} KiB"
            )
            for n in range(1, args.rounds + 1):
                peak = 0
                with flood(VIP_A, a_port, args.flood, reconnect=True) as f:
                    started = time.monotonic()
                    failures = serve_loop(
                        VIP_B, b_port, req, expect, args.requests, stop_after=args.requests
                    )
                    took = time.monotonic() - started
                    peak = max(peak, worker.descriptors())
                    resets = f.reconnects
                deadline = time.monotonic() + 60
                while worker.descriptors() > base_fds + 300 and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(6.0)  # past the worker's look at its connections (5 s)
                print(
                    f"round {n}: B failures {failures}/{args.requests} in {took:.1f} s; worker "
                    f"fds peak {peak} (limit {worker.soft_limit()}); flood resets {resets}; "
                    f"RSS after {rss_kib(worker.proc.pid)} KiB"
                )
            notices = worker.call({"cmd": "notices"}) if worker.proc.poll() is None else []
            for item in notices:
                print(f"notice: {item.get('service')}: {item.get('message')}")
        finally:
            worker.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
