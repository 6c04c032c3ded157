"""`pacslb demo`: the McKesson deployment (proxy variant) on loopback, with demo real servers.

Ten small real servers on 127.0.1.1-10 answer the guide's health-check URLs with the expected
text (`srvPACS OK`, `OK`) and a page naming themselves, so a browser or curl pointed at a VIP shows
which server answered. The DICOM real servers answer DICOM C-ECHO on 4000 and 5000 (a
Verification SCP: `echoscu` works through the VIP; they store nothing); the Cardiology ones
answer HTTP on 80 and HTTPS on 443 with a self-signed
demo certificate. Everything binds to 127.0.0.0/8 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from pacslb.core import certs
from pacslb.core.dicom_scp import VerificationResponder
from pacslb.profiles import mckesson

VIPS = {
    "dicom": "127.0.0.30",
    "web": "127.0.0.31",
    "manager": "127.0.0.40",
    "crv": "127.0.0.41",
    "cardiology": "127.0.0.50",
}
RIPS = {key: [f"127.0.1.{2 * i + 1}", f"127.0.1.{2 * i + 2}"] for i, key in enumerate(VIPS)}
CHECK_TEXT = {
    "/wpp/srvpacs.asp": "srvPACS OK",
    "/cis/index.html": "OK",
    "/McKessonEmiCRV/Ping.aspx": "OK",
}


def config_text(state_dir: Path, webui_listen: str = "127.0.0.1:9443") -> str:
    data, examples = mckesson.build(
        "proxy", VIPS, RIPS, state_dir=str(state_dir), webui_listen=webui_listen
    )
    return mckesson.render(data, "proxy", examples)


@dataclass
class DemoServer:
    """One demo real server: a name, and the HTTP it answers."""

    name: str

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            while True:
                async with asyncio.timeout(30):
                    head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, _, rest = line.partition(" ")
                path = rest.split(" ", 1)[0].split("?", 1)[0]
                body = CHECK_TEXT.get(path, f"<h1>{self.name}</h1><p>{path}</p>\n").encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                    b"X-Served-By: %s\r\n\r\n" % (len(body), self.name.encode())
                )
                if method != "HEAD":
                    writer.write(body)
                await writer.drain()
        writer.close()

    async def dicom(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A Verification SCP: answers C-ECHO (echoscu, dicom-echo checks); not a store."""
        responder = VerificationResponder()
        with contextlib.suppress(OSError, TimeoutError):
            while not responder.done:
                async with asyncio.timeout(60):
                    data = await reader.read(65536)
                if not data:
                    break
                writer.write(responder.receive_data(data))
                await writer.drain()
        writer.close()


def self_signed(directory: Path) -> ssl.SSLContext:
    """A throw-away certificate for the demo's HTTPS real servers."""
    cert_path, key_path = directory / "demo-cert.pem", directory / "demo-key.pem"
    if not cert_path.exists():
        now = datetime.datetime.now(datetime.UTC)
        cert, key = certs.self_signed("pacslb demo real server", now, days=365)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        cert_path.write_bytes(cert)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


async def start_real_servers(state_dir: Path) -> list[asyncio.AbstractServer]:
    """Every demo real server, listening on its loopback address."""
    servers: list[asyncio.AbstractServer] = []
    tls = self_signed(state_dir)
    for spec in mckesson.SERVICES:
        for i, address in enumerate(RIPS[spec.key], start=1):
            demo = DemoServer(f"{spec.label.removeprefix('McK-')}_Srv{i}")
            for port in spec.ports:
                if spec.key == "dicom":
                    handler = demo.dicom
                    context = None
                else:
                    handler = demo.http
                    context = tls if port == 443 else None
                servers.append(
                    await asyncio.start_server(
                        handler, address, port, ssl=context, reuse_address=True
                    )
                )
    return servers
