"""What one fault costs the service: fault injection with figures (issue 14, "Must show").

    sudo .venv/bin/python bench/faults.py [--quick] [--only NAME[,NAME...]] [--json FILE]
                                          [--src DIR] [--bound SECONDS] [--net 127.10.7]
                                          [--port-base 18000] [--list]

Every scenario starts its own `pacslb run` (a fresh state directory and a minimal config: only
settings every version accepts, plus `node.proxy.workers: 1` in the `-w1` variants; health
checks off, so only the fault moves the figures) from the tree this script belongs to
(`PYTHONPATH=<tree>/src`; `--src` measures another, e.g. a checkout of the code before a
change), in front of real peers that run for the whole session on loopback: one nginx with
three servers B1-B3 that answer their own name, two dcmtk storescp (`--ignore`: they receive,
answer and store nothing), and as load wrk (`-t1 -c50`, keep-alive), storescu sending many
small CT images (64×64, bench/dicom_files.py) and a probe loop: a new connection and a GET every
20 ms (1 s timeout), so "seconds unavailable" is the longest gap between two probes answered 200.

Scenarios (`--list`; each bounded in time, a hung one is cut and said so; the whole run takes
about four minutes, `--quick` about three):

- `sigkill-wrk`, `sigkill-wrk-w1`: SIGKILL of a proxy worker under wrk (the default number of
  workers; one worker): wrk's requests and errors, the probes' failures and longest gap, the
  time until a worker with a new PID answers on its control socket, how many of the requests
  served `status` still counts, the events recorded.
- `sigkill-cstore`: SIGKILL of the worker that carries a long C-STORE association (12,000
  images): images stored, whether storescu finished, the same probe and replacement figures.
- `sigstop-wrk`, `sigstop-wrk-w1`: SIGSTOP of a worker for 10 s (`--quick` 6) under wrk, then
  SIGCONT if pacslb has not ended it: the same figures, and the stopped worker's fate.
- `flood`: 5,000 connections held on one l7-tcp VIP while another l7-http and another l7-tcp
  VIP of the same workers serve the probe loop: their failures (goal 0), the flood's fate (and
  how many reach the real server), the workers' descriptors, RSS and CPU.
- `big-body`: to `/api/v1/config/validate`: JSON nested 900 deep, a 50 MB body without a token
  and with a read-only API token, then a valid config of 3.5 MB (under a 4 MiB limit, ~14,000
  services: what validation itself costs): each answer and its time, the longest wait of the
  control process's local socket meanwhile, its peak RSS (VmHWM) before and after (goal flat).
- `reloads`: 20 reloads adding and removing a real server under wrk (goal 0 errors).
- `remove-cstore`: the real server that carries a C-STORE removed by a reload: did it finish?
- `full-disk`: the state directory on a 16 MB tmpfs (root only), filled; then an API change:
  its answer, whether the config file and the revision list changed (goal: refused with its
  reason, both unchanged), and whether a `pacslb reload` after freeing the disk puts it live.
- `split`: 100 new clients one after another on an l7-http VIP with two equal servers (the
  default scheduler), without and with cookie persistence (goal 50/50 ± 10).

Output: a Markdown table on stdout (scenario, figure, value, goal), progress on stderr, every
figure and its raw data as JSON (`--json`, default /tmp/pacslb-faults.json). Figures, not a
test: the goals are the issue's, "(met)" is information, and the exit status is 0 whatever was
measured.

Only `--net`.0/24 (default 127.10.7.0/24) is bound or contacted, on ports `--port-base`+80 …
+443, and storescp's two ports on every address (+111, +112). Every process started is stopped
by PID (pacslb's workers by the PID in their command line, continued first if stopped); the
tmpfs is unmounted and the temporary directories removed, on errors and Ctrl-C as well.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import itertools
import json
import os
import platform
import re
import resource
import secrets
import select
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicom_files import write_ct_series
from proxy_bench import (
    CLK_TCK,
    NGINX_TEMP,
    Proc,
    Procs,
    alive,
    check_free,
    kill_by_pid,
    source_version,
    start_time,
    tail,
    wait_listening,
)

ROOT = Path(__file__).resolve().parents[1]
# The pacslb measured: this tree's (or --src), whatever is installed; no .pyc written into it.
PACSLB_ENV = {"PYTHONPATH": str(ROOT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
STORESCP, STORESCU = "/usr/bin/storescp", "/usr/bin/storescu"
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk 3.6.7 leaves Nagle on otherwise (research/dicom.md)
PROBE_INTERVAL = 0.02
MB = 1024 * 1024


# --- addresses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Net:
    """Addresses in one /24 of loopback and ports below the ephemeral range."""

    prefix: str
    base: int

    def addr(self, host: int) -> str:
        return f"{self.prefix}.{host}"

    @property
    def backends(self) -> dict[str, str]:  # nginx servers that answer their own label
        return {"B1": self.addr(11), "B2": self.addr(12), "B3": self.addr(13)}

    @property
    def backend_port(self) -> int:
        return self.base + 81

    @property
    def scp_ports(self) -> tuple[int, int]:  # storescp binds every address: one port each
        return self.base + 111, self.base + 112

    @property
    def vip_port(self) -> int:
        return self.base + 80

    @property
    def dicom_port(self) -> int:
        return self.base + 104

    @property
    def webui(self) -> tuple[str, int]:
        return self.addr(1), self.base + 443

    web_vip = property(lambda self: self.addr(21))  # l7-http, B1 and B2
    dicom_vip = property(lambda self: self.addr(22))  # l7-tcp, storescp
    flood_vip = property(lambda self: self.addr(23))  # l7-tcp, B3
    cookie_vip = property(lambda self: self.addr(24))  # l7-http with cookie persistence
    tcp_vip = property(lambda self: self.addr(25))  # l7-tcp, B1 and B2


def http_service(
    net: Net, label: str, vip: str, servers: list[str], persistence: dict[str, Any] | None = None
) -> dict[str, Any]:
    service: dict[str, Any] = {
        "label": label,
        "vip": vip,
        "ports": [net.vip_port],
        "mode": "l7-http",
        "health_check": {"type": "none"},
        "real_servers": [
            {"label": s, "address": net.backends[s], "port": net.backend_port} for s in servers
        ],
    }
    if persistence:
        service["persistence"] = persistence
    return service


def tcp_service(
    label: str, vip: str, port: int, servers: list[tuple[str, str, int]]
) -> dict[str, Any]:
    return {
        "label": label,
        "vip": vip,
        "ports": [port],
        "mode": "l7-tcp",
        "health_check": {"type": "none"},
        "real_servers": [{"label": s, "address": a, "port": p} for s, a, p in servers],
    }


def web(net: Net, servers: tuple[str, ...] = ("B1", "B2")) -> dict[str, Any]:
    return http_service(net, "Web", net.web_vip, list(servers))


def dicom(net: Net, scps: tuple[int, ...] = (0,)) -> dict[str, Any]:
    servers = [(f"P{i + 1}", net.addr(1), net.scp_ports[i]) for i in scps]
    return tcp_service("Dicom", net.dicom_vip, net.dicom_port, servers)


# --- /proc ---------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def mem_mb(pid: int, key: str) -> float | None:
    """VmRSS or VmHWM (peak RSS) of a process, MB."""
    value = proc_status(pid).get(key, "")
    return int(value.split()[0]) / 1024 if value else None


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def fd_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stopped(pid: int) -> bool:
    return proc_status(pid).get("State", "").startswith("T")


def tcp_inodes(remote_ports: set[int]) -> dict[int, int]:
    """socket inode -> remote port of established IPv4 connections to one of `remote_ports`."""
    out = {}
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            port = int(parts[2].split(":")[1], 16)
            if parts[3] == "01" and port in remote_ports:
                out[int(parts[9])] = port
    return out


def established_to(addr: str, port: int) -> int:
    """Established IPv4 connections to addr:port (from either side's /proc/net/tcp line with
    that remote end: the proxy's connections to a real server)."""
    want = f"{socket.inet_aton(addr)[::-1].hex().upper()}:{port:04X}"
    count = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            count += parts[2] == want and parts[3] == "01"
    return count


def owners(pids: list[int], remote_ports: set[int]) -> dict[int, int]:
    """pid -> remote port, for those of `pids` holding a connection to one of `remote_ports`."""
    inodes = tcp_inodes(remote_ports)
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                        found[pid] = inodes[int(link[8:-1])]
    return found


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- small clients -----------------------------------------------------------------------------


@dataclass
class Reply:
    outcome: str  # ok | HTTP nnn | refused | reset | timeout | closed | error ...
    status: int | None = None
    head: bytes = b""
    body: bytes = b""


def http_get(addr: str, port: int, timeout: float = 1.0, extra: str = "") -> Reply:
    """One GET on a new connection (Connection: close), read to the end."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as sock:
            sock.sendall(
                f"GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n".encode()
            )
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError:
        return Reply("refused")
    except ConnectionResetError:
        return Reply("reset")
    except TimeoutError:
        return Reply("timeout")
    except OSError as exc:
        return Reply(f"error {errno.errorcode.get(exc.errno or 0, exc)}")
    if not data:
        return Reply("closed")
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not m:
        return Reply("bad answer", head=head)
    status = int(m[1])
    return Reply("ok" if status == 200 else f"HTTP {status}", status, head, body)


class Probe(threading.Thread):
    """A new connection and a GET every 20 ms (1 s timeout each): (start, end, outcome)."""

    def __init__(self, addr: str, port: int) -> None:
        super().__init__(daemon=True)
        self.addr, self.port = addr, port
        self.samples: list[tuple[float, float, str]] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            t0 = time.monotonic()
            outcome = http_get(self.addr, self.port).outcome
            self.samples.append((t0, time.monotonic(), outcome))
            self._stopping.wait(PROBE_INTERVAL)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(5)

    def summary(self) -> dict[str, Any]:
        samples = list(self.samples)
        if not samples:
            return {"total": 0, "failed": 0, "outcomes": {}, "longest_gap_s": None}
        good = [end for _, end, outcome in samples if outcome == "ok"]
        edges = [samples[0][0], *good, samples[-1][1]]
        gaps = [b - a for a, b in itertools.pairwise(edges)]
        outcomes = Counter(outcome for _, _, outcome in samples if outcome != "ok")
        return {
            "total": len(samples),
            "ok": len(good),
            "failed": len(samples) - len(good),
            "outcomes": dict(outcomes),
            "longest_gap_s": round(max(gaps), 3),
        }


def probe_text(s: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items()))
    gap = s["longest_gap_s"]
    return (
        f"{s['failed']} failed of {s['total']}{f' ({kinds})' if kinds else ''}; "
        f"longest gap {gap:.2f} s"
        if gap is not None
        else "no probe ran"
    )


class Wrk:
    """wrk -t1 -cN --timeout 2s in the background; `interrupt()` ends it early (wrk prints its
    summary on SIGINT)."""

    def __init__(self, url: str, seconds: float, connections: int = 50) -> None:
        seconds = float(max(1, round(seconds)))  # wrk takes whole seconds
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "2s", url]
        self.command = " ".join(argv)
        self.seconds = seconds
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def interrupt(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)

    def result(self) -> dict[str, Any]:
        try:
            out, _ = self.popen.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            return {"error": "wrk did not end"}
        return parse_wrk(out)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def parse_wrk(out: str) -> dict[str, Any]:
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not done:
        return {"error": out.strip()[-300:]}
    result: dict[str, Any] = {"requests": int(done[1])}
    for kind in ("connect", "read", "write", "timeout"):
        m = re.search(rf"{kind} (\d+)", out.split("Socket errors:", 1)[-1])
        result[kind] = int(m[1]) if m and "Socket errors:" in out else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(m[1]) if m else 0
    result["failed"] = sum(result[k] for k in ("connect", "read", "write", "timeout", "non2xx"))
    return result


def wrk_text(w: dict[str, Any]) -> str:
    """Requests and socket errors: after a refused reconnect wrk counts a write error per try,
    so errors can outnumber requests."""
    if "error" in w:
        return f"wrk: {w['error']}"
    kinds = [f"{k} {w[k]:,}" for k in ("connect", "read", "write", "timeout", "non2xx") if w[k]]
    return f"{w['requests']:,} requests, {w['failed']:,} errors" + (
        f" ({', '.join(kinds)})" if kinds else ""
    )


class StoreScu:
    """storescu -v sending the small series `repeat` times in one association; counts the
    successful C-STORE responses as they come (its stderr, read by a thread)."""

    def __init__(self, addr: str, port: int, images: Path, count: int, repeat: int) -> None:
        argv = [STORESCU, "-v", "-aet", "FAULTS", "-aec", "PACS", addr, str(port)]
        argv += ["+sd", str(images), "--repeat", str(repeat)]
        self.total = count * repeat
        self.stored = 0
        self.errors: list[str] = []
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **DCMTK_ENV},
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            if "Received Store Response (Success)" in line:
                self.stored += 1
            elif line.startswith(("E:", "F:")):
                self.errors.append(line.strip())

    def wait_progress(self, share: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.stored < share * self.total and self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"C-STORE at {self.stored} images after {timeout:g} s")
            time.sleep(0.01)

    def wait(self, timeout: float) -> int | None:
        """storescu's exit status, or None if it had to be killed after `timeout`."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def text(self, code: int | None, timeout: float) -> str:
        end = f"storescu exit {code}" if code is not None else f"no end within {timeout:g} s"
        error = f"; {self.errors[-1][:80]}" if self.errors else ""
        return f"{self.stored:,} of {self.total:,} images stored; {end}{error}"


class Api:
    """The REST API over HTTPS (the self-signed certificate is not verified: loopback)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.cookie = self.csrf = ""

    def call(
        self, method: str, path: str, body: Any = None, token: str = "", timeout: float = 30
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ctx)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif self.cookie:
            headers["Cookie"] = self.cookie
            headers["X-CSRF-Token"] = self.csrf
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            resp = conn.getresponse()
            raw = resp.read()
            cookie = resp.getheader("set-cookie")
        finally:
            conn.close()
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def login(self, user: str, password: str) -> None:
        status, data = self.call(
            "POST", "/api/v1/session", {"username": user, "password": password}
        )
        if status != 200:
            raise RuntimeError(f"login refused: HTTP {status} {data}")
        self.csrf = data["csrf_token"]

    def new_token(self, name: str, role: str) -> str:
        status, data = self.call("POST", "/api/v1/tokens", {"name": name, "role": role})
        if status != 201:
            raise RuntimeError(f"token refused: HTTP {status} {data}")
        return str(data["token"])

    def post_raw(
        self, path: str, body: bytes, token: str, timeout: float
    ) -> tuple[int | None, float, int, str]:
        """POST a large body in 1 MiB pieces, stopping as soon as an answer comes (a server
        that refuses early may close before the end): (status or None, seconds to the status
        line or to giving up, bytes sent, the answer's start)."""
        deadline = time.monotonic() + timeout
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{auth}Connection: close\r\n\r\n"
        ).encode()
        raw = socket.create_connection((self.host, self.port), timeout=10)
        sock = self.ctx.wrap_socket(raw)
        sent, answer = 0, b""
        t0 = time.monotonic()
        try:
            sock.sendall(head)
            view = memoryview(body)
            while sent < len(body):
                if sock.pending() or select.select([sock], [], [], 0)[0]:
                    sock.settimeout(0.0)
                    try:
                        chunk = sock.recv(65536)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        chunk = None  # TLS records without data (session tickets)
                    if chunk is not None:
                        answer += chunk
                        break  # answered (or closed) before the end of the body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                sock.sendall(view[sent : sent + MB])
                sent += len(view[sent : sent + MB])
            while b"\r\n" not in answer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            return None, time.monotonic() - t0, sent, "no answer"
        except OSError as exc:  # closed or reset: read what was answered before
            with contextlib.suppress(OSError):
                sock.settimeout(2)
                answer += sock.recv(65536)
            if not answer:
                return None, time.monotonic() - t0, sent, f"connection {exc.__class__.__name__}"
        finally:
            sock.close()
        seconds = time.monotonic() - t0
        m = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
        return (int(m[1]) if m else None), seconds, sent, answer[:300].decode(errors="replace")


# --- pacslb ------------------------------------------------------------------------------------


def control(state: Path, payload: dict[str, Any], timeout: float = 5.0) -> Any:
    """One command on `pacslb run`'s local control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(state / "control.sock"))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error", "refused"))
    return answer["result"]


def worker_ping(path: str, timeout: float = 0.25) -> int | None:
    """The PID a proxy worker answers on its control socket, or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b'{"cmd":"ping"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return int(json.loads(data)["result"]["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Pacslb:
    """One `pacslb run` with its own state directory and config file."""

    def __init__(
        self,
        ctx: Ctx,
        name: str,
        services: list[dict[str, Any]],
        workers: int | None = None,
        webui: bool = False,
        state: Path | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.dir = ctx.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = state or self.dir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "pacslb.yaml"
        self.workers_setting = workers
        self.webui = webui
        self.services = services
        self.write(services)
        self.procs = Procs()
        self.proc: Proc | None = None
        self.hung = False  # the control process is known not to answer: stop it hard
        self.admin_password = ""

    def config(self, services: list[dict[str, Any]]) -> dict[str, Any]:
        host, port = self.ctx.net.webui
        node: dict[str, Any] = {
            "state_dir": str(self.state),
            "webui": {"enabled": self.webui, "listen": f"{host}:{port}"},
        }
        if self.workers_setting is not None:
            node["proxy"] = {"workers": self.workers_setting}
        return {"version": 1, "node": node, "virtual_services": services}

    def write(self, services: list[dict[str, Any]]) -> None:
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config(services), indent=2) + "\n")  # JSON is YAML
        tmp.replace(self.conf)

    def cli(
        self, *args: str, stdin: str = "", timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(self.state)]
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **PACSLB_ENV},
            cwd=ROOT,
        )

    def set_password(self) -> None:
        self.admin_password = "Fault-" + secrets.token_urlsafe(12)
        out = self.cli("passwd", "--user", "admin", "--password-stdin", stdin=self.admin_password)
        if out.returncode:
            raise RuntimeError(f"pacslb passwd: {out.stderr.strip()}")

    def start(self) -> None:
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(self.conf)]
        argv += ["--state-dir", str(self.state)]
        self.proc = self.procs.start(
            f"pacslb-{self.name}", argv, self.dir / "pacslb.log", PACSLB_ENV
        )
        self.ctx.stack.callback(self.stop)
        self.ctx.running.append(self)
        addrs = {(s["vip"], port) for s in self.services for port in s["ports"]}
        if self.webui:
            addrs.add(self.ctx.net.webui)
        wait_listening(self.proc, sorted(addrs), timeout=40.0)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                if control(self.state, {"cmd": "status"}, 2.0).get("ready", True):
                    workers = self.workers()
                    if workers and all(worker_ping(p, 1.0) == pid for pid, p in workers.items()):
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not ready after 20 s:\n{tail(self.proc.log)}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.popen.pid

    def workers(self) -> dict[int, str]:
        """pid -> control socket of every proxy worker of this state directory (from their
        command lines: found even when one does not answer)."""
        found = {}
        prefix = str(self.state) + "/"
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
            except (OSError, UnicodeDecodeError):
                continue
            if "proxy" in argv and "--socket" in argv:
                i = argv.index("--socket")
                zombie = proc_status(int(entry)).get("State", "").startswith("Z")
                if i + 1 < len(argv) and argv[i + 1].startswith(prefix) and not zombie:
                    found[int(entry)] = argv[i + 1]
        return dict(sorted(found.items(), key=lambda kv: kv[1]))

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        result: dict[str, Any] = control(self.state, {"cmd": "status"}, timeout)
        return result

    def requests(self, service: str) -> int | None:
        """The requests `status` counts for a service (every real server), or None."""
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            for svc in self.status()["services"]:
                if svc["label"] == service:
                    return sum(
                        int((rs["connections"] or {}).get("requests", 0))
                        for rs in svc["real_servers"]
                    )
        return None

    def events_since(self, since: str) -> list[dict[str, Any]]:
        """Events after `since` (ISO time), health transitions left out, oldest first."""
        try:
            events = control(self.state, {"cmd": "events", "limit": 2000}, 5.0)
        except (OSError, ValueError, RuntimeError):
            return [{"kind": "?", "message": "(the control process did not answer)"}]
        found = [e for e in events if e.get("at", "") >= since and e.get("kind") != "health"]
        return sorted(found, key=lambda e: e.get("at", ""))

    def stop(self) -> None:
        if self.proc is None:
            return
        workers = self.workers()
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)  # a stopped worker cannot act on SIGTERM
        if self.proc in self.procs.procs:
            self.procs.stop(self.proc, timeout=3.0 if self.hung else 20.0)
        for pid in {**workers, **self.workers()}:
            started = start_time(pid)
            if started is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
                kill_by_pid(pid, started, f"{self.name} worker", grace=3.0)
        self.proc = None


def short(message: str, width: int = 90) -> str:
    """A message without the directories of its paths (this run's temporary ones), cut."""
    return re.sub(r"(?:/[\w.-]+)+/", "", message)[:width]


def events_text(events: list[dict[str, Any]], limit: int = 3) -> str:
    """How many events of each kind, then the first few, those not about a config or a plan
    (a reload's own bookkeeping) first."""
    if not events:
        return "none"
    kinds = Counter(str(e.get("kind")) for e in events)
    counts = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    ordered = sorted(events, key=lambda e: e.get("kind") in ("config", "plan"))
    shown = "; ".join(f"{e.get('kind')}: {short(str(e.get('message')))}" for e in ordered[:limit])
    return f"{len(events)} ({counts}): {shown}{' …' if len(events) > limit else ''}"


class Meter(threading.Thread):
    """Every 0.25 s: CPU, RSS and descriptors of the control process and the proxy workers."""

    def __init__(self, p: Pacslb) -> None:
        super().__init__(daemon=True)
        self.p = p
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.peak_fds = 0
        self.peak_rss = 0.0  # MB, the workers together
        self.t0 = time.monotonic()
        self.t1 = self.t0
        self._stopping = threading.Event()
        for pid in [p.pid, *p.workers()]:
            if (cpu := cpu_seconds(pid)) is not None:
                self.cpu_first[pid] = self.cpu_last[pid] = cpu

    def run(self) -> None:
        while not self._stopping.is_set():
            self.sample()
            self._stopping.wait(0.25)

    def sample(self) -> None:
        workers = list(self.p.workers())
        for pid in [self.p.pid, *workers]:
            if (cpu := cpu_seconds(pid)) is not None:
                self.cpu_first.setdefault(pid, 0.0)  # a new worker: all its CPU is in the window
                self.cpu_last[pid] = cpu
        self.peak_fds = max(self.peak_fds, sum(fd_count(pid) for pid in workers))
        self.peak_rss = max(self.peak_rss, sum(mem_mb(pid, "VmRSS") or 0 for pid in workers))
        self.t1 = time.monotonic()

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(5)
        self.sample()

    def cpu(self) -> dict[str, float]:
        control = self.p.pid
        spent = {pid: self.cpu_last[pid] - first for pid, first in self.cpu_first.items()}
        return {
            "control_s": round(spent.get(control, 0.0), 2),
            "workers_s": round(sum(v for pid, v in spent.items() if pid != control), 2),
            "window_s": round(self.t1 - self.t0, 1),
        }


def cpu_text(c: dict[str, float]) -> str:
    w = c["window_s"] or 1
    return (
        f"control {c['control_s']:.1f} s ({100 * c['control_s'] / w:.0f} %), workers "
        f"{c['workers_s']:.1f} s ({100 * c['workers_s'] / w:.0f} % of a core) in {w:.0f} s"
    )


def watch_workers(
    p: Pacslb,
    victim: int,
    old: set[int],
    t0: float,
    until: float,
    done: Callable[[], bool],
    resume_at: float | None = None,
    victim_path: str | None = None,
) -> dict[str, Any]:
    """After a fault on `victim` at `t0`: when another process answers the victim's control
    socket (a new worker, or a spare that took it over), else when a worker with a new PID
    answers any socket; when the victim went away, and (SIGSTOP) continue it at `resume_at`
    unless pacslb has dealt with it. Ends at `until`, or once replaced and `done()`."""
    started = start_time(victim) or 0
    paths = set(p.workers().values())
    # A warm spare keeps its own socket in its command line when it takes over: what counts is
    # who answers on the victim's socket (a spare started before the fault is in `old`).
    own = victim_path
    out: dict[str, Any] = {"replaced_after_s": None, "new_pid": None, "victim_gone_after_s": None}
    last_scan = time.monotonic()
    while True:
        now = time.monotonic()
        if out["victim_gone_after_s"] is None and not alive(victim, started):
            out["victim_gone_after_s"] = round(now - t0, 3)
        if resume_at is not None and now >= resume_at:
            resume_at = None
            if out["victim_gone_after_s"] is None:
                with contextlib.suppress(OSError):
                    os.kill(victim, signal.SIGCONT)
                out["resumed_after_s"] = round(now - t0, 3)
        if out["replaced_after_s"] is None:
            if now - last_scan > 0.5:
                paths |= set(p.workers().values())
                last_scan = now
            for path in [own] if own is not None else sorted(paths):
                pid = worker_ping(path)
                if pid is not None and (pid != victim if own is not None else pid not in old):
                    out["replaced_after_s"] = round(time.monotonic() - t0, 3)
                    out["new_pid"] = pid
                    break
        if now >= until or (out["replaced_after_s"] is not None and resume_at is None and done()):
            break
        time.sleep(0.02)
    return out


def replacement_text(w: dict[str, Any], victim: int, waited: float) -> str:
    if w["replaced_after_s"] is None:
        return f"none within {waited:.0f} s"
    return f"after {w['replaced_after_s']:.2f} s (pid {victim} → {w['new_pid']})"


# --- the session ---------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    goal: str = ""
    met: bool | None = None


@dataclass
class Result:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0

    def add(self, figure: str, value: str, goal: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(figure, value, goal, met))
        print(f"    {figure}: {value}", file=sys.stderr)


class ScenarioTimeout(Exception):
    pass


class Ctx:
    """What every scenario shares: the arguments, the peers, the work directories."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.net = Net(args.net, args.port_base)
        self.peers = Procs()
        self.work = Path(tempfile.mkdtemp(prefix="pacslb-bench-faults-"))
        os.chmod(self.work, 0o755)  # nginx's workers run as another user when we are root
        self.shm = Path(tempfile.mkdtemp(prefix="pacslb-bench-faults-", dir="/dev/shm"))
        self.images = self.shm / "images"
        self.image_count = 200
        self.stack = contextlib.ExitStack()  # the running scenario's clean-up
        self.running: list[Pacslb] = []  # the running scenario's pacslb instances
        self.workers_setting = workers_setting_exists()

    def cleanup(self) -> None:
        self.stack.close()
        self.peers.stop_all()
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    def pacslb(self, name: str, services: list[dict[str, Any]], **kw: Any) -> Pacslb:
        p = Pacslb(self, name, services, **kw)
        p.start()
        return p

    def probe(self, addr: str, port: int) -> Probe:
        probe = Probe(addr, port)
        probe.start()
        self.stack.callback(probe.stop)
        return probe

    def meter(self, p: Pacslb) -> Meter:
        meter = Meter(p)
        meter.start()
        self.stack.callback(meter.stop)
        return meter

    def wrk(self, url: str, seconds: float) -> Wrk:
        w = Wrk(url, seconds)
        self.stack.callback(w.kill)
        return w

    def storescu(self, port_index: int = 0, repeat: int | None = None) -> StoreScu:
        repeat = repeat or (20 if self.quick else 60)
        scu = StoreScu(
            self.net.dicom_vip, self.net.dicom_port, self.images, self.image_count, repeat
        )
        self.stack.callback(scu.kill)
        return scu

    def web_url(self) -> str:
        return f"http://{self.net.web_vip}:{self.net.vip_port}/"

    # -- peers --

    def start_peers(self) -> None:
        net = self.net
        needed = [(a, net.backend_port) for a in net.backends.values()]
        needed += [("0.0.0.0", port) for port in net.scp_ports]
        vips = (net.web_vip, net.dicom_vip, net.flood_vip, net.cookie_vip, net.tcp_vip)
        needed += [(v, p) for v in vips for p in (net.vip_port, net.dicom_port)]
        needed.append(net.webui)
        check_free(needed)
        write_ct_series(self.images, self.image_count, size=64)
        (self.work / "logs").mkdir()
        (self.work / "tmp" / "nginx").mkdir(parents=True)
        conf = self.work / "nginx.conf"
        conf.write_text(nginx_conf(self.work, net))
        argv = ["nginx", "-p", str(self.work), "-e", str(self.work / "logs/nginx.error.log")]
        nginx = self.peers.start("nginx", [*argv, "-c", str(conf)], self.work / "logs/nginx.log")
        wait_listening(nginx, [(a, net.backend_port) for a in net.backends.values()])
        for i, port in enumerate(net.scp_ports, start=1):
            argv = [STORESCP, "--ignore", "-aet", "PACS", str(port)]
            scp = self.peers.start(f"storescp-{i}", argv, self.work / f"logs/scp{i}.log", DCMTK_ENV)
            wait_listening(scp, [("0.0.0.0", port)])


def nginx_conf(work: Path, net: Net) -> str:
    servers = "".join(
        f"  server {{ listen {addr}:{net.backend_port} backlog=4096; "
        f'location / {{ return 200 "{label}\\n"; }} }}\n'
        for label, addr in net.backends.items()
    )
    return f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/logs/nginx.error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 12000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_header_timeout 120s;
  default_type text/plain;{NGINX_TEMP.format(d=work / "tmp" / "nginx")}
{servers}}}
"""


def workers_setting_exists() -> bool:
    """Whether this tree's config accepts `node.proxy.workers` (the -w1 variants need it)."""
    code = "from pacslb.config import ProxySettings as P; print('workers' in P.model_fields)"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **PACSLB_ENV},
        )
        return out.stdout.strip() == "True"
    return False


# --- scenarios ---------------------------------------------------------------------------------


def workers_label(workers: int | None) -> str:
    return "default" if workers is None else f"`workers: {workers}`"


def fault_under_wrk(ctx: Ctx, r: Result, sig: signal.Signals, workers: int | None) -> None:
    """A worker killed (or stopped, then continued) while wrk runs on its VIP."""
    warm = 2.0
    hold = (6.0 if ctx.quick else 10.0) if sig == signal.SIGSTOP else 0.0
    after = 3.0 if ctx.quick else 5.0
    p = ctx.pacslb(r.name, [web(ctx.net)], workers=workers)
    old = p.workers()
    r.data["workers_before"] = list(old)
    probe = ctx.probe(ctx.net.web_vip, ctx.net.vip_port)
    meter = ctx.meter(p)
    wrk = ctx.wrk(ctx.web_url(), warm + hold + after)
    end = time.monotonic() + wrk.seconds
    time.sleep(warm)
    victim = next(iter(old))
    since = now_iso()
    t0 = time.monotonic()
    os.kill(victim, sig)
    if sig == signal.SIGSTOP:
        ctx.stack.callback(lambda: os.kill(victim, signal.SIGCONT) if start_time(victim) else None)
    watched = watch_workers(
        p,
        victim,
        set(old),
        t0,
        end,
        lambda: wrk.popen.poll() is not None,
        resume_at=t0 + hold if hold else None,
        victim_path=old[victim],
    )
    w = wrk.result()
    probe.stop()
    time.sleep(2.5)  # `status` reads the workers' counters once a second
    counted = p.requests("Web")
    meter.stop()
    s = probe.summary()
    r.data.update(wrk=w, probes=s, watch=watched, counted=counted, cpu=meter.cpu())
    r.data["events"] = events = p.events_since(since)
    r.data["workers_after"] = list(p.workers())
    r.add("proxy workers", f"{len(old)} ({workers_label(workers)})")
    r.add(f"wrk -c50 keep-alive, {wrk.seconds:g} s", wrk_text(w))
    r.add("new-connection probes, every 20 ms", probe_text(s))
    r.add("a new worker answers", replacement_text(watched, victim, end - t0))
    if sig == signal.SIGSTOP:
        gone, resumed = watched["victim_gone_after_s"], watched.get("resumed_after_s")
        if resumed is None:
            fate = f"ended by pacslb after {gone:.2f} s" if gone is not None else "still stopped"
        else:
            fate = f"still there after {hold:g} s: continued by this script"
            if watched["replaced_after_s"] is not None:
                fate += " (a new worker had taken its place)"
        r.add("the stopped worker", fate)
    served = w.get("requests", 0) + s.get("ok", 0)
    r.add(
        "`status` counts (all requests served)",
        f"{counted:,} of {served:,}" if counted is not None else "no answer",
        "the requests before the fault kept",
    )
    r.add("events after the fault", events_text(events))
    r.add("CPU", cpu_text(meter.cpu()))


def sigkill_cstore(ctx: Ctx, r: Result) -> None:
    """The worker carrying a long C-STORE association killed."""
    p = ctx.pacslb(r.name, [web(ctx.net), dicom(ctx.net)])
    old = p.workers()
    probe = ctx.probe(ctx.net.web_vip, ctx.net.vip_port)
    scu = ctx.storescu()
    scu.wait_progress(0.15, 30)
    carriers = owners(list(old), {ctx.net.scp_ports[0]})
    victim = next(iter(carriers), next(iter(old)))
    since = now_iso()
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    bound = 90.0
    watched = watch_workers(
        p, victim, set(old), t0, t0 + 15, lambda: scu.popen.poll() is not None, None, old[victim]
    )
    code = scu.wait(max(1.0, bound - (time.monotonic() - t0)))
    probe.stop()
    s = probe.summary()
    events = p.events_since(since)
    r.data.update(
        stored=scu.stored,
        total=scu.total,
        exit=code,
        errors=scu.errors[-3:],
        probes=s,
        watch=watched,
        carried=victim in carriers,
        events=events,
    )
    r.add("proxy workers", f"{len(old)} ({workers_label(None)})")
    r.add(
        "killed worker carried the association",
        "yes" if victim in carriers else "not found: killed the first worker",
    )
    r.add(
        f"C-STORE, {scu.total:,} images 64×64 in one association",
        scu.text(code, bound),
        "finished (it cannot when its own worker dies)",
    )
    r.add("new-connection probes on the Web VIP, every 20 ms", probe_text(s))
    r.add("a new worker answers", replacement_text(watched, victim, 15))
    r.add("events after the fault", events_text(events))


def flood(ctx: Ctx, r: Result) -> None:
    """5,000 connections held on one l7-tcp VIP; the probe loop on an l7-http and another
    l7-tcp VIP of the same workers."""
    n, hold = 5000, (5.0 if ctx.quick else 10.0)
    net = ctx.net
    b3 = [("B3", net.backends["B3"], net.backend_port)]
    both = [(b, net.backends[b], net.backend_port) for b in ("B1", "B2")]
    flooded = tcp_service("Flooded", net.flood_vip, net.vip_port, b3)
    plain = tcp_service("WebTcp", net.tcp_vip, net.vip_port, both)
    p = ctx.pacslb(r.name, [web(net), plain, flooded])
    workers = list(p.workers())
    fds0 = sum(fd_count(pid) for pid in workers)
    rss0 = sum(mem_mb(pid, "VmRSS") or 0 for pid in workers)
    limit = fd_limit(workers[0])
    probes = {
        "l7-http": ctx.probe(net.web_vip, net.vip_port),
        "l7-tcp": ctx.probe(net.tcp_vip, net.vip_port),
    }
    time.sleep(1.0)
    meter = ctx.meter(p)
    since = now_iso()
    socks: list[socket.socket] = []
    ctx.stack.callback(close_all, socks)
    opened = open_flood(net.flood_vip, net.vip_port, n, 10.0, socks)
    time.sleep(hold)
    relayed = established_to(net.backends["B3"], net.backend_port)
    fate = Counter(socket_state(sock) for sock in socks)
    close_all(socks)
    meter.stop()
    time.sleep(3.0)  # what the workers give back once the flood is gone
    for probe in probes.values():
        probe.stop()
    rss1 = sum(mem_mb(pid, "VmRSS") or 0 for pid in p.workers())
    summaries = {kind: probe.summary() for kind, probe in probes.items()}
    events = p.events_since(since)
    r.data.update(
        opened=dict(opened),
        after_hold=dict(fate),
        relayed=relayed,
        probes=summaries,
        fds_before=fds0,
        fds_peak=meter.peak_fds,
        fd_limit=limit,
        rss_before=rss0,
        rss_peak=meter.peak_rss,
        rss_after=rss1,
        cpu=meter.cpu(),
        events=events,
    )
    r.add("proxy workers", f"{len(workers)} ({workers_label(None)})")
    how = ", ".join(f"{k} {v:,}" for k, v in sorted(opened.items()))
    after = ", ".join(f"{k} {v:,}" for k, v in sorted(fate.items()))
    r.add(
        f"{n:,} connections to one l7-tcp VIP",
        f"{how}; after {hold:g} s: {after or '-'}; {relayed:,} relayed to its real server",
    )
    for kind, s in summaries.items():
        r.add(
            f"another {kind} VIP, new connection every 20 ms",
            probe_text(s),
            "0 failed",
            s["failed"] == 0 and s["total"] > 0,
        )
    r.add(
        "worker descriptors",
        f"{fds0:,} before, peak {meter.peak_fds:,} (limit {limit or '?':,} a worker)",
    )
    r.add(
        "worker RSS",
        f"{rss0:.0f} MB before, peak {meter.peak_rss:.0f}, {rss1:.0f} 3 s after the flood",
    )
    r.add("CPU during the flood", cpu_text(meter.cpu()))
    r.add("events", events_text(events))


def open_flood(
    addr: str, port: int, n: int, timeout: float, socks: list[socket.socket]
) -> Counter[str]:
    """Open n connections at once (non-blocking); the established ones go into `socks`."""
    outcome: Counter[str] = Counter()
    pending: dict[int, socket.socket] = {}
    poller = select.epoll()
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.setblocking(False)
            err = sock.connect_ex((addr, port))
            if err in (0, errno.EINPROGRESS):
                pending[sock.fileno()] = sock
                poller.register(sock.fileno(), select.EPOLLOUT)
            else:
                outcome[errno.errorcode.get(err, str(err))] += 1
                sock.close()
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.2):
                sock = pending.pop(fd)
                poller.unregister(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    outcome["established"] += 1
                    socks.append(sock)
                else:
                    outcome[errno.errorcode.get(err, str(err))] += 1
                    sock.close()
        for sock in pending.values():
            outcome["no answer"] += 1
            sock.close()
    finally:
        poller.close()
    return outcome


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    socks.clear()


def socket_state(sock: socket.socket) -> str:
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "error")
    return "closed" if not data else "data"


def big_body(ctx: Ctx, r: Result) -> None:
    """Bodies to /api/v1/config/validate: JSON nested 900 deep, 50 MB without a token and with
    a read-only token, then a config just under a 4 MiB limit (valid JSON, 14,000 services:
    what the validation itself costs)."""
    bound = 30.0 if ctx.quick else 60.0
    p = Pacslb(ctx, r.name, [web(ctx.net)], webui=True)
    p.set_password()
    p.start()
    api = Api(*ctx.net.webui)
    api.login("admin", p.admin_password)
    token = api.new_token("faults-readonly", "readonly")
    body = big_config_json(50 * MB)
    nested = b'{"version": 1, "virtual_services": [{"label": ' + b"[" * 900 + b"]" * 900 + b"}]}"
    under = big_config_json(3 * MB + MB // 2)
    stall = ControlStall(p.state)
    stall.start()
    ctx.stack.callback(stall.stop)
    hwm0 = mem_mb(p.pid, "VmHWM")
    cpu0 = cpu_seconds(p.pid) or 0.0
    rows: dict[str, Any] = {}
    for label, payload, tok in (
        ("JSON nested 900 deep, read-only token", nested, token),
        ("50 MB body, no token", body, ""),
        ("50 MB body, read-only token", body, token),
        ("3.5 MB config (under a 4 MiB limit), read-only token", under, token),
    ):
        t0 = time.monotonic()
        status, seconds, sent, answer = api.post_raw("/api/v1/config/validate", payload, tok, bound)
        wait = stall.longest_wait(t0, time.monotonic())
        rows[label] = {
            "status": status,
            "seconds": round(seconds, 3),
            "sent": sent,
            "answer": answer,
            "control_longest_wait_s": wait,
            "vmhwm_after_mb": mem_mb(p.pid, "VmHWM"),
        }
        if status is None:
            value = (
                f"{answer} within {bound:g} s ({sent / MB:.1f} of {len(payload) / MB:.1f} MB sent)"
            )
            p.hung = True
        else:
            value = f"HTTP {status} after {seconds:.2f} s ({sent / MB:.1f} MB sent)"
        value += f"; control loop's longest wait {wait:.2f} s"
        if "nested" in label:
            goal, met = "4xx, not 500", status is not None and 400 <= status < 500
        elif "50 MB" in label:  # refused before the whole body was read (the rest stayed here)
            wanted = (413,) if tok else (401, 413)
            goal = f"{' or '.join(map(str, wanted))} before the body is read"
            met = status in wanted and sent < len(payload)
        else:
            goal, met = "answered; the control loop not held up", status is not None and wait < 1
        r.add(label, value, goal, met)
        if p.hung:
            break
    stall.stop()
    hwm1 = mem_mb(p.pid, "VmHWM")
    cpu1 = cpu_seconds(p.pid) or 0.0
    r.data.update(
        requests=rows,
        vmhwm_before_mb=hwm0,
        vmhwm_after_mb=hwm1,
        control_cpu_s=round(cpu1 - cpu0, 2),
        control_stall=stall.summary(),
    )
    if hwm0 is not None and hwm1 is not None:
        r.add(
            "control process peak RSS (VmHWM)",
            f"{hwm0:.0f} MB before, {hwm1:.0f} MB after",
            "flat",
            hwm1 < hwm0 + 50,
        )
    st = stall.summary()
    still = " (still waiting when the bench gave up)" if st["stuck_at_end"] else ""
    r.add(
        "control loop: `status` on its local socket every 0.1 s, all along",
        f"longest wait {st['longest_wait_s']:.2f} s{still}",
        "well under a health-check interval (5 s)",
        st["longest_wait_s"] < 5,
    )
    r.add("control process CPU", f"{cpu1 - cpu0:.1f} s")


def big_config_json(size: int) -> bytes:
    """A config-shaped JSON document of about `size` bytes: many services, one server each."""
    parts, total, i = [], 0, 0
    while total < size:
        port = 1024 + i % 60000
        part = (
            f'{{"label":"S{i:07d}","vip":"127.10.7.200","ports":[{port}],"mode":"l7-tcp",'
            f'"health_check":{{"type":"none"}},"real_servers":[{{"label":"R{i:07d}",'
            f'"address":"127.10.7.201","port":{port}}}]}}'
        )
        parts.append(part)
        total += len(part) + 1
        i += 1
    return ('{"version":1,"virtual_services":[' + ",".join(parts) + "]}").encode()


class ControlStall(threading.Thread):
    """`status` on the control socket every 0.1 s (2 s timeout, then again): the longest time
    the control process's event loop left it unanswered."""

    def __init__(self, state: Path) -> None:
        super().__init__(daemon=True)
        self.state = state
        self.answers: list[float] = []
        self.t0 = time.monotonic()
        self.t1 = self.t0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                control(self.state, {"cmd": "status"}, 2.0)
                self.answers.append(time.monotonic())
            self._stopping.wait(0.1)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(5)
        self.t1 = time.monotonic()

    def longest_wait(self, t0: float, t1: float) -> float:
        """The longest time without an answer between t0 and t1."""
        inside = [t for t in self.answers if t0 < t < t1]
        before = [t for t in self.answers if t <= t0]
        edges = [before[-1] if before else self.t0, *inside, t1]
        return round(max(b - a for a, b in itertools.pairwise(edges)), 3)

    def summary(self) -> dict[str, Any]:
        edges = [self.t0, *self.answers, self.t1]
        gaps = [b - a for a, b in itertools.pairwise(edges)]
        stuck = not self.answers or self.t1 - self.answers[-1] > 2.5
        return {
            "longest_wait_s": round(max(gaps), 3),
            "answers": len(self.answers),
            "stuck_at_end": stuck,
        }


def reloads(ctx: Ctx, r: Result) -> None:
    """20 reloads, each adding or removing B3, under wrk."""
    n = 20
    p = ctx.pacslb(r.name, [web(ctx.net)])
    since = now_iso()
    meter = ctx.meter(p)
    wrk = ctx.wrk(ctx.web_url(), 120)
    time.sleep(1.0)
    times, failures = [], []
    for i in range(n):
        servers = ("B1", "B2", "B3") if i % 2 == 0 else ("B1", "B2")
        p.write([web(ctx.net, servers)])
        t0 = time.monotonic()
        try:  # what `pacslb reload` sends, without a Python start-up each time
            control(p.state, {"cmd": "reload"}, 30.0)
        except (OSError, ValueError, RuntimeError) as exc:
            failures.append(f"{exc.__class__.__name__}: {str(exc)[:200]}")
        times.append(time.monotonic() - t0)
        time.sleep(0.3)
    time.sleep(1.0)
    wrk.interrupt()
    w = wrk.result()
    meter.stop()
    events = p.events_since(since)
    r.data.update(
        wrk=w,
        reload_seconds=[round(t, 3) for t in times],
        failures=failures,
        events=events,
        cpu=meter.cpu(),
    )
    r.add(
        f"wrk -c50 keep-alive during {n} reloads",
        wrk_text(w),
        "0 errors",
        w.get("failed") == 0 and w.get("requests", 0) > 0,
    )
    r.add(
        "reloads (what `pacslb reload` sends, on the control socket)",
        f"{n - len(failures)} of {n} applied; median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s" + (f"; first failure: {failures[0]}" if failures else ""),
    )
    r.add("events", events_text(events))
    r.add("CPU", cpu_text(meter.cpu()))


def remove_cstore(ctx: Ctx, r: Result) -> None:
    """The real server carrying a C-STORE removed from the config, then `pacslb reload`."""
    net = ctx.net
    p = ctx.pacslb(r.name, [dicom(net, (0, 1))])
    old = list(p.workers())
    scu = ctx.storescu()
    scu.wait_progress(0.15, 30)
    carrier = next(iter(owners(old, set(net.scp_ports)).values()), None)
    if carrier is None:
        raise RuntimeError("no worker holds a connection to a storescp")
    index = net.scp_ports.index(carrier)
    label = f"P{index + 1}"
    p.write([dicom(net, (1 - index,))])
    since = now_iso()
    t0 = time.monotonic()
    try:  # what `pacslb reload` sends
        answer = f"applied revision {control(p.state, {'cmd': 'reload'}, 30.0)['revision']}"
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        answer = f"{exc.__class__.__name__}: {exc}"
    took = time.monotonic() - t0
    listed = "gone"
    with contextlib.suppress(OSError, ValueError, RuntimeError, KeyError):
        for svc in p.status()["services"]:
            for rs in svc["real_servers"]:
                if rs["label"] == label:
                    listed = f"listed ({rs['admin']}, {rs['health']})"
    bound = 90.0
    code = scu.wait(bound)
    events = p.events_since(since)
    r.data.update(
        stored=scu.stored,
        total=scu.total,
        exit=code,
        errors=scu.errors[-3:],
        reload=answer,
        reload_s=round(took, 3),
        removed=label,
        status_after_reload=listed,
        events=events,
    )
    r.add(
        f"C-STORE, {scu.total:,} images, its server {label} removed at 15 %",
        scu.text(code, bound),
        "finished (drained)",
        code == 0 and scu.stored == scu.total,
    )
    r.add(
        "reload (what `pacslb reload` sends)",
        f"{answer[:100]} after {took:.2f} s",
    )
    r.add(f"{label} in `status` right after the reload", listed)
    r.add("events after the reload", events_text(events))


def full_disk(ctx: Ctx, r: Result) -> None:
    """The state directory on a tmpfs, filled; an API change; then the disk freed and a reload."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root (mounts a tmpfs)")
    mount = ctx.work / r.name / "statefs"
    mount.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        check=True,
        timeout=30,
    )
    ctx.stack.callback(unmount, mount)
    p = Pacslb(ctx, r.name, [web(ctx.net)], webui=True, state=mount / "state")
    p.set_password()
    p.start()
    api = Api(*ctx.net.webui)
    api.login("admin", p.admin_password)
    token = api.new_token("faults-admin", "admin")
    _, revs0 = api.call("GET", "/api/v1/config/revisions", token=token)
    file0 = hashlib.sha256(p.conf.read_bytes()).hexdigest()
    filler = mount / "filler"
    fill(filler)
    since = now_iso()
    new = {"label": "B3", "address": ctx.net.backends["B3"], "port": ctx.net.backend_port}
    t0 = time.monotonic()
    try:
        status, answer = api.call(
            "POST", "/api/v1/virtual_services/Web/real_servers", new, token=token
        )
    except (OSError, http.client.HTTPException) as exc:
        status, answer = 0, f"no answer: {exc}"
    took = time.monotonic() - t0
    text = answer if isinstance(answer, str) else json.dumps(answer)
    file_after = p.conf.read_bytes()
    file_changed = hashlib.sha256(file_after).hexdigest() != file0
    revs1: Any = None
    with contextlib.suppress(OSError, http.client.HTTPException):
        _, revs1 = api.call("GET", "/api/v1/config/revisions", token=token)
    live = server_live(p, "Web", "B3")
    running = p.proc is not None and p.proc.popen.poll() is None
    events = p.events_since(since)
    filler.unlink()
    out = p.cli("reload") if running else None
    live_after_reload = server_live(p, "Web", "B3") if running else None
    r.data.update(
        status=status,
        answer=text[:500],
        seconds=round(took, 3),
        file_changed=file_changed,
        revisions_before=revs0,
        revisions_after=revs1,
        live=live,
        running=running,
        events=events,
        reload=None if out is None else (out.stdout + out.stderr).strip(),
        live_after_reload=live_after_reload,
    )
    r.add(
        "API change (add a real server), state disk full",
        f"HTTP {status} after {took:.2f} s: {short(text, 110)}" if status else short(text, 120),
        "refused with its reason",
        status >= 400 and any(w in text.lower() for w in ("space", "disk", "full")),
    )
    holds = "B3" in file_after.decode(errors="replace")
    r.add(
        "config file",
        ("changed: it holds the refused change" if holds else "changed")
        if file_changed
        else "unchanged",
        "unchanged",
        not file_changed,
    )
    n0 = len(revs0) if isinstance(revs0, list) else None
    n1 = len(revs1) if isinstance(revs1, list) else None
    r.add(
        "revision list",
        f"{n0} before, {n1} after" if n1 is not None else f"{n0} before, unreadable after",
        "unchanged",
        n1 == n0,
    )
    r.add("refused change live", "yes" if live else "no", "no", live is False)
    r.add("control process afterwards", "running" if running else "exited")
    if out is not None:
        r.add(
            "disk freed, then `pacslb reload`",
            f"exit {out.returncode}; the refused change is live: "
            f"{'yes' if live_after_reload else 'no'}",
            "not live",
            live_after_reload is False,
        )
    r.add("events after the change", events_text(events))


def fill(path: Path) -> None:
    """Write until the file system is full (1 MiB, then 4 KiB pieces)."""
    with open(path, "wb", buffering=0) as f:
        for piece in (MB, 4096, 512):
            block = b"\0" * piece
            while True:
                try:
                    f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    # metadata: small files until no inode or block is left
    for i in range(1000):
        try:
            (path.parent / f"filler-{i}").write_bytes(b"x")
        except OSError:
            break


def unmount(mount: Path) -> None:
    out = subprocess.run(["umount", str(mount)], capture_output=True, text=True, timeout=30)
    if out.returncode:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def server_live(p: Pacslb, service: str, server: str) -> bool | None:
    try:
        for svc in p.status()["services"]:
            if svc["label"] == service:
                return any(rs["label"] == server for rs in svc["real_servers"])
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    return False


def split(ctx: Ctx, r: Result) -> None:
    """100 new clients one after another; which server answered each (nginx says its name)."""
    n = 100
    net = ctx.net
    cookie = http_service(net, "WebCookie", net.cookie_vip, ["B1", "B2"], {"type": "http-cookie"})
    ctx.pacslb(r.name, [web(net), cookie])
    for label, vip in (("no persistence", net.web_vip), ("cookie persistence", net.cookie_vip)):
        tally: Counter[str] = Counter()
        for _ in range(n):
            reply = http_get(vip, net.vip_port, timeout=5.0)
            tally[reply.body.strip().decode() if reply.outcome == "ok" else reply.outcome] += 1
        r.data[label] = dict(tally)
        b1, b2 = tally.get("B1", 0), tally.get("B2", 0)
        other = {k: v for k, v in tally.items() if k not in ("B1", "B2")}
        r.add(
            f"{n} new clients, default scheduler, {label}",
            f"B1 {b1} / B2 {b2}" + (f" ({other})" if other else ""),
            "50/50 ± 10",
            abs(b1 - b2) <= 20 and not other,
        )


@dataclass
class Scenario:
    name: str
    title: str
    run: Callable[[Ctx, Result], None]
    needs_workers_setting: bool = False


SCENARIOS = [
    Scenario(
        "sigkill-wrk",
        "worker SIGKILL under wrk (default workers)",
        lambda c, r: fault_under_wrk(c, r, signal.SIGKILL, None),
    ),
    Scenario(
        "sigkill-wrk-w1",
        "worker SIGKILL under wrk (workers: 1)",
        lambda c, r: fault_under_wrk(c, r, signal.SIGKILL, 1),
        True,
    ),
    Scenario("sigkill-cstore", "worker SIGKILL under a long C-STORE", sigkill_cstore),
    Scenario(
        "sigstop-wrk",
        "worker SIGSTOP under wrk (default workers)",
        lambda c, r: fault_under_wrk(c, r, signal.SIGSTOP, None),
    ),
    Scenario(
        "sigstop-wrk-w1",
        "worker SIGSTOP under wrk (workers: 1)",
        lambda c, r: fault_under_wrk(c, r, signal.SIGSTOP, 1),
        True,
    ),
    Scenario("flood", "5,000-connection flood on one VIP, a second VIP serving", flood),
    Scenario("big-body", "50 MB body to /api/v1/config/validate", big_body),
    Scenario("reloads", "20 reloads adding and removing a real server under wrk", reloads),
    Scenario("remove-cstore", "the real server of a C-STORE removed by a reload", remove_cstore),
    Scenario("full-disk", "an API change with the state disk full", full_disk),
    Scenario("split", "100 sequential new clients on two equal servers", split),
]


def run_scenario(ctx: Ctx, sc: Scenario) -> Result:
    r = Result(sc.name, sc.title)
    print(f"== {sc.name}: {sc.title}", file=sys.stderr)
    bound = ctx.args.bound or (150 if ctx.quick else 200)
    t0 = time.monotonic()

    def expire(signum: int, frame: object) -> None:
        raise ScenarioTimeout

    ctx.stack = contextlib.ExitStack()
    ctx.running = []
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, bound)
    try:
        sc.run(ctx, r)
    except ScenarioTimeout:
        r.error = f"cut after {bound:g} s (a hang: the figures above were measured before)"
        for p in ctx.running:
            p.hung = True  # its control process may not act on SIGTERM: stop it hard
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        r.error = f"{exc.__class__.__name__}: {str(exc).strip()[:600]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        ctx.stack.close()
    r.seconds = round(time.monotonic() - t0, 1)
    if r.error:
        print(f"    ERROR: {r.error}", file=sys.stderr)
    return r


# --- report ------------------------------------------------------------------------------------


def report(ctx: Ctx, results: list[Result], started: float, load_before: str) -> str:
    out = ["# pacslb faults", "", "```"]
    out.append(" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    out += ["```", ""]
    out.append(
        f"pacslb {measured(ctx.args)}; {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: "
        f"{os.cpu_count()} cores, load average before {load_before}, after "
        f"{os.getloadavg()[0]:.2f}; {time.monotonic() - started:.0f} s in all"
        f"{' (--quick)' if ctx.quick else ''}. Probes: a new connection and a GET every 20 ms, "
        f"1 s timeout; longest gap = the longest time without a probe answered 200. CPU: "
        f"seconds of CPU time (and % of one core) over the scenario."
    )
    out += ["", "| scenario | figure | value | goal |", "|---|---|---|---|"]
    for r in results:
        first = True
        for row in r.rows:
            goal = row.goal
            if row.goal and row.met is not None:
                goal += " (met)" if row.met else " (not met)"
            name = f"`{r.name}` ({r.seconds:.0f} s)" if first else ""
            first = False
            value = " ".join(row.value.split()).replace("|", "\\|")
            out.append(f"| {name} | {row.figure} | {value} | {goal} |")
        if r.error:
            name = f"`{r.name}` ({r.seconds:.0f} s)" if first else ""
            out.append(f"| {name} | **did not finish** | {r.error.replace(chr(10), ' ')[:300]} | |")
    return "\n".join(out) + "\n"


def measured(args: argparse.Namespace) -> str:
    return f"from {args.src}" if args.src else source_version()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="What one fault costs the service (see the module docstring)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter loads and holds")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--json", type=Path, default=Path("/tmp/pacslb-faults.json"))
    parser.add_argument("--net", default="127.10.7", help="a /24 of loopback (first 3 octets)")
    parser.add_argument("--port-base", type=int, default=18000, help="ports base+80 … base+443")
    parser.add_argument(
        "--bound", type=float, help="seconds a scenario may take before it is cut: 200 (150)"
    )
    parser.add_argument(
        "--src",
        type=Path,
        help="measure the pacslb in this src/ directory (default: this tree's), e.g. a "
        "checkout of the code before a change",
    )
    args = parser.parse_args(argv)
    names = {s.name for s in SCENARIOS}
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; --list shows them")
    if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}", args.net):
        parser.error("--net must be three octets of 127.0.0.0/8, e.g. 127.10.7")
    if not 1024 <= args.port_base <= 32768 - 500:
        parser.error("--port-base must leave base+443 below the ephemeral range (32768)")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.src:
        if not (args.src / "pacslb" / "cli.py").is_file():
            raise SystemExit(f"--src {args.src}: no pacslb/cli.py there")
        PACSLB_ENV["PYTHONPATH"] = str(args.src.resolve())
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:16} {s.title}")
        return 0
    for tool in ("nginx", "wrk", STORESCP, STORESCU):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flood holds 5,000 sockets
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    load_before = f"{os.getloadavg()[0]:.2f}"
    ctx = Ctx(args)
    results: list[Result] = []
    try:
        ctx.start_peers()
        for sc in SCENARIOS:
            if args.only and sc.name not in args.only:
                continue
            if sc.needs_workers_setting and not ctx.workers_setting:
                results.append(Result(sc.name, sc.title, error="no `node.proxy.workers` here"))
                continue
            results.append(run_scenario(ctx, sc))
            time.sleep(1.0)  # TIME_WAIT and the workers' exit settle
        print(report(ctx, results, started, load_before), flush=True)
        data = {
            "command": [sys.executable, *sys.argv],
            "pacslb": measured(args),
            "date": now_iso(),
            "host": platform.node(),
            "cores": os.cpu_count(),
            "load_before": load_before,
            "quick": args.quick,
            "scenarios": [
                {
                    "name": r.name,
                    "title": r.title,
                    "seconds": r.seconds,
                    "error": r.error,
                    "rows": [vars(row) for row in r.rows],
                    "data": r.data,
                }
                for r in results
            ],
        }
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
        print(f"figures written to {args.json}", file=sys.stderr)
        return 0
    except RuntimeError as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctx.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
