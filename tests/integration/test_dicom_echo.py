"""dicom_echo against real peers on 127.0.0.1: dcmtk storescp and dcmqrscp, HTTP servers, and
small in-test servers for the silent and hang-up cases. Each reason is asserted as produced."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacslb.control.dicom_echo import EchoOutcome, dicom_echo
from pacslb.core.dicom import abort_pdu

STORESCP = "/usr/bin/storescp"
DCMQRSCP = "/usr/bin/dcmqrscp"
HOST = "127.0.0.1"
CALLING = "PACSLB_CHECK"

StartPeer = Callable[..., int]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"{proc.args!r} did not listen on {port} within {limit} s")


@pytest.fixture
def start_peer(tmp_path: Path) -> Iterator[StartPeer]:
    """Starts a server subprocess listening on a free port; stops it by PID afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, port: int | None = None) -> int:
        port = port if port is not None else free_port()
        args = [a.replace("{port}", str(port)) for a in argv]
        env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk 3.6.7 leaves Nagle on otherwise
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(proc)
        wait_for_port(port, proc)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


@pytest.fixture
def dcmtk() -> None:
    if not (os.path.exists(STORESCP) and os.path.exists(DCMQRSCP)):
        pytest.skip("dcmtk not installed: apt-get install dcmtk")


def echo(
    port: int, called: str = "PACS1", calling: str = CALLING, timeout: float = 2.0
) -> EchoOutcome:
    return asyncio.run(dicom_echo(HOST, port, called, calling, timeout))


# dcmtk ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("dcmtk")
def test_storescp_accepts(start_peer: StartPeer, tmp_path: Path) -> None:
    port = start_peer(STORESCP, "-aet", "PACS1", "-od", str(tmp_path), "{port}")
    for _ in range(3):  # storescp is single-process: consecutive associations must all work
        outcome = echo(port)
        assert outcome.ok, outcome.reason
        assert re.fullmatch(r"dicom-echo: C-ECHO success in \d+\.\d ms", outcome.reason)
        assert 0 < outcome.latency < 2.0


@pytest.mark.usefixtures("dcmtk")
def test_storescp_refuse_rejects(start_peer: StartPeer) -> None:
    port = start_peer(STORESCP, "--refuse", "{port}")
    outcome = echo(port)
    assert not outcome.ok
    assert outcome.reason == (
        "dicom-echo: association rejected (permanent, service-user: no-reason-given)"
    )


def write_qr_config(tmp_path: Path, port: int, peers: str = "ANY") -> Path:
    # dcmqrscp.cfg format (see /etc/dcmtk/dcmqrscp.cfg): no UserName/GroupName, so it keeps
    # running as the current user; one AE title QRSCP with its storage area.
    storage = tmp_path / "QRSCP"
    storage.mkdir(exist_ok=True)
    config = tmp_path / "qr.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nallowed = (ALLOWED, localhost, 104)\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nQRSCP {storage} RW (10, 64mb) {peers}\nAETable END\n"
    )
    return config


def start_dcmqrscp(start_peer: StartPeer, tmp_path: Path, peers: str = "ANY") -> int:
    port = free_port()
    config = write_qr_config(tmp_path, port, peers)
    # --fork (the default), not --single-process: dcmtk 3.6.7's dcmqrscp -s segfaults when it
    # rejects an association after having served one.
    return start_peer(DCMQRSCP, "--fork", "-c", str(config), str(port), port=port)


@pytest.mark.usefixtures("dcmtk")
def test_dcmqrscp_checks_the_called_ae_title(start_peer: StartPeer, tmp_path: Path) -> None:
    port = start_dcmqrscp(start_peer, tmp_path)
    right = echo(port, called="QRSCP")
    assert right.ok, right.reason
    wrong = echo(port, called="NOT_QRSCP")
    assert not wrong.ok
    assert wrong.reason == (
        "dicom-echo: association rejected (permanent, service-user: called-AE-title-not-recognized)"
    )
    assert echo(port, called="QRSCP").ok  # the rejection left the archive serving


@pytest.mark.usefixtures("dcmtk")
def test_dcmqrscp_reports_an_unknown_calling_ae_as_called(
    start_peer: StartPeer, tmp_path: Path
) -> None:
    # dcmqrscp refuses a peer outside the AE's Peers list with the same RJ reason 7 it uses for
    # an unknown called AE title (not reason 3, calling-AE-title-not-recognized).
    port = start_dcmqrscp(start_peer, tmp_path, peers="allowed")
    assert echo(port, called="QRSCP", calling="ALLOWED").ok
    outcome = echo(port, called="QRSCP", calling=CALLING)
    assert outcome.reason == (
        "dicom-echo: association rejected (permanent, service-user: called-AE-title-not-recognized)"
    )


# Not DICOM, not there, not answering -----------------------------------------------------------


def test_closed_port_is_refused() -> None:
    outcome = echo(free_port())
    assert (outcome.ok, outcome.reason) == (False, "dicom-echo: connection refused")


def test_silent_server_times_out_and_gets_an_abort() -> None:
    async def scenario() -> tuple[EchoOutcome, float, bytes]:
        received = bytearray()
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(3):  # accept, never answer, keep what arrives
                    while chunk := await reader.read(4096):
                        received.extend(chunk)
            finally:
                writer.close()
                done.set()

        server = await asyncio.start_server(handle, HOST, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            started = time.monotonic()
            outcome = await dicom_echo(HOST, port, "PACS1", CALLING, 0.5)
            elapsed = time.monotonic() - started
            async with asyncio.timeout(2):
                await done.wait()
        return outcome, elapsed, bytes(received)

    outcome, elapsed, received = asyncio.run(scenario())
    assert outcome.reason == "dicom-echo: timed out after 0.5 s waiting for A-ASSOCIATE-AC"
    assert not outcome.ok
    assert elapsed < 0.5 + 0.3
    assert received[0] == 0x01 and received.endswith(abort_pdu(source=0))


def test_server_that_hangs_up_at_once() -> None:
    async def scenario() -> EchoOutcome:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await dicom_echo(HOST, port, "PACS1", CALLING, 2.0)

    outcome = asyncio.run(scenario())
    assert not outcome.ok
    # FIN or, if our A-ASSOCIATE-RQ reached the closed socket first, RST: both name the hang-up.
    assert re.fullmatch(
        r"dicom-echo: peer (closed|reset) the connection before A-ASSOCIATE-AC", outcome.reason
    ), outcome.reason


def test_http_server_that_parses_as_it_reads_is_not_dicom() -> None:
    # An HTTP/1.1 server on llhttp (httptools, as under uvicorn) rejects the first byte of an
    # A-ASSOCIATE-RQ as an invalid method and answers 400 at once.
    httptools = pytest.importorskip("httptools")

    async def scenario() -> EchoOutcome:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            parser = httptools.HttpRequestParser(object())
            try:
                async with asyncio.timeout(3):
                    while chunk := await reader.read(4096):
                        parser.feed_data(chunk)
            except httptools.HttpParserError:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            finally:
                writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await dicom_echo(HOST, port, "PACS1", CALLING, 2.0)

    outcome = asyncio.run(scenario())
    assert not outcome.ok
    assert outcome.reason == (
        "dicom-echo: not DICOM: unexpected bytes 'HTTP/1.1 400 Bad Request'..."
    )


def test_python_http_server_waits_for_a_line_and_times_out(start_peer: StartPeer) -> None:
    # http.server reads a request line up to LF; an A-ASSOCIATE-RQ has none, so it never answers
    # and the probe can only time out.
    port = start_peer(sys.executable, "-m", "http.server", "--bind", HOST, "{port}")
    started = time.monotonic()
    outcome = echo(port, timeout=0.5)
    assert time.monotonic() - started < 0.5 + 0.3
    assert outcome.reason == "dicom-echo: timed out after 0.5 s waiting for A-ASSOCIATE-AC"
