"""pacslb's proxy vs HAProxy, nginx and a direct connection, interleaved in one run (DESIGN §7).

    .venv/bin/python bench/proxy_bench.py [--rounds 3] [--duration 8] [--iperf-seconds 5]
                                          [--images 200] [--cstore-series 5] [--quick]
                                          [--targets a,b] [--workloads a,b] [--profile]
                                          [--json FILE]

Every target stands in front of the same backends on loopback:

- two nginx backends (one worker each, static 1 KiB and 100 KiB files) on 127.0.0.11/12;
- one iperf3 server on 127.0.0.11 (an iperf3 server runs one test at a time and all of a test's
  connections must reach it, so the bulk-TCP services have that single real server);
- two dcmtk storescp (TCP_NODELAY=1, one process each, files into /dev/shm, removed after every
  transfer); storescp binds all interfaces, hence one port each.

Targets: `direct` (one backend, no proxy); HAProxy 2.6 with `nbthread 1` as `haproxy-http`
(`mode http`, `http-reuse always`) and `haproxy-tcp` (`mode tcp`, `option splice-request` and
`splice-response`); nginx with one worker as `nginx-http` (upstream keep-alive) and
`nginx-stream` (only when the stream module is found: see --nginx-stream-module); pacslb
(`pacslb run`, `node.proxy.workers: 1`) as `pacslb-http` (l7-http) and `pacslb-tcp` (l7-tcp), and
a second pacslb with `workers: 2` as `pacslb2-http` and `pacslb2-tcp`. The HTTP proxies do the
same work per request: like pacslb's l7-http, HAProxy and nginx replace X-Forwarded-For and
X-Forwarded-Proto (what a hospital's web applications behind them log and trust). HTTP workloads
run on every target (TCP-mode targets relay HTTP as bytes); bulk TCP and C-STORE on TCP-mode
targets.

Workloads: iperf3 -P1 and -P4 (Gbit/s, receiver side); wrk -t1 -c50 1 KiB keep-alive and
100 KiB keep-alive (req/s, p99 latency from --latency); wrk with `Connection: close` (a new
connection per request, conn/s); storescu sending the CT series --cstore-series times (default
5: 1,000 images, about a second) in one association (img/s and wall time, the median of
--cstore-repeat transfers; storescu's own start-up, reading 200 files, is inside the wall time
for every target; one pass alone, 0.25 s, was dominated by it and by the shared machine).

Each round runs every workload once on every target (target order rotated per round); the
table gives the median of the rounds, the median p99, the ratio of the medians to HAProxy of
the same mode (`mode http` for L7 HTTP targets, `mode tcp` for the rest) and to `direct`, the
median of the round-by-round ratios to HAProxy ("paired"), the proxy's CPU (its processes'
user+sys time over the run from /proc, % of one core, with the sys part) and that CPU per
request, connection, GB or image. The machine is shared: only ratios from one run mean
anything. Timing only: nothing here passes or fails (DESIGN §6). --profile then runs each
workload once more on pacslb under `py-spy record --native` and summarises where it spends.

Only 127.0.0.0/8 is bound or contacted. Every process started is stopped by PID (its
descendants too, and the pacslb proxy workers by the PID they report), on errors and Ctrl-C
as well; the temporary directories are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_files import write_ct_series

ROOT = Path(__file__).resolve().parents[1]
STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
DCMDUMP = "/usr/bin/dcmdump"
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk 3.6.7 leaves Nagle on otherwise (research/dicom.md)
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
CLK_TCK = os.sysconf("SC_CLK_TCK")

BACKEND_1, BACKEND_2 = "127.0.0.11", "127.0.0.12"
# target name -> the address it listens on (direct: the first backend)
ADDRESSES = {
    "direct": BACKEND_1,
    "haproxy-http": "127.0.0.21",
    "haproxy-tcp": "127.0.0.22",
    "nginx-http": "127.0.0.23",
    "nginx-stream": "127.0.0.24",
    "pacslb-http": "127.0.0.25",
    "pacslb-tcp": "127.0.0.26",
    "pacslb2-http": "127.0.0.27",
    "pacslb2-tcp": "127.0.0.28",
}
HTTP_MODE_TARGETS = {"haproxy-http", "nginx-http", "pacslb-http", "pacslb2-http"}
SIZES = {"1k": 1024, "100k": 100 * 1024}


@dataclass(frozen=True)
class Ports:
    """Ports below the ephemeral range (32768-60999), so no client socket can hold them."""

    base: int

    @property
    def http(self) -> int:
        return self.base + 80

    @property
    def iperf(self) -> int:
        return self.base + 201

    @property
    def dicom(self) -> int:  # the proxies' DICOM port
        return self.base + 104

    @property
    def dicom_backends(self) -> tuple[int, int]:  # storescp binds every interface: one port each
        return self.base + 111, self.base + 112


# --- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields from the state on (index 0 = field 3), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, started: int) -> bool:
    """PID still runs and is the same process (same start time), not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == started


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """User and system CPU of the processes, in clock ticks."""
    user = system = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))):
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: int


class Procs:
    """Every process this benchmark starts, stopped by PID (and its descendants) in reverse."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.adopted: list[tuple[int, int, str]] = []  # (pid, start time, name): not our children

    def start(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> Proc:
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches this script, which stops them in order
            )
        proc = Proc(name, popen, log, start_time(popen.pid) or 0)
        self.procs.append(proc)
        return proc

    def adopt(self, pid: int, name: str) -> None:
        started = start_time(pid)
        if started is not None:
            self.adopted.append((pid, started, name))

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        children = [(pid, start_time(pid)) for pid in descendants(proc.popen.pid)]
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"  {proc.name} (pid {proc.popen.pid}) ignored SIGTERM: killed", file=sys.stderr
                )
                proc.popen.kill()
                proc.popen.wait(10)
        for pid, started in children:
            if started is not None:
                kill_by_pid(pid, started, f"{proc.name}'s child")
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc, timeout=30.0 if proc.name.startswith("pacslb") else 10.0)
            except Exception as exc:  # keep stopping the others
                print(f"  stopping {proc.name}: {exc}", file=sys.stderr)
        for pid, started, name in self.adopted:
            kill_by_pid(pid, started, name)
        self.adopted.clear()


def kill_by_pid(pid: int, started: int, name: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, the process PID if it is still the one that started at `started`."""
    if not alive(pid, started):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid, started):
        time.sleep(0.05)
    if alive(pid, started):
        print(f"  {name} (pid {pid}) still running: killed", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def listening() -> set[tuple[str, int]]:
    """(address, port) of every listening IPv4 TCP socket in this network namespace."""
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] != "0A":
                continue
            addr, port = parts[1].split(":")
            out.add((socket.inet_ntoa(struct.pack("<I", int(addr, 16))), int(port, 16)))
    return out


def wait_listening(proc: Proc, addresses: list[tuple[str, int]], timeout: float = 20.0) -> None:
    """Until every address listens (read from /proc/net/tcp: no probe connection to confuse
    iperf3 or storescp); raises with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [a for a in addresses if a not in listening()]
        if not missing:
            return
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{tail(proc.log)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not listening on {missing} after {timeout:g} s")
        time.sleep(0.05)


def check_free(addresses: list[tuple[str, int]]) -> None:
    taken = []
    for addr, port in addresses:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((addr, port))
            except OSError:
                taken.append(f"{addr}:{port}")
    if taken:
        raise SystemExit(f"ports in use: {', '.join(taken)} (choose another --port-base)")


# --- configurations ----------------------------------------------------------------------------

NGINX_TEMP = """
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;"""


def nginx_backend_conf(work: Path, name: str, addr: str, port: int, www: Path) -> str:
    return f"""worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/logs/{name}.error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;{NGINX_TEMP.format(d=work / "tmp" / name)}
  server {{
    listen {addr}:{port} backlog=4096;
    root {www};
    location / {{ }}
  }}
}}
"""


def nginx_lb_conf(work: Path, ports: Ports, stream_module: Path | None) -> str:
    d1, d2 = ports.dicom_backends
    stream = ""
    if stream_module:
        a = ADDRESSES["nginx-stream"]
        stream = f"""
stream {{
  upstream web {{ server {BACKEND_1}:{ports.http}; server {BACKEND_2}:{ports.http}; }}
  upstream iperf {{ server {BACKEND_1}:{ports.iperf}; }}
  upstream dicom {{ server {BACKEND_1}:{d1}; server {BACKEND_2}:{d2}; }}
  server {{ listen {a}:{ports.http} backlog=4096; proxy_pass web; }}
  server {{ listen {a}:{ports.iperf}; proxy_pass iperf; }}
  server {{ listen {a}:{ports.dicom}; proxy_pass dicom; }}
}}
"""
    load = f"load_module {stream_module};\n" if stream_module else ""
    return f"""{load}worker_processes 1;
daemon off;
pid {work}/nginx-lb.pid;
error_log {work}/logs/nginx-lb.error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;{NGINX_TEMP.format(d=work / "tmp" / "nginx-lb")}
  upstream web {{
    server {BACKEND_1}:{ports.http};
    server {BACKEND_2}:{ports.http};
    keepalive 128;
    keepalive_requests 100000000;
  }}
  server {{
    listen {ADDRESSES["nginx-http"]}:{ports.http} backlog=4096;
    location / {{
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffers 32 8k;  # a 100 KiB response stays in memory
    }}
  }}
}}
{stream}"""


def haproxy_conf(ports: Ports, maxconn: int) -> str:
    d1, d2 = ports.dicom_backends
    web = f"  server b1 {BACKEND_1}:{ports.http}\n  server b2 {BACKEND_2}:{ports.http}\n"
    tcp = "  mode tcp\n  balance roundrobin\n  option splice-request\n  option splice-response\n"
    h, t = ADDRESSES["haproxy-http"], ADDRESSES["haproxy-tcp"]
    return f"""global
  nbthread 1
  maxconn {maxconn}

defaults
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-request 10s
  timeout http-keep-alive 60s

listen web_http
  mode http
  bind {h}:{ports.http}
  balance roundrobin
  http-reuse always
  http-request set-header X-Forwarded-For %[src]
  http-request set-header X-Forwarded-Proto http
{web}
listen web_tcp
  bind {t}:{ports.http}
{tcp}{web}
listen iperf
  bind {t}:{ports.iperf}
{tcp}  server b1 {BACKEND_1}:{ports.iperf}

listen dicom
  bind {t}:{ports.dicom}
{tcp}  server p1 {BACKEND_1}:{d1}
  server p2 {BACKEND_2}:{d2}
"""


def pacslb_conf(state: Path, ports: Ports, workers: int, http_vip: str, tcp_vip: str) -> str:
    d1, d2 = ports.dicom_backends
    none = {"type": "none"}  # no probes: a connect probe would disturb iperf3 and storescp

    def rs(label: str, addr: str, port: int) -> dict[str, Any]:
        return {"label": label, "address": addr, "port": port}

    web = [rs("B1", BACKEND_1, ports.http), rs("B2", BACKEND_2, ports.http)]
    services = [
        ("Http", http_vip, ports.http, "l7-http", web),
        ("HttpAsTcp", tcp_vip, ports.http, "l7-tcp", web),
        ("Iperf", tcp_vip, ports.iperf, "l7-tcp", [rs("B1", BACKEND_1, ports.iperf)]),
        (
            "Dicom",
            tcp_vip,
            ports.dicom,
            "l7-tcp",
            [rs("P1", BACKEND_1, d1), rs("P2", BACKEND_2, d2)],
        ),
    ]
    config = {
        "version": 1,
        "node": {
            "state_dir": str(state),
            "proxy": {"workers": workers},
            "webui": {"listen": f"{http_vip}:{ports.base + 443}"},  # loopback, if ever started
        },
        "virtual_services": [
            {
                "label": label,
                "vip": vip,
                "ports": [port],
                "mode": mode,
                "scheduler": "rr",
                "health_check": none,
                "real_servers": servers,
            }
            for label, vip, port, mode, servers in services
        ],
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


# --- the bench environment ---------------------------------------------------------------------


@dataclass
class Target:
    name: str
    pids: Callable[[], list[int]] = field(default=list)

    @property
    def mode(self) -> str:
        if self.name == "direct":
            return "direct"
        return "http" if self.name in HTTP_MODE_TARGETS else "tcp"

    @property
    def reference(self) -> str | None:
        return {"http": "haproxy-http", "tcp": "haproxy-tcp"}.get(self.mode)


def ping(sock_path: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(str(sock_path))
        sock.sendall(b'{"cmd":"ping"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs) -> None:
        self.args = args
        self.procs = procs
        self.ports = Ports(args.port_base)
        self.work = Path(tempfile.mkdtemp(prefix="pacslb-bench-"))
        try:
            self.shm = Path(tempfile.mkdtemp(prefix="pacslb-bench-", dir="/dev/shm"))
        except OSError:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        self.images = self.shm / "images"
        self.rx = (self.shm / "rx1", self.shm / "rx2")
        self.targets: dict[str, Target] = {}
        self.skipped: dict[str, str] = {}  # target -> why it is not measured
        self.notes: list[str] = []
        self.version = source_version()  # what the pacslb processes load when they start

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def wanted(self, name: str) -> bool:
        return not self.args.targets or name in self.args.targets

    # -- setup --

    def setup(self) -> None:
        p = self.ports
        (self.work / "logs").mkdir()
        os.chmod(self.work, 0o755)  # nginx workers (www-data) read the files below
        www = self.work / "www"
        www.mkdir()
        for name, size in SIZES.items():
            (www / name).write_bytes(bytes(i % 251 for i in range(size)))
        for sub in ("b1", "b2", "nginx-lb"):
            (self.work / "tmp" / sub).mkdir(parents=True)
        self.images.mkdir()
        for rx in self.rx:
            rx.mkdir()
        d1, d2 = p.dicom_backends
        needed = [(BACKEND_1, p.http), (BACKEND_2, p.http), (BACKEND_1, p.iperf)]
        needed += [("0.0.0.0", d1), ("0.0.0.0", d2)]
        for name, addr in ADDRESSES.items():
            if name != "direct":
                needed += [(addr, p.http), (addr, p.iperf), (addr, p.dicom)]
        check_free(needed)

        t0 = time.monotonic()
        write_ct_series(self.images, self.args.images)
        first = sorted(self.images.iterdir())[0]
        dump = subprocess.run([DCMDUMP, str(first)], capture_output=True, text=True, timeout=30)
        if (
            dump.returncode
            or "CTImageStorage" not in dump.stdout
            or "(7fe0,0010) OW" not in dump.stdout
        ):
            raise RuntimeError(f"dcmdump does not read the generated CT image:\n{dump.stderr}")
        size = sum(f.stat().st_size for f in self.images.iterdir())
        print(
            f"images: {self.args.images} CT 512×512×16 bit, {size / 1e6:.0f} MB in /dev/shm "
            f"({time.monotonic() - t0:.1f} s; dcmdump reads them)",
            file=sys.stderr,
        )

        self._backends(www)
        self.targets["direct"] = Target("direct")
        self._haproxy()
        self._nginx()
        self._pacslb("pacslb", 1)
        self._pacslb("pacslb2", 2)
        self._verify_http()

    def _backends(self, www: Path) -> None:
        p = self.ports
        for name, addr in (("b1", BACKEND_1), ("b2", BACKEND_2)):
            conf = self.work / f"{name}.conf"
            conf.write_text(nginx_backend_conf(self.work, name, addr, p.http, www))
            argv = [
                "nginx",
                "-p",
                str(self.work),
                "-e",
                str(self.log(f"{name}.error")),
                "-c",
                str(conf),
            ]
            proc = self.procs.start(f"nginx-{name}", argv, self.log(f"nginx-{name}"))
            wait_listening(proc, [(addr, p.http)])
        iperf = self.procs.start(
            "iperf3-server",
            ["iperf3", "-s", "-B", BACKEND_1, "-p", str(p.iperf)],
            self.log("iperf3"),
        )
        wait_listening(iperf, [(BACKEND_1, p.iperf)])
        for i, (port, rx) in enumerate(zip(p.dicom_backends, self.rx, strict=True), start=1):
            argv = [STORESCP, "-aet", "PACS", "-od", str(rx), str(port)]
            proc = self.procs.start(f"storescp-{i}", argv, self.log(f"storescp-{i}"), DCMTK_ENV)
            wait_listening(proc, [("0.0.0.0", port)])

    def _haproxy(self) -> None:
        if not (self.wanted("haproxy-http") or self.wanted("haproxy-tcp")):
            return
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        maxconn = max(1000, min(10000, (hard - 500) // 3))  # 2 fds a connection + splice pipes
        conf = self.work / "haproxy.cfg"
        conf.write_text(haproxy_conf(self.ports, maxconn))
        try:
            proc = self.procs.start(
                "haproxy", ["haproxy", "-db", "-f", str(conf)], self.log("haproxy")
            )
            p = self.ports
            h, t = ADDRESSES["haproxy-http"], ADDRESSES["haproxy-tcp"]
            wait_listening(proc, [(h, p.http), (t, p.http), (t, p.iperf), (t, p.dicom)])
        except RuntimeError as exc:
            self.skipped["haproxy-http"] = self.skipped["haproxy-tcp"] = str(exc)
            return
        pid = proc.popen.pid
        for name in ("haproxy-http", "haproxy-tcp"):
            self.targets[name] = Target(name, lambda: [pid])

    def _nginx(self) -> None:
        if not (self.wanted("nginx-http") or self.wanted("nginx-stream")):
            return
        module: Path | None = self.args.nginx_stream_module
        if module is None and STREAM_MODULE.exists():
            module = STREAM_MODULE
        if module is not None and not module.exists():
            self.skipped["nginx-stream"] = f"{module} not found"
            module = None
        elif module is None:
            self.skipped["nginx-stream"] = "no stream module (see --nginx-stream-module)"
        conf = self.work / "nginx-lb.conf"
        conf.write_text(nginx_lb_conf(self.work, self.ports, module))
        argv = [
            "nginx",
            "-p",
            str(self.work),
            "-e",
            str(self.log("nginx-lb.error")),
            "-c",
            str(conf),
        ]
        p = self.ports
        addrs = [(ADDRESSES["nginx-http"], p.http)]
        if module:
            a = ADDRESSES["nginx-stream"]
            addrs += [(a, p.http), (a, p.iperf), (a, p.dicom)]
        try:
            proc = self.procs.start("nginx-lb", argv, self.log("nginx-lb"))
            wait_listening(proc, addrs)
        except RuntimeError as exc:
            self.skipped["nginx-http"] = str(exc)
            self.skipped.setdefault("nginx-stream", str(exc))
            return
        pid = proc.popen.pid

        def pids() -> list[int]:
            return [pid, *descendants(pid)]

        self.targets["nginx-http"] = Target("nginx-http", pids)
        if module:
            self.targets["nginx-stream"] = Target("nginx-stream", pids)

    def _pacslb(self, name: str, workers: int) -> None:
        http_name, tcp_name = f"{name}-http", f"{name}-tcp"
        if not (self.wanted(http_name) or self.wanted(tcp_name)):
            return
        p = self.ports
        state = self.work / name
        state.mkdir()
        conf = self.work / f"{name}.yaml"
        http_vip, tcp_vip = ADDRESSES[http_name], ADDRESSES[tcp_name]
        conf.write_text(pacslb_conf(state, p, workers, http_vip, tcp_vip))
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(conf), "--state-dir", str(state)]
        addrs = [(http_vip, p.http), (tcp_vip, p.http), (tcp_vip, p.iperf), (tcp_vip, p.dicom)]
        worker_pids: list[int] = []
        try:
            proc = self.procs.start(name, argv, self.log(name))
            try:
                wait_listening(proc, addrs, timeout=40.0)
            finally:  # whatever happened, know the workers it started, to stop them
                for i in range(workers):
                    with contextlib.suppress(OSError, ValueError):
                        pid = int(ping(state / f"proxy-{i}.sock")["result"]["pid"])
                        self.procs.adopt(pid, f"{name} proxy-{i}")
                        worker_pids.append(pid)
            if len(worker_pids) != workers:
                raise RuntimeError(f"{len(worker_pids)} of {workers} proxy workers answer a ping")
        except RuntimeError as exc:
            files = [self.log(name), *sorted(state.glob("*.log"))]
            logs = "\n".join(f"  {f.name}:\n{tail(f)}" for f in files)
            why = f"{exc}\n{logs}"
            self.skipped[http_name] = self.skipped[tcp_name] = why
            print(f"{name} did not start: {why}", file=sys.stderr)
            return
        self.notes.append(f"{name}: control pid {proc.popen.pid}, proxy workers {worker_pids}")
        for target in (http_name, tcp_name):
            self.targets[target] = Target(target, lambda: list(worker_pids))

    def _verify_http(self) -> None:
        """One GET of each file through every target: a target that cannot serve it is skipped."""
        for name in list(self.targets):
            for path, size in SIZES.items():
                try:
                    conn = http.client.HTTPConnection(ADDRESSES[name], self.ports.http, timeout=5)
                    conn.request("GET", f"/{path}")
                    resp = conn.getresponse()
                    body = resp.read()
                    conn.close()
                    if resp.status != 200 or len(body) != size:
                        raise RuntimeError(f"HTTP {resp.status}, {len(body)} bytes")
                except (OSError, RuntimeError, http.client.HTTPException) as exc:
                    self.skipped[name] = f"GET /{path} failed: {exc}"
                    del self.targets[name]
                    break

    def address(self, target: str, service: str) -> tuple[str, int]:
        p = self.ports
        port = {"http": p.http, "iperf": p.iperf, "dicom": p.dicom}[service]
        if target == "direct" and service == "dicom":
            port = p.dicom_backends[0]
        return ADDRESSES[target], port


# --- workloads ---------------------------------------------------------------------------------


@dataclass
class Sample:
    value: float | None  # higher is better; None = failed
    p99_ms: float | None = None
    cpu: float | None = None  # the proxy's CPU, % of one core
    cpu_sys: float | None = None  # of which in the kernel
    wall: float | None = None
    error: str = ""


def _latency_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m[2]]


def parse_wrk(out: str) -> Sample:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not rate:
        return Sample(None, error=out.strip()[-300:])
    errors = []
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append("socket errors: " + m[1])
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"{m[1]} non-2xx")
    return Sample(float(rate[1]), _latency_ms(p99[1]) if p99 else None, error="; ".join(errors))


@dataclass
class Workload:
    key: str
    title: str
    unit: str
    service: str  # http | iperf | dicom
    run: Callable[[Bench, Target], Sample]
    command: str  # for the report


def run_wrk(path: str, close: bool) -> Callable[[Bench, Target], Sample]:
    def run(bench: Bench, target: Target) -> Sample:
        addr, port = bench.address(target.name, "http")
        d = bench.args.duration
        argv = ["wrk", "-t1", "-c50", f"-d{d:g}s", "--latency", "--timeout", "5s"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{addr}:{port}/{path}")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=d + 30)
        return parse_wrk(out.stdout + out.stderr)

    return run


def run_iperf(streams: int) -> Callable[[Bench, Target], Sample]:
    def run(bench: Bench, target: Target) -> Sample:
        addr, port = bench.address(target.name, "iperf")
        t = bench.args.iperf_seconds
        argv = ["iperf3", "-c", addr, "-p", str(port), "-t", f"{t:g}", "-P", str(streams)]
        argv += ["-J", "--connect-timeout", "5000"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=t + 30)
        try:
            data = json.loads(out.stdout)
        except ValueError:
            return Sample(None, error=(out.stdout + out.stderr).strip()[-300:])
        if "error" in data:
            return Sample(None, error=str(data["error"]))
        return Sample(data["end"]["sum_received"]["bits_per_second"] / 1e9)

    return run


def run_cstore(bench: Bench, target: Target) -> Sample:
    """`--cstore-repeat` transfers of the series back to back (each a new storescu and one
    association, which sends the series `--cstore-series` times: storescu --repeat); the sample
    is their median wall time. One pass of 200 images takes a fraction of a second, so
    storescu's start-up and the shared machine's hiccups weigh on it: more passes a transfer
    measure the relay more than the noise."""
    addr, port = bench.address(target.name, "dicom")
    argv = [STORESCU, "-aet", "BENCH_SCU", "-aec", "PACS", addr, str(port)]
    argv += ["+sd", str(bench.images)]
    series = bench.args.cstore_series
    if series > 1:
        argv += ["--repeat", str(series)]  # the same files again: storescp overwrites them
    env = {**os.environ, **DCMTK_ENV}
    n = bench.args.images
    walls = []
    for _ in range(bench.args.cstore_repeat):
        t0 = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        wall = time.perf_counter() - t0
        received = 0
        for rx in bench.rx:
            for f in rx.iterdir():
                received += 1
                f.unlink()
        if out.returncode or received != n:
            error = f"storescu exit {out.returncode}, {received}/{n} stored: "
            return Sample(None, wall=wall, error=error + out.stderr.strip()[-300:])
        walls.append(wall)
    wall = statistics.median(walls)
    return Sample(n * series / wall, wall=wall)


def workloads(args: argparse.Namespace) -> list[Workload]:
    wrk = f"wrk -t1 -c50 -d{args.duration:g}s --latency"
    ip = f"iperf3 -t {args.iperf_seconds:g}"
    scu = f"TCP_NODELAY=1 storescu +sd DIR --repeat {args.cstore_series} ({args.images} CT "
    scu += f"{args.cstore_series} times in one association; median of {args.cstore_repeat} runs "
    scu += "a sample)"
    return [
        Workload("iperf-1", "bulk TCP, 1 stream", "Gbit/s", "iperf", run_iperf(1), f"{ip} -P1"),
        Workload("iperf-4", "bulk TCP, 4 streams", "Gbit/s", "iperf", run_iperf(4), f"{ip} -P4"),
        Workload(
            "http-1k", "1 KiB GET, 50 keep-alive conns", "req/s", "http", run_wrk("1k", False), wrk
        ),
        Workload(
            "http-100k",
            "100 KiB GET, 50 keep-alive conns",
            "req/s",
            "http",
            run_wrk("100k", False),
            wrk,
        ),
        Workload(
            "http-close",
            "1 KiB GET, new connection per request",
            "conn/s",
            "http",
            run_wrk("1k", True),
            f"{wrk} -H 'Connection: close'",
        ),
        Workload(
            "cstore",
            f"C-STORE {args.images} CT images × {args.cstore_series}",
            "img/s",
            "dicom",
            run_cstore,
            scu,
        ),
    ]


def applies(workload: Workload, target: Target) -> bool:
    return workload.service == "http" or target.mode != "http"


def measure(bench: Bench, workload: Workload, target: Target) -> Sample:
    pids = target.pids()
    user, system = cpu_ticks(pids)
    t0 = time.monotonic()
    try:
        sample = workload.run(bench, target)
    except subprocess.TimeoutExpired as exc:
        sample = Sample(None, error=f"timed out after {exc.timeout:g} s")
    elapsed = time.monotonic() - t0
    if pids and elapsed > 0:
        user2, system2 = cpu_ticks(pids)
        sample.cpu = 100.0 * (user2 + system2 - user - system) / CLK_TCK / elapsed
        sample.cpu_sys = 100.0 * (system2 - system) / CLK_TCK / elapsed
    return sample


# --- profile (optional) ------------------------------------------------------------------------


def profile(bench: Bench, loads: list[Workload]) -> str:
    """py-spy (native stacks) on pacslb's worker during one more run of each workload; the
    figures of these runs are not in the table (py-spy stops the process for every sample)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return "py-spy not found (`.venv/bin/pip install py-spy`)\n"
    sections = []
    for workload in loads:
        for name in ("pacslb-http", "pacslb-tcp"):
            target = bench.targets.get(name)
            if target is None or not bench.wanted(name) or not applies(workload, target):
                continue
            raw = bench.work / f"profile-{workload.key}-{name}.txt"
            argv = [pyspy, "record", "--pid", str(target.pids()[0]), "--native", "--rate", "200"]
            argv += ["--format", "raw", "--output", str(raw)]
            spy = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                time.sleep(1.0)  # attached
                sample = measure(bench, workload, target)
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                spy.wait(30)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            sections.append(summarise_profile(raw, f"{workload.key} on {name}", workload, sample))
            time.sleep(bench.args.settle)
    return "\n".join(sections)


def summarise_profile(
    raw: Path, title: str, workload: Workload, sample: Sample, top: int = 10
) -> str:
    """Self time by function (C and Python) as % of the busy samples (not waiting in epoll),
    system calls apart, and pacslb's own functions with what they include."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = waiting = 0
    try:
        lines = raw.read_text().splitlines()
    except OSError:
        return f"#### {title}\n\n(no profile written)\n"
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(("epoll_wait ", "epoll_pwait ")):
            waiting += count  # the event loop has nothing to do
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def pct(n: int) -> str:
        return f"{100 * n / max(total, 1):.1f}"

    value = f"{fmt(sample.value, workload.unit)} {workload.unit}" if sample.value else "failed"
    idle = 100 * waiting / max(total + waiting, 1)
    out = [f"#### {title} ({value} under py-spy)", ""]
    out.append(f"{total} busy samples at 200/s ({idle:.0f} % of all samples waited in epoll).")
    libc = sorted(((f, n) for f, n in own.items() if "(libc.so" in f), key=lambda kv: -kv[1])
    in_libc = sum(n for _, n in libc)
    calls = ", ".join(f"{f.split(' ')[0]} {pct(n)}" for f, n in libc[:6])
    out.append(
        f"In libc (system calls): {pct(in_libc)} % ({calls}). py-spy stops the process for "
        f"each sample and over-counts system calls: the table's sys share (from /proc) is the "
        f"measure; below, the rest split by function."
    )
    out.append("")
    rest = max(total - in_libc, 1)
    out += ["| % of non-libc samples | function (self) |", "|---|---|"]
    user = sorted(((f, n) for f, n in own.items() if "(libc.so" not in f), key=lambda kv: -kv[1])
    for f, n in user[:top]:
        out.append(f"| {100 * n / rest:.1f} | `{f}` |")
    mine = [
        (f, n)
        for f, n in inclusive.items()
        if "pacslb/" in f and n < 0.98 * total and "pacslb/cli.py" not in f
    ]
    out += ["", "| % of busy samples | pacslb function (inclusive) |", "|---|---|"]
    for f, n in sorted(mine, key=lambda kv: -kv[1])[:top]:
        out.append(f"| {pct(n)} | `{f}` |")
    return "\n".join(out) + "\n"


# --- report ------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "Gbit/s":
        return f"{value:.2f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Summary:
    value: float | None
    p99: float | None
    cpu: float | None
    cpu_sys: float | None
    wall: float | None
    ok: int
    n: int
    errors: list[str]


def summarise(samples: list[Sample]) -> Summary:
    good = [s for s in samples if s.value is not None]
    return Summary(
        median([s.value for s in good if s.value is not None]),
        median([s.p99_ms for s in good if s.p99_ms is not None]),
        median([s.cpu for s in good if s.cpu is not None]),
        median([s.cpu_sys for s in good if s.cpu_sys is not None]),
        median([s.wall for s in good if s.wall is not None]),
        len(good),
        len(samples),
        sorted({s.error for s in samples if s.error}),
    )


def cost(sample: Sample, unit: str) -> float | None:
    """The proxy's CPU per unit of work: µs a request, connection or image, ms a GB."""
    if sample.cpu is None or not sample.value:
        return None
    seconds_per_second = sample.cpu / 100.0
    if unit == "Gbit/s":
        return 1e3 * seconds_per_second / (sample.value / 8)
    return 1e6 * seconds_per_second / sample.value


COST_UNITS = {"Gbit/s": "ms/GB", "img/s": "µs/img", "req/s": "µs/req", "conn/s": "µs/conn"}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


def source_version() -> str:
    """The commit of the pacslb source measured, and whether src/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "(no git)"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}" if head else "(no git)"


def paired(
    results: dict[tuple[str, str], list[Sample]], key: str, name: str, ref: str
) -> list[float]:
    """Round-by-round ratios of a target to a reference (runs of one round are close in time,
    so a slow spell of the shared machine cancels out more than in a ratio of medians)."""
    mine, theirs = results.get((key, name), []), results.get((key, ref), [])
    return [
        a.value / b.value
        for a, b in zip(mine, theirs, strict=False)
        if a.value is not None and b.value
    ]


def report(
    bench: Bench,
    loads: list[Workload],
    results: dict[tuple[str, str], list[Sample]],
    order: list[str],
    started: float,
    load_before: str,
) -> str:
    args = bench.args
    out = ["# pacslb proxy benchmark", ""]
    out.append("```")
    out.append(" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    out.append("```")
    out.append("")
    out.append(
        f"pacslb {bench.version}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: {os.cpu_count()} cores, "
        f"load average before {load_before}, after {os.getloadavg()[0]:.2f}; "
        f"{args.rounds} interleaved round(s), {time.monotonic() - started:.0f} s in all. "
        f"Medians of the rounds; p99 = median of the rounds' p99 latency; × HAProxy and "
        f"× direct = ratio of the medians; paired = median of the round-by-round ratios to "
        f"HAProxy (each round's in brackets); CPU = the proxy's processes, % of one core "
        f"(median), with its system (kernel) part; CPU per unit = that CPU time per request, "
        f"connection, GB or image (median): the cost, less sensitive to a busy machine than the "
        f"rate. Only ratios from one run compare."
    )
    out.append("")
    summaries = {key: summarise(samples) for key, samples in results.items()}
    out.append(
        "| workload | target | median | p99 | × HAProxy | × direct | paired × HAProxy "
        "| proxy CPU | CPU per unit | rounds |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for w in loads:
        direct = summaries.get((w.key, "direct"))
        first = True
        for name in order:
            s = summaries.get((w.key, name))
            if s is None:
                continue
            target = bench.targets[name]
            ref = summaries.get((w.key, target.reference or ""))
            vs_ref = ratio(s.value, ref.value) if ref and target.reference else "—"
            vs_direct = ratio(s.value, direct.value) if direct and name != "direct" else "—"
            pairs = paired(results, w.key, name, target.reference or "")
            if target.reference and pairs and name != target.reference:
                each = ", ".join(f"{x:.2f}" for x in pairs)
                vs_paired = f"{statistics.median(pairs):.2f}× ({each})"
            else:
                vs_paired = "—"
            p99 = f"{s.p99:.2f} ms" if s.p99 is not None else ""
            if w.key == "cstore" and s.wall is not None:
                p99 = f"wall {s.wall:.2f} s"
            cpu = "—"
            if s.cpu is not None and s.cpu_sys is not None:
                cpu = f"{s.cpu:.0f} % (sys {s.cpu_sys:.0f})"
            costs = [c for x in results[(w.key, name)] if (c := cost(x, w.unit)) is not None]
            per_unit = f"{statistics.median(costs):.1f} {COST_UNITS[w.unit]}" if costs else "—"
            per_round = ", ".join(
                fmt(x.value, w.unit) if x.value is not None else "fail"
                for x in results[(w.key, name)]
            )
            label = f"{w.title} ({w.unit})" if first else ""
            first = False
            out.append(
                f"| {label} | {name} | {fmt(s.value, w.unit)} | {p99} | {vs_ref} | {vs_direct} "
                f"| {vs_paired} | {cpu} | {per_unit} | {per_round} |"
            )
    out.append("")
    out.append(
        "× HAProxy: against `haproxy-http` for L7 HTTP targets, `haproxy-tcp` for the others."
    )
    out.append("")

    # the DESIGN §7 figures
    checks = [
        ("l7-tcp bulk, 1 stream ≥ 1.2× HAProxy tcp", "iperf-1", "haproxy-tcp", 1.2, "tcp"),
        ("l7-tcp bulk, 4 streams ≥ 1.2× HAProxy tcp", "iperf-4", "haproxy-tcp", 1.2, "tcp"),
        ("l7-tcp C-STORE ≥ 0.95× direct", "cstore", "direct", 0.95, "tcp"),
        ("l7-http 1 KiB keep-alive ≥ 0.7× HAProxy http", "http-1k", "haproxy-http", 0.7, "http"),
        ("l7-http new connections ≥ 0.7× HAProxy http", "http-close", "haproxy-http", 0.7, "http"),
    ]
    out.append(
        "DESIGN §7 goals (`pacslb` = one worker, `pacslb2` = `workers: 2`; ratio of the "
        "medians / median of the paired ratios):"
    )
    out.append("")
    for title, key, ref_name, goal, mode in checks:
        parts = []
        for inst in ("pacslb", "pacslb2"):
            mine, base = summaries.get((key, f"{inst}-{mode}")), summaries.get((key, ref_name))
            pairs = paired(results, key, f"{inst}-{mode}", ref_name)
            if mine is None or mine.value is None or base is None or not base.value or not pairs:
                continue
            a, b = mine.value / base.value, statistics.median(pairs)
            verdict = "meets" if min(a, b) >= goal else "short" if max(a, b) < goal else "mixed"
            parts.append(f"{inst} {a:.2f}× / {b:.2f}× ({verdict})")
        if parts:
            out.append(f"- {title}: " + ", ".join(parts))
    out.append("")
    errors = [f"- {w} / {t}: {'; '.join(s.errors)}" for (w, t), s in summaries.items() if s.errors]
    if errors:
        out += ["Errors and warnings:", "", *errors, ""]
    if bench.skipped:
        out += ["Not measured:", ""]
        out += [f"- {t}: {why.splitlines()[0] if why else ''}" for t, why in bench.skipped.items()]
        out.append("")
    out += ["Commands:", ""] + [f"- {w.key}: `{w.command}`" for w in loads]
    out += [f"- {n}" for n in bench.notes]
    return "\n".join(out) + "\n"


# --- main --------------------------------------------------------------------------------------


def csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pacslb vs HAProxy, nginx and direct, interleaved (see the module docstring)"
    )
    parser.add_argument("--rounds", type=int, help="default 3 (--quick: 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run: 8 (--quick: 2)")
    parser.add_argument(
        "--iperf-seconds", type=float, help="seconds per iperf3 run: 5 (--quick: 2)"
    )
    parser.add_argument("--images", type=int, default=200, help="CT images per C-STORE run")
    parser.add_argument(
        "--cstore-repeat", type=int, default=3, help="C-STORE runs per sample (median wall time)"
    )
    parser.add_argument(
        "--cstore-series",
        type=int,
        default=5,
        help="times one C-STORE association sends the series (storescu --repeat): 5",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s runs")
    parser.add_argument("--targets", type=csv, default=[], help=f"subset of {','.join(ADDRESSES)}")
    parser.add_argument("--workloads", type=csv, default=[], help="subset, e.g. http-1k,cstore")
    parser.add_argument("--port-base", type=int, default=27000, help="ports base+80 … base+443")
    parser.add_argument(
        "--nginx-stream-module",
        type=Path,
        help=f"ngx_stream_module.so for nginx-stream (default: {STREAM_MODULE} if present)",
    )
    parser.add_argument("--settle", type=float, default=0.5, help="pause between runs (s)")
    parser.add_argument("--profile", action="store_true", help="then py-spy the pacslb workers")
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args(argv)
    defaults = (1, 2.0, 2.0) if args.quick else (3, 8.0, 5.0)  # explicit options win
    for name, value in zip(("rounds", "duration", "iperf_seconds"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = [t for t in args.targets if t not in ADDRESSES]
    if unknown:
        parser.error(f"unknown targets {unknown}")
    if not 1024 <= args.port_base <= 32768 - 500:
        parser.error("--port-base must leave base+443 below the ephemeral range (32768)")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("haproxy", "nginx", "wrk", "iperf3", STORESCP, STORESCU, DCMDUMP):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")
    loads = [w for w in workloads(args) if not args.workloads or w.key in args.workloads]
    if not loads:
        raise SystemExit("no workload selected")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` cleans up like Ctrl-C
    started = time.monotonic()
    load_before = f"{os.getloadavg()[0]:.2f}"
    procs = Procs()
    bench = Bench(args, procs)
    results: dict[tuple[str, str], list[Sample]] = {}
    try:
        bench.setup()
        order = [t for t in ADDRESSES if t in bench.targets and bench.wanted(t)]
        bench.skipped = {t: why for t, why in bench.skipped.items() if bench.wanted(t)}
        for name, why in bench.skipped.items():
            print(f"not measured: {name}: {why}", file=sys.stderr)
        runs = sum(1 for w in loads for t in order if applies(w, bench.targets[t]))
        print(f"targets: {', '.join(order)}; {runs} runs a round × {args.rounds}", file=sys.stderr)
        for name in order:  # warm-up: connection pools, caches, page cache
            if "http" in {w.service for w in loads}:
                warm = argparse.Namespace(**{**vars(args), "duration": 1.0})
                saved, bench.args = bench.args, warm
                try:
                    run_wrk("1k", False)(bench, bench.targets[name])
                finally:
                    bench.args = saved
        for r in range(args.rounds):
            for w in loads:
                targets = [t for t in order if applies(w, bench.targets[t])]
                k = r % len(targets)
                for name in targets[k:] + targets[:k]:
                    sample = measure(bench, w, bench.targets[name])
                    results.setdefault((w.key, name), []).append(sample)
                    p99 = f" p99 {sample.p99_ms:.2f} ms" if sample.p99_ms is not None else ""
                    cpu = ""
                    if sample.cpu is not None and sample.cpu_sys is not None:
                        cpu = f" cpu {sample.cpu:.0f}% (sys {sample.cpu_sys:.0f}%)"
                    err = f" [{sample.error}]" if sample.error else ""
                    print(
                        f"[{r + 1}/{args.rounds}] {w.key:10} {name:13} "
                        f"{fmt(sample.value, w.unit):>9} {w.unit}{p99}{cpu}{err}",
                        file=sys.stderr,
                    )
                    time.sleep(args.settle)
        print(report(bench, loads, results, order, started, load_before), flush=True)
        if args.json:
            rows = [
                {"workload": w, "target": t, "round": i + 1, **vars(s)}
                for (w, t), samples in results.items()
                for i, s in enumerate(samples)
            ]
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
        if args.profile:
            print("\n## py-spy on pacslb's first worker (an extra run, not in the table)\n")
            print(profile(bench, loads))
        return 0
    except RuntimeError as exc:  # a backend or tool that would not start
        print(f"cannot run the benchmark: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        bench.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
