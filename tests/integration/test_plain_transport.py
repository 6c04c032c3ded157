"""The l7-http proxy's own transport for plain clients (proxy/plain.py), on real loopback
sockets under uvloop: the part of asyncio's transport contract the proxy relies on.

The whole proxy runs on it in test_http_proxy.py and test_http_rules.py; here each rule is
driven alone, with a client that reads, stalls, half-closes or resets when the test says."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from pacslb.proxy.plain import Poller, accept_plain

BIG = 8 << 20  # far more than the socket buffers hold: the transport must buffer and pause


class Recorder(asyncio.Protocol):
    """Records every callback; `keep_half_open` is what eof_received answers."""

    def __init__(self, keep_half_open: bool = False) -> None:
        self.keep_half_open = keep_half_open
        self.transport: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: list[BaseException | None] = []
        self.made = asyncio.Event()
        self.got_eof = asyncio.Event()
        self.closed = asyncio.Event()
        self.resumed = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made.set()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.got_eof.set()
        return self.keep_half_open

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.closed.set()


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


Scenario = Callable[[Recorder, socket.socket, Poller], Awaitable[None]]


def run(scenario: Scenario, protocol: Recorder | None = None) -> Recorder:
    """Accept one client through accept_plain and run `scenario(protocol, client, poller)`."""
    proto = protocol or Recorder()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listening = listening_socket()
        poller = Poller(loop)
        loop.add_reader(listening.fileno(), accept_plain, listening, poller, lambda: proto, 8)
        client = socket.socket()
        client.setblocking(False)
        try:
            await loop.sock_connect(client, listening.getsockname())
            await asyncio.wait_for(proto.made.wait(), 5)
            await asyncio.wait_for(scenario(proto, client, poller), 20)
            await asyncio.wait_for(proto.closed.wait(), 5)
            await asyncio.sleep(0)
            assert not poller.transports, "a closed transport stays in the poller"
        finally:
            loop.remove_reader(listening.fileno())
            listening.close()
            client.close()
            poller.close()

    uvloop.run(main())
    assert len(proto.lost) == 1, f"connection_lost called {len(proto.lost)} times"
    return proto


async def read_all(client: socket.socket, until: int | None = None) -> bytes:
    """Read until EOF (or `until` bytes)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while until is None or len(out) < until:
        chunk = await loop.sock_recv(client, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_backpressure_pauses_and_resumes_the_writer_and_close_waits_for_the_buffer() -> None:
    payload = bytes(range(256)) * (BIG // 256)

    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        t = proto.transport
        for i in range(0, BIG, 1 << 16):
            t.write(payload[i : i + (1 << 16)])
        assert proto.events == ["pause"], "the writer was not paused past the high-water mark"
        t.close()  # with megabytes still buffered: they go out first
        assert t.is_closing()
        t.write(b"ignored after close")
        received = await read_all(client)
        assert received == payload
        assert proto.events == ["pause", "resume"]

    proto = run(scenario)
    assert proto.lost == [None]


def test_writelines_and_a_write_that_fits_go_out_at_once() -> None:
    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        t = proto.transport
        t.writelines([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 2\r\n\r\n", b"ok"])
        assert not t._buf, "a small write was buffered instead of sent"
        assert await read_all(client, 40) == (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        t.close()

    run(scenario)


def test_the_first_read_happens_before_any_poll() -> None:
    """With the request already sent when accept runs, data_received comes from start()."""

    class SeesDataAtOnce(Recorder):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.registered_before_read = transport._mask != 0

    proto = SeesDataAtOnce()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listening = listening_socket()
        client = socket.create_connection(listening.getsockname())
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        poller = Poller(loop)
        try:
            assert accept_plain(listening, poller, lambda: proto, 8) == 1
            assert bytes(proto.data) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            assert not proto.registered_before_read
            proto.transport.abort()
            await asyncio.sleep(0)
        finally:
            listening.close()
            client.close()
            poller.close()

    uvloop.run(main())
    assert proto.lost == [None]


def test_half_close_keeps_the_connection_for_the_response() -> None:
    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"request")
        client.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.got_eof.wait(), 5)
        assert bytes(proto.data) == b"request"
        assert not proto.transport.is_closing()
        await asyncio.sleep(0.05)  # no busy loop on the half-closed socket meanwhile
        proto.transport.write(b"response")
        proto.transport.close()
        assert await read_all(client) == b"response"

    run(scenario, Recorder(keep_half_open=True))


def test_eof_closes_unless_the_protocol_keeps_it() -> None:
    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        client.shutdown(socket.SHUT_WR)
        assert await read_all(client) == b""  # our FIN came back: closed

    proto = run(scenario)
    assert proto.events == ["eof"]


def test_write_eof_sends_fin_after_the_buffer_and_reading_goes_on() -> None:
    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        loop = asyncio.get_running_loop()
        t = proto.transport
        t.write(b"x" * BIG)
        t.write_eof()
        assert await read_all(client) == b"x" * BIG
        await loop.sock_sendall(client, b"after our FIN")
        for _ in range(100):
            if proto.data:
                break
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == b"after our FIN"
        t.close()

    run(scenario)


def test_pause_reading_holds_data_until_resumed() -> None:
    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        loop = asyncio.get_running_loop()
        proto.transport.pause_reading()
        await loop.sock_sendall(client, b"held")
        await asyncio.sleep(0.1)
        assert not proto.data
        proto.transport.resume_reading()
        for _ in range(100):
            if proto.data:
                break
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == b"held"
        proto.transport.close()

    run(scenario)


def test_abort_drops_the_buffer_at_once() -> None:
    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        t = proto.transport
        t.write(b"y" * BIG)
        t.abort()
        try:
            received = await read_all(client)
        except ConnectionResetError:
            received = b""
        assert len(received) < BIG

    run(scenario)


def test_a_reset_by_the_client_is_reported_once() -> None:
    async def scenario(proto: Recorder, client: socket.socket, poller: Poller) -> None:
        proto.transport.write(b"z" * BIG)  # buffered: the transport waits to write
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST

    proto = run(scenario)
    assert isinstance(proto.lost[0], ConnectionError), proto.lost


def test_many_clients_each_get_their_own_bytes() -> None:
    """Concurrent connections through one poller: no byte crosses to another client."""
    count = 50
    protos: list[Recorder] = []

    class Echo(Recorder):
        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    def factory() -> Recorder:
        protos.append(Echo())
        return protos[-1]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listening = listening_socket()
        poller = Poller(loop)
        loop.add_reader(listening.fileno(), accept_plain, listening, poller, factory, 8)

        async def one(i: int) -> bytes:
            reader, writer = await asyncio.open_connection(*listening.getsockname())
            message = (b"%04d" % i) * 4096
            writer.write(message)
            got = await reader.readexactly(len(message))
            writer.close()
            return got if got == message else b""

        try:
            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 20)
            assert all(results)
            for _ in range(200):
                if all(p.lost for p in protos):
                    break
                await asyncio.sleep(0.01)
            assert not poller.transports
        finally:
            loop.remove_reader(listening.fileno())
            listening.close()
            poller.close()

    uvloop.run(main())
    assert len(protos) == count and all(len(p.lost) == 1 for p in protos)
