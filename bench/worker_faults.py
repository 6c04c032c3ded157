"""What a crashed or hung proxy worker costs, under load (issue 14, items 2 and 3).

    .venv/bin/python bench/worker_faults.py [--workers 1,2] [--faults kill,stop]
                                            [--duration 10] [--at 3] [--connections 20]
                                            [--no-spare]

For each (workers, fault) pair: two nginx backends (one worker each, a 1 KiB file) on
127.10.2.11/12, a `pacslb run` with an l7-http service on 127.10.2.1 and `node.proxy.workers`
as given; wrk (-t1, keep-alive, --connections) for --duration seconds and, beside it, a prober
that opens a new connection for one GET every 20 ms (1 s timeout). At --at seconds the last
worker gets SIGKILL (`kill`: a crash, as the OOM killer would) or SIGSTOP (`stop`: a hang; the
watchdog must find and kill it).

Reported: wrk's requests and errors (socket errors and non-2xx), the prober's failures and its
seconds unavailable (from a failed probe to the next good one, summed), the seconds from the
fault to the worker's "crashed"/"hung" event and to its "replaced" event (pacslb's event log).
Timing only: nothing passes or fails. Only 127.10.2.0/24 is used; every process is stopped by
PID (the workers by the PID they report), on errors too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VIP, BACKENDS = "127.10.2.1", ("127.10.2.11", "127.10.2.12")
sys.path.insert(0, str(ROOT / "src"))

from pacslb.control.local import request  # noqa: E402


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def answers(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def worker_pid(state: Path, index: int) -> int | None:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(state / f"proxy-{index}.sock"))
            sock.sendall(b'{"cmd": "ping"}\n')
            return int(json.loads(sock.makefile().readline())["result"]["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this tree's pacslb
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def nginx_conf(work: Path, name: str, addr: str, port: int) -> Path:
    (work / "tmp" / name).mkdir(parents=True, exist_ok=True)
    conf = work / f"{name}.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp/{name};
  proxy_temp_path {work}/tmp/{name};
  fastcgi_temp_path {work}/tmp/{name};
  uwsgi_temp_path {work}/tmp/{name};
  scgi_temp_path {work}/tmp/{name};
  keepalive_requests 100000000;
  server {{
    listen {addr}:{port} backlog=4096;
    root {work}/www;
    location / {{ }}
  }}
}}
""")
    return conf


class Prober:
    """New connection, one GET, every 20 ms: when could a new client not be served?"""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _probe(self) -> bool:
        try:
            with socket.create_connection((VIP, self.port), timeout=1.0) as sock:
                sock.settimeout(1.0)
                sock.sendall(b"GET /1k HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            return data.startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.time()
            self.samples.append((began, self._probe()))
            self._stop.wait(max(0.0, 0.02 - (time.time() - began)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def unavailable(self) -> float:
        """Seconds from each failed probe to the next good one, summed."""
        out, down_since = 0.0, None
        for at, ok in self.samples:
            if not ok and down_since is None:
                down_since = at
            elif ok and down_since is not None:
                out, down_since = out + at - down_since, None
        if down_since is not None:
            out += self.samples[-1][0] - down_since
        return out


def wrk_errors(text: str) -> tuple[int, int]:
    requests = re.search(r"(\d+) requests in", text)
    errors = 0
    if m := re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(m.group(1))
    return (int(requests.group(1)) if requests else 0), errors


def event_delay(state: Path, reason: str, since: float) -> float | None:
    events = request(state, {"cmd": "events", "kind": "engine", "limit": 200})
    for event in events:
        at = datetime.fromisoformat(event["at"]).timestamp()
        if event["data"].get("reason") == reason and at >= since - 0.5:
            return round(at - since, 2)
    return None


def run_one(work: Path, workers: int, fault: str, args: argparse.Namespace) -> dict[str, Any]:
    ports = [free_port(b) for b in BACKENDS]
    vip_port = free_port(VIP)
    spare = "false" if args.no_spare else "true"
    state = work / f"state-{workers}-{fault}"
    config = work / f"pacslb-{workers}-{fault}.yaml"
    servers = "\n".join(
        f"      - {{label: Srv{i}, address: {a}, port: {p}}}"
        for i, (a, p) in enumerate(zip(BACKENDS, ports, strict=True), 1)
    )
    config.write_text(f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: {workers}, spare: {spare}}}}}
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [{vip_port}]
    mode: l7-http
    scheduler: rr
    health_check: {{type: http, path: /1k, interval: 1, timeout: 0.5}}
    real_servers:
{servers}
""")
    pids: list[int] = []
    with contextlib.ExitStack() as stack:
        for i, (addr, port) in enumerate(zip(BACKENDS, ports, strict=True)):
            conf = nginx_conf(work, f"b{i}", addr, port)
            stack.enter_context(process(["nginx", "-c", str(conf)], work / f"b{i}.log"))
            wait(lambda a=addr, p=port: answers(a, p), 10, "nginx")

        def reap() -> None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        stack.callback(reap)
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
        env_log = work / f"run-{workers}-{fault}.log"
        stack.enter_context(process(argv, env_log))
        try:
            wait(lambda: answers(VIP, vip_port), 20, "pacslb")
        except TimeoutError:
            print(env_log.read_text()[-3000:], file=sys.stderr)
            raise
        wait(lambda: worker_pid(state, workers - 1) is not None, 20, "the workers")
        pids += [p for i in range(workers) if (p := worker_pid(state, i)) is not None]
        victim = pids[-1]
        prober = Prober(vip_port)
        url = f"http://{VIP}:{vip_port}/1k"
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        prober.start()
        time.sleep(args.at)
        fault_at = time.time()
        os.kill(victim, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        out, _ = wrk.communicate(timeout=args.duration + 30)
        prober.stop()
        wait(lambda: worker_pid(state, workers - 1) not in (None, victim), 20, "a new worker")
        pids.append(worker_pid(state, workers - 1) or 0)
        wait(lambda: event_delay(state, "replaced", fault_at) is not None, 20, "'replaced'")
        requests, errors = wrk_errors(out)
        return {
            "workers": workers,
            "spare": spare,
            "fault": "SIGKILL" if fault == "kill" else "SIGSTOP",
            "wrk_requests": requests,
            "wrk_errors": errors,
            "probes": len(prober.samples),
            "probes_failed": sum(not ok for _, ok in prober.samples),
            "unavailable_s": round(prober.unavailable(), 2),
            "detected_s": event_delay(state, "crashed" if fault == "kill" else "hung", fault_at),
            "replaced_s": event_delay(state, "replaced", fault_at),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--faults", default="kill,stop")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--at", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--no-spare", action="store_true", help="node.proxy.spare: false")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pacslb-faults-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # nginx workers (www-data) read the files below
        (work / "www").mkdir()
        (work / "www" / "1k").write_bytes(b"x" * 1024)
        for workers in (int(w) for w in args.workers.split(",")):
            for fault in args.faults.split(","):
                rows.append(run_one(work, workers, fault, args))
                print(json.dumps(rows[-1]), flush=True)
    head = list(rows[0])
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in head) + " |")


if __name__ == "__main__":
    main()
