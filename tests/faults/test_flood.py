"""Issue 14 item 6: one flooded VIP must not take down the others.

A real `pacslb proxy` worker (its own process, started here with a chosen descriptor limit)
serves two VIPs in 127.10.4.0/24 through real backends (a peer process of this module). VIP A
gets a flood of idle connections, held open; meanwhile VIP B serves a bounded loop of new
connections, each one exchange, and none may fail. Every wait is bounded; every process is
stopped by PID.

    python -m tests.faults.test_flood peer HOST   # the backends: prints "hold echo http" ports
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import resource
import select
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PEER_HOST = "127.10.4.1"
VIP_A = "127.10.4.10"  # flooded
VIP_B = "127.10.4.20"  # must go on serving
HTTP_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- the backends (run as `python -m tests.faults.test_flood peer HOST`) --------------------
# One process, one epoll: a "hold" port that keeps every connection open and reads whatever
# comes, an "echo" port and a minimal keep-alive "http" port. Thousands of connections cost
# no thread each.


def peer_main(host: str) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    ports = []
    for kind in ("hold", "echo", "http"):
        srv = socket.create_server((host, 0), backlog=4096)
        srv.setblocking(False)
        sel.register(srv, selectors.EVENT_READ, ("listen", kind))
        ports.append(str(srv.getsockname()[1]))
    print(" ".join(ports), flush=True)
    buffers: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            role, kind = key.data
            if role == "listen":
                for _ in range(256):
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError:  # out of descriptors: the next round takes them
                        break
                    conn.setblocking(False)
                    buffers[conn] = b""
                    sel.register(conn, selectors.EVENT_READ, ("conn", kind))
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                buffers.pop(sock, None)
                sock.close()
                continue
            with contextlib.suppress(OSError):  # small answers: the send buffer takes them
                if kind == "echo":
                    sock.send(data)
                elif kind == "http":
                    buf = buffers[sock] + data
                    while b"\r\n\r\n" in buf:
                        _, _, buf = buf.partition(b"\r\n\r\n")
                        sock.send(HTTP_ANSWER)
                    buffers[sock] = buf


if __name__ == "__main__" and sys.argv[1:2] == ["peer"]:
    peer_main(sys.argv[2])
    raise SystemExit(0)

import pytest  # noqa: E402

from pacslb.core.plan import build_plan  # noqa: E402
from pacslb.core.validate import load_data  # noqa: E402
from tests.peers.procs import ROOT, free_port, stop, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(90)

FLOOD = 5000


def _nofile() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _need_descriptors(count: int) -> None:
    """This process opens `count` sockets at once: raise its soft limit (and, as root, the hard
    one), or skip where that is not allowed."""
    soft, hard = _nofile()
    if soft >= count:
        return
    if hard < count:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))
        except (ValueError, OSError):
            pytest.skip(f"needs {count} descriptors; the hard limit is {hard}")
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


@contextlib.contextmanager
def backends() -> Iterator[dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.test_flood", "peer", PEER_HOST],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        words = (proc.stdout.readline() if ready else b"").split()
        if len(words) != 3:
            raise RuntimeError(f"peer did not start (exit code {proc.poll()})")
        yield dict(zip(("hold", "echo", "http"), map(int, words), strict=True))
    finally:
        stop(proc)
        proc.stdout.close()


class Worker:
    """A `pacslb proxy` process with the descriptor limit (soft, hard) it is started with."""

    def __init__(self, tmp: Path, nofile: tuple[int, int]) -> None:
        self.path = tmp / "proxy-0.sock"
        self.log = tmp / "proxy-0.log"

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pacslb.cli", "proxy", "--socket", str(self.path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=limit,
                cwd=ROOT,
            )
        wait_until(self._answers, 20, "the proxy worker's control socket", step=0.05)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"proxy worker exited: {self.log.read_text()[-2000:]}")
        try:
            self.call({"cmd": "ping"})
        except OSError:
            return False
        return True

    def call(self, payload: dict[str, Any]) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.path))
            sock.sendall(json.dumps(payload).encode() + b"\n")
            answer = json.loads(sock.makefile("rb").readline())
        assert answer.get("ok"), answer
        return answer.get("result")

    def apply(self, services: list[dict[str, Any]]) -> None:
        config = load_data({"version": 1, "virtual_services": services})
        self.call({"cmd": "apply", "plan": json.loads(build_plan(config).to_json())})

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def soft_limit(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no 'Max open files' in /proc/PID/limits")

    def close(self) -> None:
        stop(self.proc, timeout=10)


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[tuple[int, int]], Worker]]:
    made: list[Worker] = []

    def make(nofile: tuple[int, int]) -> Worker:
        made.append(Worker(tmp_path, nofile))
        return made[-1]

    try:
        yield make
    finally:
        for w in made:
            w.close()


def service(label: str, vip: str, port: int, mode: str, backend: int) -> dict[str, Any]:
    return {
        "label": label,
        "vip": vip,
        "ports": [port],
        "mode": mode,
        "health_check": {"type": "none"},
        # flood connections stay for the whole test: no timeout may end them early
        "timeouts": {"http_request": 120, "idle": 120},
        "real_servers": [{"label": "Srv1", "address": PEER_HOST, "port": backend}],
    }


class Flood:
    """`count` connections to vip:port, opened without waiting (non-blocking) and held open
    without a byte sent; with `reconnect`, a connection the proxy resets is opened again at
    once (as modalities and browsers retry), on a thread, until `close()`: a flood that
    keeps pressing, bounded by `max_reconnects`."""

    def __init__(
        self, vip: str, port: int, count: int, reconnect: bool, max_reconnects: int = 200_000
    ) -> None:
        self.address = (vip, port)
        self.sel = selectors.DefaultSelector()
        self.reconnects = 0
        self.max_reconnects = max_reconnects
        self.stopping = threading.Event()
        self.opened = sum(self._open() for _ in range(count))
        self.thread: threading.Thread | None = None
        if reconnect:
            self.thread = threading.Thread(target=self._run, name="flood", daemon=True)
            self.thread.start()

    def _open(self) -> bool:
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()  # the machine is out of something: what is open is the flood
            return False
        self.sel.register(sock, selectors.EVENT_READ)
        return True

    def _run(self) -> None:
        while not self.stopping.is_set() and self.reconnects < self.max_reconnects:
            for key, _ in self.sel.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(4096):
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self.sel.unregister(sock)
                sock.close()
                self.reconnects += 1
                self._open()

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()


@contextlib.contextmanager
def flood(vip: str, port: int, count: int, reconnect: bool = False) -> Iterator[Flood]:
    f = Flood(vip, port, count, reconnect)
    try:
        yield f
    finally:
        f.close()


def settled(worker: Worker, timeout: float = 20.0) -> int:
    """Wait until the worker has taken what it will of a flood (its open descriptors stop
    changing for a second, bounded); returns how many it holds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = worker.descriptors()
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
        time.sleep(0.1)
    return last


def serve_loop(
    vip: str, port: int, request: bytes, expect: bytes, rounds: int, stop_after: int = 5
) -> int:
    """`rounds` new connections to vip:port, one exchange each; returns how many failed.
    Bounded: a failure costs at most 3 s and the loop stops after `stop_after` of them."""
    failures = 0
    for _ in range(rounds):
        try:
            with socket.create_connection((vip, port), timeout=3) as sock:
                sock.sendall(request)
                data = b""
                while not data.endswith(expect):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data.endswith(expect):
                    raise ConnectionError(f"answer {data[:60]!r}")
        except OSError:
            failures += 1
            if failures >= stop_after:
                break
    return failures


def budget_notices(worker: Worker, label: str) -> list[dict[str, Any]]:
    return [
        n
        for n in worker.call({"cmd": "notices"})
        if n.get("service") == label and "budget" in str(n.get("message"))
    ]


def test_a_flood_of_5000_on_one_vip_leaves_the_other_serving(
    worker_factory: Callable[[tuple[int, int]], Worker],
) -> None:
    """The issue's run: 5,000 connections to an l7-tcp VIP took the worker to 19,995 of its
    20,000 descriptors and a different service failed. Here the worker starts with a soft limit
    of 4,096 under a hard one of 20,000 (what a systemd unit without LimitNOFILE= gives, scaled
    down): it must raise the soft limit itself, and VIP A must hold no more than its share."""
    _need_descriptors(20000)  # the worker's hard limit below, and our 5,000 clients
    worker = worker_factory((4096, 20000))
    a_port, b_port = free_port(VIP_A), free_port(VIP_B)
    with backends() as peer:
        worker.apply(
            [
                service("Flooded", VIP_A, a_port, "l7-tcp", peer["hold"]),
                service("Dicom", VIP_B, b_port, "l7-tcp", peer["echo"]),
            ]
        )
        request = b"ping\n"
        assert serve_loop(VIP_B, b_port, request, request, 3) == 0  # serves before the flood
        with flood(VIP_A, a_port, FLOOD, reconnect=True) as f:
            assert f.opened == FLOOD
            # B's loop begins while the worker is still taking the flood in: the moment the
            # issue's DICOM VIP failed
            failures = serve_loop(VIP_B, b_port, request, request, 100)
            held = settled(worker)
            notices = budget_notices(worker, "Flooded")
    print(
        f"VIP B failures: {failures} of 100; worker descriptors under the flood: {held}; "
        f"flood connections reset and reopened: {f.reconnects}"
    )
    assert failures == 0, f"VIP B failed {failures} times with the worker at {held} descriptors"
    assert worker.soft_limit() == 20000, "the worker must raise its soft limit to the hard one"
    assert notices, "no notice that the flooded service is at its connection budget"


def test_a_worker_with_256_descriptors_still_serves_the_other_vip(
    worker_factory: Callable[[tuple[int, int]], Worker],
) -> None:
    """`ulimit -n 256`: before, 38 connections in all, then resets on every VIP and nothing
    but a log line. Now the flooded l7-http VIP stops at its budget, says so, and the l7-tcp
    VIP beside it goes on serving. (The low limit itself is the control process's warning at
    start: test_pacslb_run_warns_at_start_when_the_descriptor_limit_is_low.)"""
    _need_descriptors(2000)
    worker = worker_factory((256, 256))
    a_port, b_port = free_port(VIP_A), free_port(VIP_B)
    with backends() as peer:
        worker.apply(
            [
                service("Flooded", VIP_A, a_port, "l7-http", peer["http"]),
                service("Dicom", VIP_B, b_port, "l7-tcp", peer["echo"]),
            ]
        )
        # Said once, by the control process; the worker repeats nothing (it would say it
        # again per worker and per Plan).
        start_notices = worker.call({"cmd": "notices"})
        assert not any("RLIMIT_NOFILE" in str(n["message"]) for n in start_notices)
        with flood(VIP_A, a_port, 1000) as f:
            assert f.opened == 1000
            held = settled(worker)
            failures = serve_loop(VIP_B, b_port, b"ping\n", b"ping\n", 50)
            print(f"VIP B failures: {failures} of 50; worker descriptors under the flood: {held}")
            assert failures == 0, f"VIP B failed {failures} times, the worker at {held} fds"
            notices = budget_notices(worker, "Flooded")
    assert notices, "no notice that the flooded service is at its connection budget"


def _exchange(vip: str, port: int, mode: str, context: ssl.SSLContext | None) -> socket.socket:
    """A client that has had one exchange (so the proxy has surely accepted it): its socket."""
    sock = socket.create_connection((vip, port), timeout=20)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="a.test")
    request, expect = (
        (b"ping\n", b"ping\n")
        if mode == "l7-tcp"
        else (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"ok")
    )
    sock.sendall(request)
    data = b""
    while not data.endswith(expect):
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return sock


@pytest.mark.parametrize("kind", ["l7-tcp", "l7-http", "l7-http+tls"])
def test_a_listener_at_its_budget_waits_and_resumes_when_a_connection_closes(
    worker_factory: Callable[[tuple[int, int]], Worker], tmp_path: Path, kind: str
) -> None:
    """`max_connections: 3`: a fourth client waits in the kernel's queue (a notice says the
    service is at its budget) and is served as soon as one of the three closes."""
    from pacslb.core.certs import self_signed

    mode, _, tls = kind.partition("+")
    worker = worker_factory(_nofile())
    port = free_port(VIP_A)
    with backends() as peer:
        svc = service("Budget", VIP_A, port, mode, peer["echo" if mode == "l7-tcp" else "http"])
        svc["max_connections"] = 3
        context = None
        if tls:
            cert, key = self_signed("a.test", datetime.datetime.now(datetime.UTC), ["a.test"])
            (tmp_path / "a.crt").write_bytes(cert)
            (tmp_path / "a.key").write_bytes(key)
            svc["tls"] = {
                "certificates": [
                    {"certificate": str(tmp_path / "a.crt"), "key": str(tmp_path / "a.key")}
                ]
            }
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        worker.apply([svc])
        held = [_exchange(VIP_A, port, mode, context) for _ in range(3)]
        fourth: dict[str, Any] = {}

        def client() -> None:
            try:
                fourth["sock"] = _exchange(VIP_A, port, mode, context)
            except OSError as exc:
                fourth["error"] = exc

        thread = threading.Thread(target=client, daemon=True)
        try:
            thread.start()
            wait_until(lambda: budget_notices(worker, "Budget") != [], 10, "a budget notice")
            assert not fourth, "the fourth client was served beyond the budget"
            held.pop().close()
            thread.join(20)
            assert "sock" in fourth, f"the fourth client was not served: {fourth}"
        finally:
            for sock in [*held, fourth.get("sock")]:
                if sock is not None:
                    sock.close()


def test_pacslb_run_warns_at_start_when_the_descriptor_limit_is_low(tmp_path: Path) -> None:
    """`ulimit -n 256` before `pacslb run` gave no warning at all: now the start is an event
    that names the limit, the budgets it leaves and what to set."""
    state = tmp_path / "state"
    config = tmp_path / "pacslb.yaml"
    config.write_text(
        f"""version: 1
node: {{webui: {{enabled: false}}}}
virtual_services:
  - label: Dicom
    vip: {VIP_A}
    ports: [{free_port(VIP_A)}]
    mode: l7-tcp
    health_check: {{type: none}}
    real_servers:
      - {{label: Srv1, address: {PEER_HOST}, port: 9}}
"""
    )
    events = state / "events.jsonl"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(tmp_path / "run.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
            cwd=ROOT,
        )
    try:
        wait_until(
            lambda: events.exists() and "applying revision" in events.read_text(),
            20,
            "pacslb run to start",
            step=0.05,
        )
    finally:
        stop(proc, timeout=15)
    messages = [json.loads(line)["message"] for line in events.read_text().splitlines()]
    warning = next((m for m in messages if "LimitNOFILE=" in m), None)
    assert warning is not None, messages
    assert "256" in warning and "Dicom" in warning
