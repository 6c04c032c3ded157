"""A real server that passes its health check but resets every request, under wrk (issue 14).

    .venv/bin/python bench/proxy_faults.py [--duration 10] [--connections 20] [--close]
                                           [--tree DIR] [--passive '{consecutive_failures: 5}']

`pacslb run` (l7-http and l7-tcp, scheduler rr, connect health check) in front of two real
servers on loopback: nginx serving a 1 KiB file ("Good"), and a server that accepts, reads the
request head and closes with RST ("Bad": it passes a connect check, as an application server
whose worker pool is broken does). wrk runs against each VIP; the script prints the requests
that failed (non-2xx and socket errors, as wrk counts them), what `pacslb status --json` counted
for Bad, and the events and worker notices about it. `--tree` runs another source tree (e.g. a
checkout of the commit before passive health) for a before/after figure. Timing only: nothing
here passes or fails. Only 127.10.5.0/24 is bound or contacted; every process started is
stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VIP, GOOD, BAD = "127.10.5.101", "127.10.5.102", "127.10.5.103"
HTTP_PORT, TCP_PORT, GOOD_PORT = 18301, 18302, 18303


def resetter() -> tuple[socket.socket, list[int]]:
    """The Bad server: reads a request head, then closes with RST. Counts what it received."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((BAD, 0))
    sock.listen(1024)
    received = [0]

    def client(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                received[0] += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=client, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return sock, received


def nginx(work: Path) -> subprocess.Popen[bytes]:
    www = work / "www"
    www.mkdir()
    (www / "1k").write_bytes(b"x" * 1024)
    temp = " ".join(
        f"{name}_temp_path {work}/tmp;"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = work / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {temp}
  keepalive_requests 100000000;
  server {{ listen {GOOD}:{GOOD_PORT}; root {www}; location / {{ }} }}
}}
"""
    )
    os.chmod(work, 0o755)
    (work / "tmp").mkdir()
    return subprocess.Popen(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)


def cli(tree: Path, state: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    ).stdout


def wrk(url: str, duration: int, connections: int, close: bool) -> dict[str, int]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=duration + 30).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    return {
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket_errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the source tree to run")
    parser.add_argument("--passive", help="the services' passive: setting (YAML flow)")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("needs wrk and nginx")
    work = Path(tempfile.mkdtemp(prefix="pacslb-faults-"))
    bad_sock, received = resetter()
    servers = (
        f"      - {{label: Good, address: {GOOD}, port: {GOOD_PORT}}}\n"
        f"      - {{label: Bad, address: {BAD}, port: {bad_sock.getsockname()[1]}}}\n"
    )
    passive = f"    passive: {args.passive}\n" if args.passive else ""
    check = "{type: connect, interval: 1, timeout: 0.5, rise: 1, fall: 1}"
    services = "".join(
        f"  - label: {label}\n    vip: {VIP}\n    ports: [{port}]\n    mode: {mode}\n"
        f"    scheduler: rr\n    health_check: {check}\n{passive}    real_servers:\n{servers}"
        for label, port, mode in (("Web", HTTP_PORT, "l7-http"), ("Tcp", TCP_PORT, "l7-tcp"))
    )
    config, state = work / "pacslb.yaml", work / "state"
    config.write_text(
        f"version: 1\nnode: {{webui: {{enabled: false}}}}\nvirtual_services:\n{services}"
    )
    web = nginx(work)
    env = {**os.environ, "PYTHONPATH": str(args.tree / "src")}
    run = subprocess.Popen(
        [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "run.log", "wb"),  # noqa: SIM115 - the process holds it
    )
    result: dict[str, Any] = {"tree": str(args.tree), "close": args.close}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = cli(args.tree, state, "status", "--json")
            if status and all(
                rs["health"] == "up"
                for svc in json.loads(status)["services"]
                for rs in svc["real_servers"]
            ):
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"servers not up; see {work}/run.log")
        for label, port in (("Web", HTTP_PORT), ("Tcp", TCP_PORT)):
            before = received[0]
            figures = wrk(f"http://{VIP}:{port}/1k", args.duration, args.connections, args.close)
            figures["reached_bad"] = received[0] - before
            time.sleep(1.5)  # the control process reads the counters each second
            svc = next(
                s
                for s in json.loads(cli(args.tree, state, "status", "--json"))["services"]
                if s["label"] == label
            )
            bad = next(rs for rs in svc["real_servers"] if rs["label"] == "Bad")
            figures["bad_counters"] = bad["connections"]
            result[label] = figures
        with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(state / "proxy-0.sock"))
            sock.sendall(b'{"cmd": "notices"}\n')
            result["worker_notices"] = json.loads(sock.makefile().readline()).get("result")
        result["events"] = [
            line
            for line in cli(args.tree, state, "events", "--limit", "200").splitlines()
            if "Bad" in line and "health" not in line.split()[1:2]
        ]
    finally:
        for proc in (run, web):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        bad_sock.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
