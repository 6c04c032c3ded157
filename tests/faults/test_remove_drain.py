"""Removing a real server drains it first (issue 14, item 5).

Real processes: `pacslb run` with an l7-tcp VIP in front of two echo servers (subprocesses
that say their name, then echo). A connection held open to Srv2 goes on exchanging data after
Srv2 is deleted through the REST API, and completes intact, while new connections go to Srv1;
then Srv2 is gone. Bursts of add/remove reloads under a bounded client loop cost no client an
error."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from bench.dicom_files import ct_file, new_uid

from tests.faults.control_run import Pacslb
from tests.peers.procs import ROOT, free_port, running, stop, wait_until

pytestmark = pytest.mark.timeout(120)

WEB_HOST = "127.10.3.1"
VIP = "127.10.3.11"
RIPS = {"Srv1": "127.10.3.2", "Srv2": "127.10.3.3"}


@contextlib.contextmanager
def echo_peer(name: str) -> Iterator[int]:
    """tests/integration/test_tcp_proxy's echo peer in a subprocess; yields its port."""
    argv = [sys.executable, "-m", "tests.integration.test_tcp_proxy", "echo", RIPS[name], "0"]
    proc = subprocess.Popen(
        [*argv, name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else b""
        assert line.strip().isdigit(), f"echo peer {name} did not start"
        yield int(line)
    finally:
        stop(proc)
        proc.stdout.close()


def server_line(name: str, port: int) -> str:
    return f"      - {{label: {name}, address: {RIPS[name]}, port: {port}}}\n"


def config_text(web: int, vip_port: int, servers: str, extra: str = "") -> str:
    return f"""version: 1
node:
  webui: {{listen: "{WEB_HOST}:{web}"}}
virtual_services:
  - label: Dicom
    vip: {VIP}
    ports: [{vip_port}]
    mode: l7-tcp
    health_check: {{type: none}}
{extra}    real_servers:
{servers}"""


class Stream:
    """A client connection through the VIP: the server's name, then echo rounds."""

    def __init__(self, vip_port: int) -> None:
        self.sock = socket.create_connection((VIP, vip_port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = b""
        while not name.endswith(b"\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed before the server said its name")
            name += chunk
        self.server = name.decode().strip()
        self.sent = 0

    def round(self, size: int = 64 * 1024) -> None:
        """Send `size` bytes that number themselves; the echo must be the same bytes."""
        data = bytes((self.sent + i) % 251 for i in range(size))
        self.sent += size
        self.sock.sendall(data)
        got = bytearray()
        while len(got) < size:
            chunk = self.sock.recv(size - len(got))
            if not chunk:
                raise ConnectionError(f"closed after {len(got)} of {size} echoed bytes")
            got += chunk
        if bytes(got) != data:
            raise ConnectionError("the echo differs from what was sent")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Pacslb, int, dict[str, int], Path]]:
    with ExitStack() as stack:
        ports = {name: stack.enter_context(echo_peer(name)) for name in RIPS}
        web, vip_port = free_port(WEB_HOST), free_port(VIP)
        config = tmp_path / "pacslb.yaml"
        servers = "".join(server_line(n, p) for n, p in ports.items())
        config.write_text(config_text(web, vip_port, servers))
        run = Pacslb(config, tmp_path / "state", (WEB_HOST, web), tmp_path / "run.log")
        run.start(stack)
        wait_until(lambda: _answers(vip_port), 10, "the VIP to answer")
        yield run, vip_port, ports, config


def _answers(port: int) -> bool:
    try:
        Stream(port).close()
    except OSError:
        return False
    return True


def servers(run: Pacslb) -> dict[str, dict[str, Any]]:
    (svc,) = run.cli_status()["services"]
    return {rs["label"]: rs for rs in svc["real_servers"]}


def active(run: Pacslb, label: str) -> int:
    count = servers(run).get(label, {}).get("connections") or {}
    return int(count.get("active", 0))


def test_a_removed_server_keeps_its_connection_until_it_ends(
    setup: tuple[Pacslb, int, dict[str, int], Path],
) -> None:
    run, vip_port, ports, _ = setup
    held: list[Stream] = []
    for _ in range(10):  # bounded: the scheduler spreads them, so Srv2 gets one soon
        held.append(Stream(vip_port))
        if held[-1].server == "Srv2":
            break
    long = held.pop()
    assert long.server == "Srv2"
    for other in held:
        other.close()
    long.round()
    # The event says how many connections drain as the engines last counted them (each second).
    wait_until(lambda: active(run, "Srv2") == 1, 10, "the engine to count the connection")

    r = run.api("DELETE", "/virtual_services/Dicom/real_servers/Srv2")
    assert r.status_code == 200, r.text
    long.round()  # the connection to the removed server goes on
    assert [
        rs["label"] for rs in run.api("GET", "/virtual_services/Dicom/real_servers").json()
    ] == ["Srv1"]
    wait_until(lambda: servers(run).get("Srv2", {}).get("admin") == "removing", 10, "removing")
    for _ in range(20):  # the transfer goes on, byte for byte, while new clients go to Srv1
        long.round()
        fresh = Stream(vip_port)
        assert fresh.server == "Srv1"
        fresh.round(1024)
        fresh.close()
    assert any("removed: draining 1 connection" in m for m in run.events("admin")), run.events(
        "admin"
    )

    # Put back under the same label before it is gone: it simply comes back.
    r = run.api(
        "POST",
        "/virtual_services/Dicom/real_servers",
        {"label": "Srv2", "address": RIPS["Srv2"], "port": ports["Srv2"]},
    )
    assert r.status_code == 201, r.text
    wait_until(lambda: servers(run)["Srv2"]["admin"] == "online", 10, "Srv2 back online")
    long.round()

    assert run.api("DELETE", "/virtual_services/Dicom/real_servers/Srv2").status_code == 200
    long.round()
    long.close()  # the transfer ends: the server goes once the engine's count says 0
    wait_until(lambda: "Srv2" not in servers(run), 15, "Srv2 gone after its last connection")
    assert any("removed: gone" in m for m in run.events("admin"))


def test_add_remove_reloads_under_load_cost_no_client_an_error(
    setup: tuple[Pacslb, int, dict[str, int], Path],
) -> None:
    run, vip_port, ports, config = setup
    text = config.read_text()
    without = text.replace(server_line("Srv2", ports["Srv2"]), "")
    assert without != text
    errors: list[str] = []
    served: dict[str, int] = {}
    stop_at = time.monotonic() + 60
    done = threading.Event()

    def client() -> None:
        for _ in range(300):  # bounded in count and time
            if done.is_set() or time.monotonic() > stop_at:
                return
            try:
                s = Stream(vip_port)
                served[s.server] = served.get(s.server, 0) + 1
                s.round(16 * 1024)
                time.sleep(0.02)  # a connection that lives across a reload
                s.round(16 * 1024)
                s.close()
            except OSError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            config.write_text(without if i % 2 == 0 else text)
            assert "revision" in run.control("reload")
            time.sleep(0.3)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert errors == [], f"{len(errors)} client errors: {errors[:5]}"
    assert served.get("Srv1", 0) > 0 and served.get("Srv2", 0) > 0, served
    assert os.path.exists(config)


def test_the_drain_cap_cuts_what_is_left(tmp_path: Path) -> None:
    """`timeouts.remove_drain` bounds the wait: past it, what is still open is cut, said so."""
    with ExitStack() as stack:
        port = stack.enter_context(echo_peer("Srv1"))
        web, vip_port = free_port(WEB_HOST), free_port(VIP)
        config = tmp_path / "pacslb.yaml"
        extra = "    timeouts: {remove_drain: 1}\n"
        config.write_text(config_text(web, vip_port, server_line("Srv1", port), extra))
        run = Pacslb(config, tmp_path / "state", (WEB_HOST, web), tmp_path / "run.log")
        run.start(stack)
        wait_until(lambda: _answers(vip_port), 10, "the VIP to answer")
        held = Stream(vip_port)
        held.round()
        wait_until(lambda: active(run, "Srv1") == 1, 10, "the engine to count the connection")
        assert run.api("DELETE", "/virtual_services/Dicom/real_servers/Srv1").status_code == 200
        wait_until(lambda: "Srv1" not in servers(run), 15, "Srv1 gone at its cap")
        held.sock.settimeout(10)
        with pytest.raises(OSError):  # closed by the proxy: a read gives EOF, then a reset
            for _ in range(3):
                held.round()
        held.close()
        assert "removed: gone (drain cap of 1 s passed: 1 connection cut)" in run.events("admin")


STORESCP, STORESCU = "/usr/bin/storescp", "/usr/bin/storescu"
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise (research/dicom.md)


@contextlib.contextmanager
def slow_storescp(rx: Path) -> Iterator[int]:
    """storescp that sleeps 1 s after each image (--sleep-after): a C-STORE of a few images
    lasts seconds whatever the machine's speed. It binds every interface; yields its port."""
    for attempt in range(3):
        port = free_port()
        argv = [STORESCP, "-aet", "PACS", "+B", "--sleep-after", "1", "-od", str(rx), str(port)]
        with ExitStack() as stack:
            try:
                stack.enter_context(running(argv, "127.0.0.1", port, env=DCMTK_ENV))
            except RuntimeError:  # exited before listening: the port was taken meanwhile
                if attempt == 2:
                    raise
                continue
            yield port
            return


def test_a_c_store_in_progress_survives_the_removal_of_its_server(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    study, series = new_uid(), new_uid()
    sent: dict[str, bytes] = {}
    for i in range(6):
        uid = new_uid()
        data = ct_file(uid, study, series, i + 1, os.urandom(128 * 128 * 2), 128, "PACSLB-H3")
        (src / f"img{i}.dcm").write_bytes(data)
        sent[uid] = data[data.index(b"\x08\x00\x16\x00", 132) :]  # the data set, meta stripped
    with ExitStack() as stack:
        rx = {name: tmp_path / f"rx-{name}" for name in RIPS}
        ports = {}
        for name, folder in rx.items():
            folder.mkdir()
            ports[name] = stack.enter_context(slow_storescp(folder))
        web, vip_port = free_port(WEB_HOST), free_port(VIP)
        config = tmp_path / "pacslb.yaml"
        servers_yaml = "".join(server_line(n, p) for n, p in ports.items())
        config.write_text(config_text(web, vip_port, servers_yaml))
        run = Pacslb(config, tmp_path / "state", (WEB_HOST, web), tmp_path / "run.log")
        run.start(stack)

        files = sorted(str(p) for p in src.iterdir())
        argv = [STORESCU, "-aet", "MODALITY", "-aec", "PACS", VIP, str(vip_port), *files]
        store = subprocess.Popen(
            argv, env={**os.environ, **DCMTK_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            wait_until(lambda: any(active(run, name) == 1 for name in RIPS), 10, "the association")
            target = next(name for name in RIPS if active(run, name) == 1)
            other = next(name for name in RIPS if name != target)
            r = run.api("DELETE", f"/virtual_services/Dicom/real_servers/{target}")
            assert r.status_code == 200, r.text
            early = store.poll()  # None: the removal came mid-transfer, as it must
            _, err = store.communicate(timeout=60)
        finally:
            if store.poll() is None:
                store.kill()
                store.communicate()
        assert store.returncode == 0, err.decode(errors="replace")
        assert early is None, "the C-STORE ended before the removal: the test proved nothing"
        # Every image reached the removed server, byte for byte; none went elsewhere.
        received = {p.name.split(".", 1)[1]: p.read_bytes() for p in rx[target].iterdir()}
        assert received.keys() == sent.keys()
        for uid, data in sent.items():
            assert received[uid].endswith(data), f"{uid}: data set differs"
        assert not any(rx[other].iterdir())
        messages = run.events("admin")
        assert any("removed: draining 1 connection" in m for m in messages), messages
        wait_until(lambda: target not in servers(run), 15, "the removed server gone")
