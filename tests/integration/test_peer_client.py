"""PeerClient against a real TLS server on loopback (127.10.2.5): the pinned certificate is the
only one it talks to, and it sends nothing (no token) to any other; answers are read whole,
chunked ones too; a peer that does not answer is an error within the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import time
from pathlib import Path

import pytest

from pacslb.control.peer import PeerClient, PeerError, WrongCertificate, certificate_fingerprint
from pacslb.core import certs
from pacslb.core.replication import fingerprint

HOST = "127.10.2.5"


def tls_context(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, str]:
    cert, key = certs.self_signed(name, datetime.datetime.now(datetime.UTC), [name], [HOST])
    (tmp_path / f"{name}.pem").write_bytes(cert + key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / f"{name}.pem")
    return ctx, fingerprint(ssl.PEM_cert_to_DER_cert(cert.decode()))


async def serve(ctx: ssl.SSLContext, answer: bytes, received: list[bytes]) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        try:
            async with asyncio.timeout(2):
                while b"\r\n\r\n" not in data:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
        except (TimeoutError, OSError, ssl.SSLError):
            pass
        received.append(data)
        if data:
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(client, HOST, 0, ssl=ctx)


def test_pinned_certificate_only(tmp_path: Path) -> None:
    ctx, pinned = tls_context(tmp_path, "peer")
    _, other = tls_context(tmp_path, "impostor")
    body = b'{"role": "passive"}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        len(body),
        body,
    )

    async def main() -> None:
        received: list[bytes] = []
        server = await serve(ctx, answer, received)
        port = server.sockets[0].getsockname()[1]
        try:
            assert await certificate_fingerprint(HOST, port) == pinned
            good = await PeerClient(HOST, port, pinned, "pacslb_id_secret").get("/api/v1/ha/status")
            assert good.status == 200 and good.body == {"role": "passive"}
            assert b"Authorization: Bearer pacslb_id_secret" in received[-1]
            with pytest.raises(WrongCertificate, match="nothing was sent"):
                await PeerClient(HOST, port, other, "pacslb_id_secret").get("/api/v1/ha/status")
            await asyncio.sleep(0.2)
            assert received[-1] == b""  # the impostor pin: the token never left
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_chunked_answers_and_timeouts(tmp_path: Path) -> None:
    ctx, pinned = tls_context(tmp_path, "peer")
    answer = (
        b"HTTP/1.1 422 Unprocessable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'6\r\n{"a": \r\n3\r\n[1]\r\n1\r\n}\r\n0\r\n\r\n'
    )

    async def main() -> None:
        received: list[bytes] = []
        server = await serve(ctx, answer, received)
        port = server.sockets[0].getsockname()[1]
        silent = await asyncio.start_server(lambda r, w: asyncio.sleep(5), HOST, 0)
        quiet_port = silent.sockets[0].getsockname()[1]
        try:
            got = await PeerClient(HOST, port, pinned, "t").post("/x", {"k": 1})
            assert got.status == 422 and got.body == {"a": [1]} and not got.ok
            head = received[-1]
            assert head.startswith(b"POST /x HTTP/1.1") and b"Content-Length: 8" in head
            started = time.monotonic()
            with pytest.raises(PeerError, match=r"did not answer within 0\.5 s"):
                await PeerClient(HOST, quiet_port, pinned, "t", timeout=0.5).get("/x")
            assert time.monotonic() - started < 2
            with pytest.raises(PeerError, match="cannot connect"):
                await PeerClient(HOST, 1, pinned, "t").get("/x")
        finally:
            for s in (server, silent):
                s.close()
            await server.wait_closed()

    asyncio.run(main())


def test_one_deadline_for_the_whole_call(tmp_path: Path) -> None:
    """A peer that takes most of the deadline to complete TLS and then never answers: the call
    ends at the one deadline, not at a deadline per phase (connect+TLS, then request)."""
    ctx, pinned = tls_context(tmp_path, "peer")

    async def main() -> None:
        held: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # TLS done by the server; no answer ever comes

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()

        async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """A relay that holds the first bytes (the ClientHello) 0.8 s: TLS completes late."""
            held.append(writer)
            await asyncio.sleep(0.8)
            up_reader, up_writer = await asyncio.open_connection(HOST, tls_port)
            held.append(up_writer)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        tls_server = await asyncio.start_server(silent, HOST, 0, ssl=ctx)
        tls_port = tls_server.sockets[0].getsockname()[1]
        relay = await asyncio.start_server(late, HOST, 0)
        port = relay.sockets[0].getsockname()[1]
        try:
            started = time.monotonic()
            with pytest.raises(PeerError, match=r"did not answer within 1 s"):
                await PeerClient(HOST, port, pinned, "t", timeout=1.0).get("/x")
            took = time.monotonic() - started
            print(f"call to a late-TLS, silent peer with a 1 s deadline: {took:.2f} s")
            assert took < 1.5, took  # per phase it was 0.8 + 1 = 1.8 s
        finally:
            for writer in held:
                writer.close()
            relay.close()
            tls_server.close()

    asyncio.run(main())
