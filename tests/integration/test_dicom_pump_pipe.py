"""DicomPump against real sockets and a real pipe that is full: a header split across segments
must not be taken out of the socket while the pipe has no room for it.

A pipe is full long before BATCH bytes when it keeps the default 64 KiB (an unprivileged
worker past fs.pipe-user-pages-soft) or when small segments take its slots. The pump's
connection is a small stand-in (it records what the pump tells it); sockets, pipe and kernel
are real. Addresses: r19's loopback block 127.10.7.0/24.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct

import pytest

from pacslb.proxy import dicom_pumps
from pacslb.proxy.dicom_pumps import DicomPump
from pacslb.proxy.runtime import ServerStats

pytestmark = pytest.mark.timeout(30)

ADDRESS = "127.10.7.21"
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Conn:
    """What a DicomPump calls on its connection."""

    closed = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.failures: list[BaseException] = []

    def fail(self, exc: BaseException, server: bool = False) -> None:
        self.failures.append(exc)

    def direction_done(self) -> None:
        pass

    def server_failed(self, reason: str) -> None:
        pass


def _pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    near = socket.create_connection(listener.getsockname())
    far, _ = listener.accept()
    return near, far


def _read_all(sock: socket.socket, into: bytearray) -> None:
    try:
        while chunk := sock.recv(1 << 20):
            into += chunk
    except BlockingIOError:
        pass


@pytest.fixture(params=["C", "Python"])
def hot_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "C" and not dicom_pumps.COMPILED:
        pytest.skip("pacslb.proxy._pdufast is not built here (`make` builds it)")
    if request.param == "Python":
        monkeypatch.setattr(dicom_pumps, "_relay", None)
    return str(request.param)


@pytest.mark.parametrize("before", [0, 2], ids=["first-bytes", "rest-of-header"])
def test_a_split_header_waits_for_room_in_a_full_pipe(hot_loop: str, before: int) -> None:
    """`before` header bytes went through while the pipe was empty; the next ones come while
    it is full."""

    async def scenario() -> tuple[bytes, list[BaseException]]:
        loop = asyncio.get_running_loop()
        with socket.create_server((ADDRESS, 0)) as listener:
            client, proxy_in = _pair(listener)
            proxy_out, server = _pair(listener)
            with client, proxy_in, proxy_out, server:
                for sock in (proxy_in, proxy_out, server):
                    sock.setblocking(False)
                conn = Conn(loop)
                pump = DicomPump(conn, proxy_in, proxy_out, ServerStats(), True)
                pump.open([])
                fcntl.fcntl(pump.pipe_w, _F_SETPIPE_SZ, 1 << 16)  # the unprivileged size
                pump.tracker.pdus = 1  # past the request: P-DATA-TF from here on
                body = struct.pack(">I", 3) + b"\x01\x02\x03"  # one 3-byte PDV
                header = struct.pack(">BBI", 0x04, 0, len(body))
                early = bytearray()
                if before:
                    client.sendall(header[:before])
                    await asyncio.sleep(0.05)
                    pump.run()
                    for _ in range(100):
                        await asyncio.sleep(0.01)
                        _read_all(server, early)
                        if len(early) >= before:
                            break
                    assert pump.tracker.partial == header[:before]
                # The pipe holds bytes the destination had no room for (what fill() leaves).
                held = 0
                try:
                    while True:
                        held += os.write(pump.pipe_w, b"x" * 4096)
                except BlockingIOError:
                    pass
                assert held < dicom_pumps.BATCH
                pump.pending = held
                client.sendall(header[before:4])  # a header still incomplete
                await asyncio.sleep(0.05)
                pump.run()
                got = bytearray()
                for _ in range(200):  # the destination reads: the pipe drains
                    await asyncio.sleep(0.01)
                    _read_all(server, got)
                    if len(got) > held:
                        break
                client.sendall(header[4:] + body)
                want = len(header) + len(body)
                for _ in range(200):
                    await asyncio.sleep(0.01)
                    _read_all(server, got)
                    if len(got) >= held + want:
                        break
                pump.close()
                return bytes(early + got[held:]), conn.failures

    tail, failures = asyncio.run(scenario())
    body = struct.pack(">I", 3) + b"\x01\x02\x03"
    assert failures == []
    assert tail == struct.pack(">BBI", 0x04, 0, len(body)) + body
