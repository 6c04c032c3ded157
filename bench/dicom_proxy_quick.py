"""Quick side-by-side C-STORE: l7-dicom vs l7-tcp vs direct, the proxies in this process.

    PYTHONPATH=src:. .venv/bin/python bench/dicom_proxy_quick.py [--count 200] [--rounds 5]

storescu (dcmtk, TCP_NODELAY=1) sends `count` 512×512 CT images to storescp, directly and
through an l7-tcp and an l7-dicom listener (the same uvloop loop on a thread, splice), and
through l7-dicom with its hot loop in Python when _pdufast is built, in interleaved rounds;
prints the median images/s of each, the ratios, and the proxy's CPU per image (the CPU time
of the loop's thread). Addresses: 127.10.4.0/24.
A scratch measurement for issue 19 (l7-dicom ≥ 0.97× l7-tcp); bench/ has the full benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dicom_files import write_ct_series
from tests.integration.test_tcp_proxy import ProxyLoop
from tests.peers.procs import running

from pacslb.core.plan import build_plan
from pacslb.core.validate import load_data
from pacslb.proxy import dicom_pumps
from pacslb.proxy.dicom import DicomListener
from pacslb.proxy.runtime import ServiceRuntime
from pacslb.proxy.tcp import TcpListener

ENV = {"TCP_NODELAY": "1"}
PEER = "127.10.4.1"


def listener(loop: ProxyLoop, mode: str, vip: str, port: int) -> tuple[object, int]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((vip, 0))
    sock.listen(128)
    sock.setblocking(False)
    vport = sock.getsockname()[1]
    data = {
        "version": 1,
        "virtual_services": [
            {
                "label": mode,
                "vip": vip,
                "ports": [vport],
                "mode": mode,
                "health_check": {"type": "none"},
                "real_servers": [{"label": "S", "address": PEER, "port": port}],
            }
        ],
    }
    runtime = ServiceRuntime(build_plan(load_data(data)).services[0])
    kind = DicomListener if mode == "l7-dicom" else TcpListener

    def start() -> object:
        lst = kind(sock, runtime, vport)
        lst.start()
        return lst

    return loop.call(start), vport


def store(loop: ProxyLoop, host: str, port: int, files: list[Path]) -> tuple[float, float]:
    """Wall seconds of one storescu run, and the CPU seconds the proxy's loop thread used."""
    argv = ["/usr/bin/storescu", "-aet", "CT_1", "-aec", "PACS1", host, str(port)]
    cpu0, t0 = loop.call(time.thread_time), time.perf_counter()
    subprocess.run([*argv, *map(str, files)], env={**os.environ, **ENV}, check=True)
    wall = time.perf_counter() - t0
    return wall, loop.call(time.thread_time) - cpu0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_ct_series(Path(tmp) / "ct", args.count, 512)
        rx = Path(tmp) / "rx"
        rx.mkdir()
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        # -B: storescp discards the data (no disk in the measurement), as bench/ does.
        argv = ["/usr/bin/storescp", "--ignore", "-aet", "PACS1", str(port)]
        with running(argv, PEER, port, env=ENV):
            loop = ProxyLoop()
            try:
                _, tcp_port = listener(loop, "l7-tcp", "127.10.4.20", port)
                _, dicom_port = listener(loop, "l7-dicom", "127.10.4.21", port)
                targets = {
                    "direct": (PEER, port),
                    "l7-tcp": ("127.10.4.20", tcp_port),
                    "l7-dicom": ("127.10.4.21", dicom_port),
                }
                if dicom_pumps.COMPILED:  # the same listener with its hot loop in Python
                    targets["l7-dicom-py"] = ("127.10.4.21", dicom_port)
                compiled = dicom_pumps._relay
                walls: dict[str, list[float]] = {k: [] for k in targets}
                cpus: dict[str, list[float]] = {k: [] for k in targets}
                store(loop, *targets["direct"], files[:10])  # warm-up
                for _ in range(args.rounds):
                    for name, (host, p) in targets.items():
                        dicom_pumps._relay = None if name == "l7-dicom-py" else compiled
                        wall, cpu = store(loop, host, p, files)
                        walls[name].append(wall)
                        cpus[name].append(cpu)
            finally:
                with contextlib.suppress(Exception):
                    loop.close()
    rate = {k: args.count / statistics.median(v) for k, v in walls.items()}
    best = {k: args.count / min(v) for k, v in walls.items()}
    for name in targets:
        cpu = statistics.median(cpus[name]) / args.count * 1e6
        print(
            f"{name:9s} {rate[name]:7.0f} img/s median, {best[name]:7.0f} best"
            f"  proxy CPU {cpu:6.0f} us/image"
        )
    pairs = [("l7-dicom", "l7-tcp"), ("l7-tcp", "direct"), ("l7-dicom", "direct")]
    if "l7-dicom-py" in targets:
        pairs.append(("l7-dicom-py", "l7-tcp"))
    for a, b in pairs:
        print(f"{a} / {b}: {rate[a] / rate[b]:.3f} median, {best[a] / best[b]:.3f} best")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
