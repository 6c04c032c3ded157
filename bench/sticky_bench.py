"""Costs of the l7 persistence sharing (issue 16, item 5): client steering and entry sharing.

    PYTHONPATH=src .venv/bin/python bench/sticky_bench.py [--rounds 6] [--connections 3000]
        [--kernel-only]

1. kernel: connect + accept + close on loopback between two SO_REUSEPORT listeners of this
   process, with and without the cBPF selector (core/steering.py) on the group; CPU of this
   process (user+sys, getrusage) per connection. On loopback the SYN is processed in the
   connecting process's context, so the selector's cost is in this figure.
2. proxy: new l7-tcp connections (one request each, through two workers) to an HTTP server,
   with the selector on and off the workers' group (toggled from outside through a socket of
   this process that joins the group, sets or clears the program, and leaves it with
   shutdown()); CPU of the two workers (/proc) and of this client process, per connection.
3. sharing at 10,000 entries: the worker's side in-process (placing 10,000 clients, listing
   them with sticky_share.export, learning them into another worker's table), and the
   engine's import of 10,000 entries into two live workers (JSON over their control sockets).

Rounds alternate on/off; medians are printed. Loopback only: 127.10.4.0/24.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pacslb.config import Config
from pacslb.core.plan import Plan, build_plan
from pacslb.core.steering import program
from pacslb.engines.proxy import ProxyEngine
from pacslb.proxy import sticky_share
from pacslb.proxy.runtime import ServiceRuntime
from pacslb.proxy.steering import attach, detach

NET = "127.10.4"
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 6
CONNS = int(sys.argv[sys.argv.index("--connections") + 1]) if "--connections" in sys.argv else 3000
CLIENTS = [f"{NET}.{i}" for i in range(200, 208)]


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener(addr: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((addr, port))
    sock.listen(4096)
    return sock


def kernel_round(socks: list[socket.socket], port: int, steered: bool) -> float:
    if steered:
        attach(socks[0], program(4, 2, 32))
    else:
        detach(socks[0])
    began = cpu_self()
    for i in range(CONNS):
        with socket.socket() as client:
            client.bind((CLIENTS[i % len(CLIENTS)], 0))
            client.connect((f"{NET}.240", port))
            for sock in socks:  # whichever took it (non-blocking accept)
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.close()
                break
    return (cpu_self() - began) / CONNS * 1e6


def bench_kernel() -> None:
    port = 24100
    socks = [listener(f"{NET}.240", port) for _ in range(2)]
    for sock in socks:
        sock.setblocking(False)
    results: dict[bool, list[float]] = {False: [], True: []}
    for r in range(ROUNDS):
        for steered in (False, True) if r % 2 == 0 else (True, False):
            results[steered].append(kernel_round(socks, port, steered))
    for sock in socks:
        sock.close()
    for steered in (False, True):
        runs = results[steered]
        print(
            f"kernel connect+accept+close {'with cBPF' if steered else 'without  '}: "
            f"median {statistics.median(runs):.1f} us/conn, best {min(runs):.1f} "
            f"({len(runs)} rounds of {CONNS})"
        )


def plan(vip: str, port: int, backend: int, timeout: int = 900) -> Plan:
    return build_plan(
        Config.model_validate(
            {
                "virtual_services": [
                    {
                        "label": "Archive",
                        "vip": vip,
                        "ports": [port],
                        "mode": "l7-tcp",
                        "scheduler": "rr",
                        "persistence": {"type": "source-ip", "timeout": timeout},
                        "health_check": {"type": "none"},
                        "real_servers": [
                            {"label": f"Srv{i}", "address": f"{NET}.241", "port": backend}
                            for i in range(1, 4)
                        ],
                    }
                ]
            }
        ),
        revision=1,
    )


def one_request(vip: str, port: int, client: str) -> None:
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((client, 0))
        sock.connect((vip, port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass


def toggle(vip: str, port: int, steered: bool) -> None:
    """Set or clear the group's selector through a socket of ours that then leaves the group."""
    sock = listener(vip, port)
    try:
        if steered:
            attach(sock, program(4, 2, 32))
        else:
            detach(sock)
        sock.shutdown(socket.SHUT_RDWR)  # out of the group; the program stays with it
    finally:
        sock.close()


async def bench_proxy_and_sharing(tmp: Path) -> None:
    import subprocess

    backend = 24101
    http = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(backend), "--bind", f"{NET}.241"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp,
    )
    vip, port = f"{NET}.242", 24102
    engine = ProxyEngine(tmp / "a", workers=2, spare=False)
    (tmp / "a").mkdir()
    try:
        await asyncio.sleep(0.5)
        await engine.apply(plan(vip, port, backend))
        pids = [w.pid for w in engine.workers if w.pid is not None]
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        conns = max(200, CONNS // 5)
        for r in range(ROUNDS):
            for steered in (False, True) if r % 2 == 0 else (True, False):
                toggle(vip, port, steered)
                w0, c0 = sum(cpu_of(p) for p in pids), cpu_self()
                for i in range(conns):
                    await asyncio.to_thread(one_request, vip, port, CLIENTS[i % len(CLIENTS)])
                w1, c1 = sum(cpu_of(p) for p in pids), cpu_self()
                results[steered].append(((w1 - w0) / conns * 1e6, (c1 - c0) / conns * 1e6))
        for steered in (False, True):
            workers = statistics.median(x[0] for x in results[steered])
            client = statistics.median(x[1] for x in results[steered])
            how = "with cBPF" if steered else "without  "
            print(
                f"proxy l7-tcp {how}: workers {workers:.0f} us/conn, "
                f"client process {client:.0f} us/conn"
            )
        toggle(vip, port, True)

        # 3b. the engine's import of 10,000 entries into its two live workers
        entries = [
            {"service": "Archive", "key": f"10.{i >> 8}.{i & 255}.1", "server": "Srv2", "ttl": 600}
            for i in range(10_000)
        ]
        timings = []
        for _ in range(3):
            began = time.perf_counter()
            engine.import_sticky(entries)
            await engine.sticky.settled()
            timings.append(time.perf_counter() - began)
        print(
            f"engine import_sticky of 10,000 entries into 2 workers: "
            f"{statistics.median(timings) * 1e3:.0f} ms (median of 3)"
        )
        began = time.perf_counter()
        seeded = await engine.sticky.seed(engine.workers)
        print(
            f"engine seed of {len(engine.sticky)} mirrored entries into 2 workers: "
            f"{(time.perf_counter() - began) * 1e3:.0f} ms {seeded or ''}"
        )
    finally:
        await engine.close()
        http.terminate()
        http.wait(5)


def bench_sharing_in_process() -> None:
    svc = plan(f"{NET}.242", 24102, 24101).services[0]
    a, b = ServiceRuntime(svc), ServiceRuntime(svc)
    clients = [f"10.{i >> 8}.{i & 255}.1" for i in range(10_000)]
    began = time.perf_counter()
    for client in clients:
        rs = a.pick(client)
        assert rs is not None
        a.release(client, rs.label)
    place = time.perf_counter() - began
    began = time.perf_counter()
    entries, cursor = sticky_share.export({"Archive": a}, {})
    line = json.dumps({"ok": True, "result": {"entries": entries, "cursor": cursor}})
    listed = time.perf_counter() - began
    began = time.perf_counter()
    again, _ = sticky_share.export({"Archive": a}, cursor)
    nothing = time.perf_counter() - began
    began = time.perf_counter()
    parsed = sticky_share.parse_entries(json.loads(line)["result"]["entries"])
    taken, _ = sticky_share.learn({"Archive": b}, parsed)
    learnt = time.perf_counter() - began
    assert taken == 10_000 and not again
    print(
        f"worker, 10,000 entries: placing them {place * 1e3:.0f} ms; export+JSON "
        f"{listed * 1e3:.1f} ms ({len(line) / 1e6:.2f} MB); export with nothing new "
        f"{nothing * 1e6:.0f} us; parse+learn {learnt * 1e3:.1f} ms"
    )


def main() -> None:
    bench_kernel()
    if "--kernel-only" in sys.argv:
        return
    bench_sharing_in_process()
    with tempfile.TemporaryDirectory(prefix="h4-sticky-") as tmp:
        asyncio.run(bench_proxy_and_sharing(Path(tmp)))


if __name__ == "__main__":
    main()
