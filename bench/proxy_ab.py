"""Interleaved A/B of the l7-http hot path between source trees: wrk (-t2 -c50, keep-alive and
`Connection: close`) through one `pacslb run` per tree (`workers: 1`, each on its own VIP) to
one nginx; the figure is the worker's CPU (user+sys from /proc) per request, which is less
disturbed by a shared machine than req/s. Trees alternate order every round; medians at the end.

    git -C . archive BASE src | tar -x -C /tmp/base   # plus the built core/_headfast*.so
    .venv/bin/python bench/proxy_ab.py base=/tmp/base/src new=$PWD/src --rounds 10 --secs 5

Loopback only: 127.10.14.50:18080 (nginx), 127.10.14.10+i:18000 (tree i's VIP)."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
NET = "127.10.14"
args = [a for a in sys.argv[1:] if "=" in a]
rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
secs = sys.argv[sys.argv.index("--secs") + 1] if "--secs" in sys.argv else "5"
tmp = Path(tempfile.mkdtemp(prefix="h14ab-"))

# nginx backend
ng = tmp / "nginx"
ng.mkdir()
(ng / "nginx.conf").write_text(f"""
worker_processes 1; daemon off; pid {ng}/pid; error_log {ng}/err.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000;
  server {{ listen {NET}.50:18080;
    location / {{ return 200 "hello world, 32 bytes of body!!\\n"; }} }} }}
""")
nginx = subprocess.Popen(["nginx", "-p", str(ng), "-c", str(ng / "nginx.conf")])
procs = {}
for i, spec in enumerate(args):
    name, src = spec.split("=", 1)
    vip = f"{NET}.{10 + i}"
    state = tmp / f"state-{name}"
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: 1}}}}
virtual_services:
  - label: Web
    vip: {vip}
    ports: [18000]
    mode: l7-http
    scheduler: rr
    health_check: {{type: connect, interval: 5}}
    real_servers:
      - {{label: N1, address: {NET}.50, port: 18080}}
""")
    env = dict(os.environ, PYTHONPATH=src)
    with open(tmp / f"{name}.log", "w") as log:
        p = subprocess.Popen(
            [PY, "-m", "pacslb.cli", "run", str(cfg), "--state-dir", str(state)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs[name] = (p, vip, state, env)


def serving_workers(state):
    """PIDs of the tree's proxy workers from their command lines (any version of pacslb; a warm
    spare, which serves nothing until it takes over, left out)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except (OSError, UnicodeDecodeError):
            continue
        if "proxy" in argv and "--socket" in argv:
            sock = argv[argv.index("--socket") + 1]
            if sock.startswith(f"{state}/") and not sock.endswith("proxy-spare.sock"):
                found.append(int(entry))
    return sorted(found)


def worker_pid(name):
    _, _, state, env = procs[name]
    for _ in range(100):
        try:
            out = subprocess.run(
                [PY, "-m", "pacslb.cli", "status", "--json", "--state-dir", str(state)],
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            st = json.loads(out)
            ws = serving_workers(state)
            if ws and all(rs["health"] == "up" for s in st["services"] for rs in s["real_servers"]):
                return ws[0]
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name}: no worker")


def cpu(pid):
    with open(f"/proc/{pid}/stat") as stat:
        f = stat.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def wrk(vip, close):
    cmd = ["wrk", "-t2", "-c50", "-d" + secs, f"http://{vip}:18000/"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "requests in" in line:
            n = int(line.split()[0])
        if "Non-2xx" in line or "Socket errors" in line:
            print("   ", line.strip())
    return n


try:
    pids = {name: worker_pid(name) for name in procs}
    results = {(n, c): [] for n in procs for c in (False, True)}
    for r in range(rounds):
        for close in (False, True):
            order = list(procs) if r % 2 == 0 else list(reversed(procs))
            for name in order:
                pid = pids[name]
                c0, t0 = cpu(pid), time.time()
                n = wrk(procs[name][1], close)
                c1, t1 = cpu(pid), time.time()
                us = (c1 - c0) / n * 1e6
                results[(name, close)].append((us, n / (t1 - t0)))
                kind = "close" if close else "keep "
                rate = n / (t1 - t0)
                print(
                    f"round {r} {kind} {name:8} {us:6.1f} us/req CPU {rate:8.0f} req/s", flush=True
                )
    print("median CPU us/request (req/s):")
    for (name, close), vals in results.items():
        us = sorted(v[0] for v in vals)[len(vals) // 2]
        rps = sorted(v[1] for v in vals)[len(vals) // 2]
        kind = "close" if close else "keep "
        each = [round(v[0], 1) for v in vals]
        print(f"  {kind} {name:8} {us:6.1f} us  {rps:8.0f} req/s  all: {each}")
finally:
    for p, *_ in procs.values():
        p.terminate()
    for p, *_ in procs.values():
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    nginx.terminate()
    nginx.wait(5)
