"""The l7-tcp data plane (pacslb.proxy.tcp) against real peers on loopback.

The proxy runs in this process on a background thread with its own uvloop event loop (as in
the proxy process); peers are subprocesses: dcmtk storescp/storescu for DICOM, and this module
run as `python -m tests.integration.test_tcp_proxy echo|sink ...` for echo and sink servers.
Every wait is bounded; every process is stopped by PID.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk 3.6.7 leaves Nagle on otherwise (research/dicom.md)
PEER_HOST = "127.0.0.1"


# --- peers (run as `python -m tests.integration.test_tcp_proxy MODE HOST PORT [NAME]`) ----
# A peer binds (port 0: any free one) and prints its port: no race for a port chosen earlier.


def _peer_echo(conn: socket.socket, name: str) -> None:
    """Say our name, then echo until EOF."""
    with conn:
        conn.sendall(name.encode() + b"\n")
        while data := conn.recv(65536):
            conn.sendall(data)


def _peer_sink(conn: socket.socket, name: str) -> None:
    """Read to EOF, then answer '<bytes> <sha256>' (the reply comes after the half-close)."""
    with conn:
        digest = hashlib.sha256()
        count = 0
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while k := conn.recv_into(buf):
            digest.update(view[:k])
            count += k
        conn.sendall(f"{count} {digest.hexdigest()}\n".encode())


def peer_main(argv: list[str]) -> None:
    mode, host, port = argv[0], argv[1], int(argv[2])
    name = argv[3] if len(argv) > 3 else mode
    handler = {"echo": _peer_echo, "sink": _peer_sink}[mode]
    srv = socket.create_server((host, port), backlog=256)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handler, args=(conn, name), daemon=True).start()


# A peer starts before the imports below: pydantic and pytest would add ~0.5 s to each one.
if __name__ == "__main__":
    peer_main(sys.argv[1:])
    raise SystemExit(0)

import pytest  # noqa: E402
import uvloop  # noqa: E402
from bench.dicom_files import ct_file, new_uid  # noqa: E402
from tests.peers.procs import ROOT, free_port, running, stop  # noqa: E402
from tests.peers.procs import wait_until as wait_for  # noqa: E402

from pacslb.core.plan import build_plan  # noqa: E402
from pacslb.core.state import AdminState  # noqa: E402
from pacslb.core.validate import load_data  # noqa: E402
from pacslb.proxy.runtime import FALLBACK, ServiceRuntime  # noqa: E402
from pacslb.proxy.tcp import HAVE_SPLICE, TcpListener  # noqa: E402

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def peer(mode: str, name: str = "", host: str = PEER_HOST, port: int = 0) -> Iterator[int]:
    """An echo or sink server in a subprocess; yields the port it listens on."""
    argv = [sys.executable, "-m", "tests.integration.test_tcp_proxy", mode, host, str(port)]
    proc = subprocess.Popen(
        [*argv, name or mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise RuntimeError(f"peer {mode} did not start (exit code {proc.poll()})")
        yield int(line)
    finally:
        stop(proc)
        proc.stdout.close()


@contextlib.contextmanager
def storescp(rx: Path) -> Iterator[int]:
    """dcmtk storescp (one process, files written bit-preserving); yields its port. It
    cannot bind port 0, so a port taken between free_port() and its bind means another try."""
    for attempt in range(3):
        port = free_port()
        argv = [STORESCP, "-aet", "PACS1", "+B", "-od", str(rx), str(port)]
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(running(argv, PEER_HOST, port, env=DCMTK_ENV))
            except RuntimeError:  # it exited before listening: the port was taken
                if attempt == 2:
                    raise
                continue
            yield port
            return


# --- the proxy's event loop on a thread ------------------------------------------------------


class ProxyLoop:
    """A uvloop event loop on a daemon thread; `call()` runs a function on it and waits."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="proxy-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.loop.run_forever()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def proxy_loop() -> Iterator[ProxyLoop]:
    loop = ProxyLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port that refuses connections: bound, so that no other process takes it while the
    test runs (free_port() would race with them), but not listening."""
    with socket.socket() as sock:
        sock.bind((PEER_HOST, 0))
        yield sock.getsockname()[1]


class Vip:
    """One l7-tcp virtual service on one port, served by a TcpListener on the proxy loop."""

    def __init__(
        self,
        loop: ProxyLoop,
        vip: str,
        real_servers: list[dict[str, Any]],
        port: int | None = None,
        splice: bool | None = None,
        **settings: Any,
    ) -> None:
        self.loop = loop
        self.vip = vip
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((vip, port or 0))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self.label = "T"
        self.data = {
            "version": 1,
            "virtual_services": [
                {
                    "label": self.label,
                    "vip": vip,
                    "ports": [self.port],
                    "mode": "l7-tcp",
                    "health_check": {"type": "none"},
                    "real_servers": real_servers,
                    **settings,
                }
            ],
        }
        self.config = load_data(self.data)
        self.runtime = ServiceRuntime(build_plan(self.config).services[0])

        def start() -> TcpListener:
            listener = TcpListener(sock, self.runtime, self.port, splice=splice)
            listener.start()
            return listener

        self.listener = loop.call(start)

    def set_admin(self, **states: str) -> None:
        admin = {(self.label, rs): AdminState(state) for rs, state in states.items()}
        service = build_plan(self.config, admin=admin).services[0]
        self.loop.call(self.runtime.update, service)

    def stats(self, label: str) -> dict[str, Any]:
        return self.loop.call(lambda: self.runtime.stats[label].as_dict())

    def open_connections(self) -> int:
        return self.loop.call(lambda: len(self.listener.connections))

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Until the proxy holds no connection (bounded)."""
        wait_for(lambda: self.open_connections() == 0, timeout, "connections to end")

    def close(self) -> None:
        self.loop.call(self.listener.close)
        self.loop.call(self.listener.abort_all)


@contextlib.contextmanager
def serving(loop: ProxyLoop, vip: str, servers: list[dict[str, Any]], **kw: Any) -> Iterator[Vip]:
    v = Vip(loop, vip, servers, **kw)
    try:
        yield v
    finally:
        v.close()


# --- clients -------------------------------------------------------------------------------


def connect(vip: Vip, source: str | None = None) -> socket.socket:
    sock = socket.create_connection(
        (vip.vip, vip.port), timeout=5, source_address=(source, 0) if source else None
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def hello(sock: socket.socket) -> str:
    """The echo peer's name, then one echo round trip."""
    name = read_line(sock).decode().strip()
    assert name, "the connection closed before the server spoke"
    sock.sendall(b"ping")
    got = b""
    while len(got) < 4:
        chunk = sock.recv(4 - len(got))
        assert chunk, "the connection closed during an echo"
        got += chunk
    assert got == b"ping"
    return name


def talk(vip: Vip, source: str | None = None) -> str:
    with connect(vip, source) as sock:
        return hello(sock)


def closed_by_peer(sock: socket.socket, timeout: float = 3.0) -> bool:
    """Whether the proxy closed (FIN or RST) this connection within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def still_open(sock: socket.socket) -> bool:
    """Whether the connection is up and has nothing to read (checked without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # b"": the proxy closed it
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(5)


def refused_or_closed(vip: Vip, source: str | None = None) -> bool:
    """A connection the proxy could not place: closed without a byte (the reset may even
    beat the end of our connect())."""
    try:
        with connect(vip, source) as sock:
            sock.settimeout(3)
            return sock.recv(4096) == b""
    except (ConnectionResetError, ConnectionRefusedError):
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- synthetic CT files: the bench's Part-10 writer (PS3.10 §7.1, explicit VR little endian) ---


def dicom_ct(
    uid: str, patient: str, study: str, series: str, number: int, pixels: bytes, size: int = 64
) -> bytes:
    """A size×size 16-bit CT image: preamble, 'DICM', meta group 0002, then the data set."""
    return ct_file(uid, study, series, number, pixels, size, patient)


def dataset_part(data: bytes) -> bytes:
    """The bytes after the file meta information (its length is in (0002,0000))."""
    assert data[128:132] == b"DICM"
    group, elem, vr, _ = struct.unpack_from("<HH2sH", data, 132)
    assert (group, elem, vr) == (2, 0, b"UL")
    meta_length = struct.unpack_from("<I", data, 140)[0]
    return data[144 + meta_length :]


# --- tests -----------------------------------------------------------------------------------


def server(label: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"label": label, "address": PEER_HOST, "port": port, **kw}


def test_dicom_c_store_through_the_proxy(proxy_loop: ProxyLoop, tmp_path: Path) -> None:
    src, rx = tmp_path / "src", tmp_path / "rx"
    src.mkdir()
    rx.mkdir()
    study, series = new_uid(), new_uid()
    sent: dict[str, bytes] = {}
    for i in range(20):
        uid = new_uid()
        data = dicom_ct(uid, "PACSLB-TEST-1", study, series, i + 1, os.urandom(64 * 64 * 2))
        (src / f"img{i:02}.dcm").write_bytes(data)
        sent[uid] = dataset_part(data)
    dump = subprocess.run(
        ["/usr/bin/dcmdump", str(src / "img00.dcm")], capture_output=True, text=True, check=True
    )
    assert "CTImageStorage" in dump.stdout and "(7fe0,0010) OW" in dump.stdout

    with (
        storescp(rx) as scp_port,
        serving(proxy_loop, "127.0.0.31", [server("pacs1", scp_port)]) as vip,
    ):
        files = sorted(str(p) for p in src.iterdir())
        result = subprocess.run(
            [STORESCU, "-aet", "MODALITY", "-aec", "ANY", vip.vip, str(vip.port), *files],
            env={**os.environ, **DCMTK_ENV},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        vip.wait_idle()
        stats = vip.stats("pacs1")
    # storescp names each file <modality>.<SOP instance UID> and wrote what it received.
    received = {p.name.split(".", 1)[1]: dataset_part(p.read_bytes()) for p in rx.iterdir()}
    assert received.keys() == sent.keys()
    for uid, data in sent.items():
        assert received[uid] == data, f"{uid}: data set differs"
    assert stats["total"] == 1 and stats["active"] == 0
    assert stats["bytes_in"] > 20 * 64 * 64 * 2 and stats["bytes_out"] > 0


def _blocks() -> list[bytes]:
    # Odd sizes, so chunk edges never line up with the pipe or the socket buffers.
    return [os.urandom((1 << 20) + 4099 * i) for i in range(1, 9)]


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
def test_bulk_transfer_and_counters(proxy_loop: ProxyLoop, splice: bool) -> None:
    if splice and not HAVE_SPLICE:
        pytest.skip("os.splice needs Linux")
    total = 200 << 20
    blocks = _blocks()
    with (
        peer("sink") as port,
        serving(proxy_loop, "127.0.0.32", [server("sink", port)], splice=splice) as vip,
    ):
        digest = hashlib.sha256()
        with connect(vip) as sock:
            sock.settimeout(20)
            left, i = total, 0
            while left:
                block = blocks[i % len(blocks)][:left]
                sock.sendall(block)
                digest.update(block)
                left -= len(block)
                i += 1
            sock.shutdown(socket.SHUT_WR)
            reply = read_line(sock)
            assert sock.recv(1) == b""  # the server's close reaches us after its reply
        assert reply.decode().split() == [str(total), digest.hexdigest()]
        vip.wait_idle()
        stats = vip.stats("sink")
    assert stats["bytes_in"] == total
    assert stats["bytes_out"] == len(reply)
    assert (stats["total"], stats["active"]) == (1, 0)


def test_half_close_reply_after_eof(proxy_loop: ProxyLoop) -> None:
    payload = b"C-STORE?" * 5000
    with (
        peer("sink") as port,
        serving(proxy_loop, "127.0.0.33", [server("sink", port)]) as vip,
    ):
        for _ in range(3):
            with connect(vip) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)  # our EOF reaches the server as its EOF
                reply = read_line(sock)
                assert sock.recv(1) == b""
            assert reply == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
        vip.wait_idle()


def test_refused_and_timed_out_servers_are_retried(proxy_loop: ProxyLoop, dead_port: int) -> None:
    # A server whose accept queue is full drops SYNs: the connect times out.
    full = socket.socket()
    full.bind((PEER_HOST, 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        fillers.append(f)
    try:
        with peer("echo", "live") as port:
            servers = [
                server("dead", dead_port),
                server("full", full.getsockname()[1]),
                server("live", port),
            ]
            settings = {"scheduler": "rr", "timeouts": {"connect": 0.1}}
            with serving(proxy_loop, "127.0.0.34", servers, **settings) as vip:
                names = [talk(vip) for _ in range(20)]
                vip.wait_idle()
                assert names == ["live"] * 20
                dead, timed_out, live = (vip.stats(s["label"]) for s in servers)
    finally:
        for f in fillers:
            f.close()
        full.close()
    assert dead["connect_failures"] >= 1
    assert timed_out["connect_failures"] >= 1  # timed out, then retried
    assert live["total"] == 20 and live["connect_failures"] == 0
    assert dead["active"] == timed_out["active"] == live["active"] == 0


def test_fallback_when_no_real_server(proxy_loop: ProxyLoop, dead_port: int) -> None:
    vip_addr = "127.0.0.35"
    # The fallback sets no port: it is reached on the port the client connected to.
    with peer("echo", "sorry", host="127.0.0.41") as port, peer("echo", "s0") as s0_port:
        servers = [server("s0", s0_port), server("s1", dead_port)]
        fallback = {"address": "127.0.0.41"}
        with serving(proxy_loop, vip_addr, servers, port=port, fallback=fallback) as vip:
            assert talk(vip) == "s0"
            assert talk(vip) == "s0"
            vip.set_admin(s0="halt")  # s1 refuses, s0 is halted: the fallback answers
            assert [talk(vip) for _ in range(5)] == ["sorry"] * 5
            vip.set_admin(s0="halt", s1="halt")  # nothing to pick at all
            assert talk(vip) == "sorry"
            vip.wait_idle()
            used = vip.stats(FALLBACK)
            s1 = vip.stats("s1")
    assert used["total"] == 6 and used["active"] == 0
    assert s1["connect_failures"] >= 5

    # No fallback and nothing that answers: the client is closed without a byte.
    with serving(proxy_loop, vip_addr, [server("s1", dead_port)]) as bare:
        assert refused_or_closed(bare)
        bare.wait_idle()


def test_halt_cuts_connections_drain_keeps_them(proxy_loop: ProxyLoop) -> None:
    with peer("echo", "a") as a_port, peer("echo", "b") as b_port:
        servers = [server("a", a_port), server("b", b_port)]
        with serving(proxy_loop, "127.0.0.36", servers) as vip:
            first, second = connect(vip), connect(vip)
            with first, second:
                assert hello(first) == "a" and hello(second) == "b"
                vip.set_admin(a="drain")
                assert [talk(vip) for _ in range(4)] == ["b"] * 4  # new ones avoid drained a
                for _ in range(3):
                    first.sendall(b"ping")  # a's connection keeps working
                    assert first.recv(4) == b"ping"
                t0 = time.monotonic()
                vip.set_admin(a="drain", b="halt")
                assert closed_by_peer(second, 2.0)
                assert time.monotonic() - t0 < 1.0  # at once, not by a timeout
                first.sendall(b"ping")
                assert first.recv(4) == b"ping"
                vip.set_admin(a="halt", b="halt")
                assert closed_by_peer(first, 2.0)
            vip.wait_idle()
            a, b = vip.stats("a"), vip.stats("b")
    assert a["active"] == b["active"] == 0
    assert (a["total"], b["total"]) == (1, 5)


def test_source_ip_persistence(proxy_loop: ProxyLoop) -> None:
    sticky_ip = {"type": "source-ip", "timeout": 60}
    with peer("echo", "a") as a_port, peer("echo", "b") as b_port:
        servers = [server("a", a_port), server("b", b_port)]
        with (
            serving(proxy_loop, "127.0.0.37", servers, scheduler="rr") as plain,
            serving(
                proxy_loop, "127.0.0.38", servers, scheduler="rr", persistence=sticky_ip
            ) as sticky,
        ):
            assert {talk(plain) for _ in range(4)} == {"a", "b"}  # rr alone alternates
            one = [talk(sticky, "127.0.0.2") for _ in range(10)]
            other = [talk(sticky, "127.0.0.3") for _ in range(10)]
            assert len(set(one)) == 1 and len(set(other)) == 1
            assert one[0] != other[0]  # the second client was scheduled, and then stuck too
            sticky.wait_idle()
            plain.wait_idle()


def test_idle_timeout(proxy_loop: ProxyLoop) -> None:
    with (
        peer("echo", "a") as port,
        serving(proxy_loop, "127.0.0.39", [server("a", port)], timeouts={"idle": 0.5}) as vip,
    ):
        quiet, busy = connect(vip), connect(vip)
        with quiet, busy:
            hello(quiet)
            hello(busy)
            # The busy one moves a byte every 0.1 s for 1.2 s and outlives the quiet one,
            # which lasts at least the idle timeout.
            for step in range(12):
                time.sleep(0.1)
                if step < 3:
                    assert still_open(quiet), f"closed after {step + 1} × 0.1 s"
                busy.sendall(b"ping")
                assert busy.recv(4) == b"ping"
            assert not still_open(quiet)
            t0 = time.monotonic()
            assert closed_by_peer(busy, 3.0)  # and goes once it is quiet
            assert 0.4 < time.monotonic() - t0 < 2.0
        vip.wait_idle()


def test_max_connections(proxy_loop: ProxyLoop) -> None:
    with (
        peer("echo", "a") as port,
        serving(proxy_loop, "127.0.0.40", [server("a", port, max_connections=2)]) as vip,
    ):
        c1, c2 = connect(vip), connect(vip)
        with c1, c2:
            assert hello(c1) == hello(c2) == "a"
            assert refused_or_closed(vip)  # a third is not placed
            assert vip.stats("a")["active"] == 2
        vip.wait_idle()
        assert talk(vip) == "a"  # below the limit again
        vip.wait_idle()


def test_no_fd_leak(proxy_loop: ProxyLoop, dead_port: int) -> None:
    with peer("echo", "live") as port:
        servers = [server("dead", dead_port), server("live", port)]
        before = open_fds()
        vip = Vip(proxy_loop, "127.0.0.42", servers, scheduler="rr")
        try:
            for i in range(150):
                with connect(vip) as sock:
                    if i % 3 == 0:
                        hello(sock)
                    elif i % 3 == 1:  # the client resets at once
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    else:  # the client half-closes and leaves
                        sock.shutdown(socket.SHUT_WR)
            batch = [connect(vip) for _ in range(50)]
            for sock in batch:
                hello(sock)
            vip.set_admin(live="halt")  # aborts the 50 at once
            for sock in batch:
                assert closed_by_peer(sock, 2.0)
                sock.close()
            vip.wait_idle()
            stats = vip.stats("live")
        finally:
            vip.close()
        assert stats["total"] == 200 and stats["active"] == 0
        wait_for(lambda: open_fds() == before, 3.0, "the fd count to return")


def test_closed_listener_lets_connections_finish(proxy_loop: ProxyLoop) -> None:
    with peer("echo", "a") as port:
        vip = Vip(proxy_loop, "127.0.0.43", [server("a", port)])
        try:
            with connect(vip) as sock:
                assert hello(sock) == "a"
                proxy_loop.call(vip.listener.close)
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((vip.vip, vip.port), timeout=2).close()
                sock.sendall(b"ping")
                assert sock.recv(4) == b"ping"
            vip.wait_idle()
        finally:
            vip.close()


def test_runtime_swap_applies_to_new_connections(proxy_loop: ProxyLoop) -> None:
    with (
        peer("echo", "a") as a_port,
        peer("echo", "b") as b_port,
        serving(proxy_loop, "127.0.0.44", [server("a", a_port)]) as vip,
    ):
        held = connect(vip)
        with held:
            assert hello(held) == "a"
            other = Vip(proxy_loop, "127.0.0.45", [server("b", b_port)])
            other.close()
            proxy_loop.call(setattr, vip.listener, "runtime", other.runtime)
            assert talk(vip) == "b"
            held.sendall(b"ping")
            assert held.recv(4) == b"ping"
        vip.wait_idle()
        assert vip.runtime.stats["a"].active == 0


def test_a_failing_connection_leaves_the_others_alone(proxy_loop: ProxyLoop) -> None:
    with (
        peer("echo", "a") as port,
        serving(proxy_loop, "127.0.0.46", [server("a", port)]) as vip,
    ):
        held = connect(vip)
        with held:
            assert hello(held) == "a"
            real_pick = vip.runtime.pick

            def pick(client_ip: str, *args: Any, **kw: Any) -> Any:
                if client_ip == "127.0.0.9":
                    raise RuntimeError("a bug in the decision for this client")
                return real_pick(client_ip, *args, **kw)

            proxy_loop.call(setattr, vip.runtime, "pick", pick)
            for _ in range(3):
                assert refused_or_closed(vip, "127.0.0.9")
            assert talk(vip) == "a"
            held.sendall(b"ping")
            assert held.recv(4) == b"ping"
        vip.wait_idle()
        assert vip.stats("a")["active"] == 0
