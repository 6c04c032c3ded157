"""Config changes under faults (issue 14, items 4 and 5): figures anyone can rerun.

    .venv/bin/python bench/config_faults.py reloads [--reloads 20] [--duration 20] [--close]
    .venv/bin/python bench/config_faults.py disk-full          # root: mounts a 1 MiB tmpfs

`reloads`: `pacslb run` (l7-http VIP, `workers: 1`) in front of two nginx (1 KiB file); wrk
(-t2 -c50, keep-alive, or `Connection: close` with --close) runs for --duration seconds while
the config file alternately drops and restores the second real server, each followed by
`reload` over the control socket, --reloads times evenly spread. Prints wrk's requests and
every error class (goal: 0 errors), and the removal events.

`disk-full`: the state directory is a 1 MiB tmpfs filled to the last byte; an API change (add a
real server) must be refused with its reason, leaving the config file, the revisions and the
running config unchanged. Prints the answer, its time and each check.

Loopback only: 127.10.3.20-31. Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from pacslb.control.auth import AuthStore
from pacslb.control.local import request

BACKENDS = {"Srv1": "127.10.3.21", "Srv2": "127.10.3.22"}
VIP = "127.10.3.30"
WEB = "127.10.3.31"
PASSWORD = "bench config faults"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited ({proc.returncode}) before listening")
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port}")


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def nginx(stack: contextlib.ExitStack, work: Path, name: str, addr: str, port: int) -> None:
    www = work / "www"
    www.mkdir(exist_ok=True)
    (www / "1k").write_bytes(b"x" * 1024)
    (work / "tmp" / name).mkdir(parents=True, exist_ok=True)
    conf = work / f"{name}.conf"
    temp = work / "tmp" / name
    conf.write_text(f"""worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  server {{ listen {addr}:{port}; root {www}; location / {{ }} }}
}}
""")
    argv = ["nginx", "-p", str(work), "-e", str(work / f"{name}.error.log"), "-c", str(conf)]
    proc = stack.enter_context(started(argv, work / f"{name}.log"))
    wait_port(addr, port, proc)


def config_text(web_port: int, vip_port: int, backend_port: int, servers: list[str]) -> str:
    lines = "".join(
        f"      - {{label: {s}, address: {BACKENDS[s]}, port: {backend_port}}}\n" for s in servers
    )
    return f"""version: 1
node:
  webui: {{listen: "{WEB}:{web_port}"}}
  proxy: {{workers: 1}}
virtual_services:
  - label: Web
    vip: {VIP}
    ports: [{vip_port}]
    mode: l7-http
    health_check: {{type: none}}
    real_servers:
{lines}"""


@contextlib.contextmanager
def pacslb(
    work: Path, config: Path, state: Path, web_port: int
) -> Iterator[subprocess.Popen[bytes]]:
    if not (state / "webui-users.json").exists():
        AuthStore(state).set_password("admin", PASSWORD, "admin")  # type: ignore[arg-type]
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with started(argv, work / "pacslb.log") as proc:
        wait_port(WEB, web_port, proc)
        deadline = time.monotonic() + 30
        while not request(state, {"cmd": "status"}).get("ready"):
            if time.monotonic() > deadline:
                raise SystemExit("pacslb never became ready")
            time.sleep(0.1)
        yield proc


def api_client(state: Path, web_port: int) -> tuple[httpx.Client, dict[str, str]]:
    trust = ssl.create_default_context(cafile=str(state / "webui-cert.pem"))
    # A connection per request: after a 500 the server closes its side (the code before the
    # fix answered so), and a reused connection would fail the next request.
    client = httpx.Client(
        base_url=f"https://{WEB}:{web_port}",
        verify=trust,
        timeout=60,
        headers={"Connection": "close"},
    )
    r = client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
    r.raise_for_status()
    return client, {"X-CSRF-Token": r.json()["csrf_token"]}


def wrk_errors(out: str) -> dict[str, int]:
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non-2xx/3xx": 0}
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        for name, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            errors[name] = int(value)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors["non-2xx/3xx"] = int(m[1])
    return errors


def reloads(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    backend_port = free_port(BACKENDS["Srv1"])
    web_port, vip_port = free_port(WEB), free_port(VIP)
    config, state = work / "pacslb.yaml", work / "state"
    both = config_text(web_port, vip_port, backend_port, ["Srv1", "Srv2"])
    one = config_text(web_port, vip_port, backend_port, ["Srv1"])
    config.write_text(both)
    with contextlib.ExitStack() as stack:
        for name, addr in BACKENDS.items():
            nginx(stack, work, name, addr, backend_port)
        stack.enter_context(pacslb(work, config, state, web_port))
        argv = ["wrk", "-t2", "-c50", f"-d{args.duration}s", "--timeout", "10s"]
        if args.close:
            argv += ["-H", "Connection: close"]
        wrk = subprocess.Popen(
            [*argv, f"http://{VIP}:{vip_port}/1k"], stdout=subprocess.PIPE, text=True
        )
        started_at = time.monotonic()
        step = args.duration / (args.reloads + 1)
        answers = []
        for i in range(args.reloads):
            time.sleep(max(0.0, started_at + step * (i + 1) - time.monotonic()))
            config.write_text(one if i % 2 == 0 else both)
            t0 = time.monotonic()
            answers.append((request(state, {"cmd": "reload"}), time.monotonic() - t0))
        out, _ = wrk.communicate(timeout=args.duration + 60)
        events = request(state, {"cmd": "events", "kind": "admin", "limit": 2000})
    requests = int(m[1]) if (m := re.search(r"(\d+) requests in", out)) else 0
    errors = wrk_errors(out)
    return {
        "scenario": "reloads",
        "mode": "Connection: close" if args.close else "keep-alive",
        "duration_s": args.duration,
        "reloads": len(answers),
        "reload_s_max": round(max(t for _, t in answers), 3),
        "requests": requests,
        "errors": errors,
        "errors_total": sum(errors.values()),
        "removal_events": sorted({re.sub(r"\d+", "N", e["message"]) for e in events}),
    }


def disk_full(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("disk-full mounts a tmpfs: run as root")
    web_port, vip_port = free_port(WEB), free_port(VIP)
    config, state = work / "pacslb.yaml", work / "state"
    original = config_text(web_port, vip_port, 18081, ["Srv1"])
    config.write_text(original)
    state.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(state)], check=True
    )
    try:
        with pacslb(work, config, state, web_port):
            client, headers = api_client(state, web_port)
            try:
                revisions = client.get("/api/v1/config/revisions").json()
                filler = state / "filler"
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    for _ in range(4096):
                        try:
                            os.write(fd, b"\0" * 4096)
                        except OSError as exc:
                            assert exc.errno == errno.ENOSPC
                            break
                finally:
                    os.close(fd)
                server = {"label": "Srv2", "address": BACKENDS["Srv2"], "port": 18082}
                t0 = time.monotonic()
                r = client.post(
                    "/api/v1/virtual_services/Web/real_servers", json=server, headers=headers
                )
                answered = time.monotonic() - t0
                os.unlink(filler)
                after = client.get("/api/v1/config/revisions").json()
                running = client.get("/api/v1/virtual_services/Web/real_servers").json()
                events = client.get("/api/v1/events", params={"kind": "config"}).json()
            finally:
                client.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    return {
        "scenario": "disk-full",
        "status": r.status_code,
        "answer": r.json() if r.headers.get("content-type") == "application/json" else r.text,
        "answer_s": round(answered, 3),
        "config_file_unchanged": config.read_text() == original,
        "revisions_unchanged": after == revisions,
        "running_config_unchanged": [rs["label"] for rs in running] == ["Srv1"],
        "event": events[-1]["message"] if events else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("reloads", help="add/remove reloads under wrk")
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--duration", type=int, default=20, help="wrk seconds")
    p.add_argument("--close", action="store_true", help="a new connection per request")
    sub.add_parser("disk-full", help="an API change on a full state disk (root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacslb-config-faults-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # nginx workers (www-data) read the files
        result = (reloads if args.scenario == "reloads" else disk_full)(args, work)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
