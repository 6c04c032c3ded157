"""A TLS-terminating relay, as a man in the middle would run one: it presents its own
certificate to whoever connects and relays the bytes to the real peer over a TLS connection of
its own. For tests/netns/test_ha_replication.py (pairing through it must be refused).

    python tls_relay.py LISTEN_HOST LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT CERT_AND_KEY.pem

Prints `ready` once it listens; exits by itself after LIFETIME seconds (a bounded helper)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys

LIFETIME = 120.0


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def main(host: str, port: int, up_host: str, up_port: int, pem: str) -> None:
    own = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    own.load_cert_chain(pem)
    upstream = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    upstream.check_hostname = False
    upstream.verify_mode = ssl.CERT_NONE

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(up_host, up_port, ssl=upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, host, port, ssl=own)
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LIFETIME):
            await server.serve_forever()


if __name__ == "__main__":
    h, p, uh, up, cert = sys.argv[1:6]
    asyncio.run(main(h, int(p), uh, int(up), cert))
