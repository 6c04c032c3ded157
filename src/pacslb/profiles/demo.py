"""`pacslb demo`: the McKesson deployment (proxy variant) on loopback, with demo real servers.

Ten small real servers on 127.0.1.1-10 answer the guide's health-check URLs with the expected
text (`srvPACS OK`, `OK`) and a page naming themselves, so a browser or curl pointed at a VIP shows
which server answered. The DICOM service runs in l7-dicom (the profile's `--dicom-mode
l7-dicom`: the proxy reads each A-ASSOCIATE-RQ, keeps a modality on one server by its calling AE
title, checks with C-ECHO); its real servers answer DICOM C-ECHO and C-STORE on 4000 and 5000
(`echoscu` and `storescu` work through the VIP; images are counted, never written); the
Cardiology ones answer HTTP on 80 and HTTPS on 443 with a self-signed demo certificate.
Everything binds to 127.0.0.0/8 only (`--net 127.X.Y` moves the whole demo to one /24: VIPs
.30-.50, real servers .1-.10).

Failure on demand (`pacslb demo --fail SERVER`, the API's /api/v1/demo, the System Overview's
Fail button): a failing web server answers its check URL (and /) with 503, as a broken
application does; a failing DICOM server stops listening, as a stopped archive does (its
C-ECHO check is refused). Nothing in the checker knows: it sees what a real failure shows. The
demo's checks run every 2 s and fall after 2 failures, so a failure turns red within about 4 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacslb.config import Config
from pacslb.core import certs
from pacslb.core.dicom_scp import ScpResponder
from pacslb.engines.base import Engine
from pacslb.errors import PacslbError
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
# Quick enough to watch: a failure shows within fall x interval = 4 s, a recovery in rise x 2 s.
DEMO_CHECK = {"interval": 2, "timeout": 1, "rise": 2, "fall": 2}
DICOM_IDLE = 60  # seconds a demo DICOM server waits on a quiet peer (a modality's own timeout)


def addresses(net: str | None = None) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The VIPs and real servers: the defaults above, or all in one loopback /24 `net`
    (`127.X.Y`): VIPs keep their last octets, real servers take .1-.10."""
    if net is None:
        return dict(VIPS), {k: list(v) for k, v in RIPS.items()}
    parts = net.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise ValueError(f"--net {net!r}: give the first three octets of a loopback /24, 127.X.Y")
    vips = {key: f"{net}.{vip.rsplit('.', 1)[1]}" for key, vip in VIPS.items()}
    rips = {key: [f"{net}.{2 * i + 1}", f"{net}.{2 * i + 2}"] for i, key in enumerate(VIPS)}
    return vips, rips


def config_text(
    state_dir: Path, webui_listen: str = "127.0.0.1:9443", net: str | None = None
) -> str:
    vips, rips = addresses(net)
    data, examples = mckesson.build(
        "proxy",
        vips,
        rips,
        state_dir=str(state_dir),
        webui_listen=webui_listen,
        dicom_mode="l7-dicom",
    )
    for service in data["virtual_services"]:
        service["health_check"].update(DEMO_CHECK)
        if service["mode"] == "l7-dicom":
            _route_by_called_ae(service)
    return mckesson.render(data, "proxy", examples)


def _route_by_called_ae(service: dict[str, Any]) -> None:
    """Give each demo archive its own AE title and route by it, so that AE routing can be
    tried (`echoscu -aec DICOM_SRV2` always reaches Radiology_DICOM_Srv2); any other called AE
    is balanced over both, as before."""
    routes = []
    for i, rs in enumerate(service["real_servers"], start=1):
        rs["ae_title"] = f"DICOM_SRV{i}"
        routes.append({"called_ae": rs["ae_title"], "real_servers": [rs["label"]]})
    service["dicom"] = {"routes": routes, "unknown_called_ae": "any"}


@dataclass
class DemoServer:
    """One demo real server: a name, the HTTP or DICOM it answers, and whether it fails."""

    name: str
    key: str = "web"  # the service (mckesson.SERVICE_KEYS)
    address: str = "127.0.0.1"
    ports: tuple[int, ...] = ()
    failing: bool = False
    listeners: list[asyncio.AbstractServer] = field(default_factory=list)
    stored: int = 0  # DICOM: images received by C-STORE (counted; the data is dropped)
    bytes_stored: int = 0

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            while True:
                async with asyncio.timeout(30):
                    head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, _, rest = line.partition(" ")
                path = rest.split(" ", 1)[0].split("?", 1)[0]
                status = b"200 OK"
                body = CHECK_TEXT.get(path, f"<h1>{self.name}</h1><p>{path}</p>\n").encode()
                if self.failing and (path in CHECK_TEXT or path == "/"):
                    # What a broken application answers: its check URL says so.
                    status = b"503 Service Unavailable"
                    body = f"{self.name} is failing (pacslb demo --fail)\n".encode()
                writer.write(
                    b"HTTP/1.1 %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                    b"X-Served-By: %s\r\n\r\n" % (status, len(body), self.name.encode())
                )
                if method != "HEAD":
                    writer.write(body)
                await writer.drain()
        writer.close()

    async def dicom(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A Verification and Storage SCP (core/dicom_scp.py): answers C-ECHO and C-STORE,
        counts what it is sent and keeps nothing. A peer that goes quiet, or stops reading
        our answers, is dropped after DICOM_IDLE seconds."""
        responder = ScpResponder()
        with contextlib.suppress(OSError, TimeoutError):
            while not responder.done:
                async with asyncio.timeout(DICOM_IDLE):
                    data = await reader.read(65536)
                if not data:
                    break
                answer = responder.receive_data(data)
                if answer:
                    writer.write(answer)
                    async with asyncio.timeout(DICOM_IDLE):
                        await writer.drain()
        self.stored += responder.stored
        self.bytes_stored += responder.bytes_stored
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


class DemoEstate:
    """Every demo real server, listening on its loopback address; any one can be made to
    fail its health check for real, and recover (control/demo.py reaches it)."""

    def __init__(self, servers: list[DemoServer], tls: ssl.SSLContext) -> None:
        self.servers = {s.name: s for s in servers}
        self.tls = tls

    @classmethod
    async def start(cls, state_dir: Path, net: str | None = None) -> DemoEstate:
        _, rips = addresses(net)
        servers = [
            DemoServer(f"{spec.label.removeprefix('McK-')}_Srv{i}", spec.key, address, spec.ports)
            for spec in mckesson.SERVICES
            for i, address in enumerate(rips[spec.key], start=1)
        ]
        estate = cls(servers, self_signed(state_dir))
        try:
            for server in servers:
                await estate._listen(server)
        except BaseException:
            estate.close()
            raise
        return estate

    async def _listen(self, server: DemoServer) -> None:
        for port in server.ports:
            if server.key == "dicom":
                handler, context = server.dicom, None
            else:
                handler, context = server.http, self.tls if port == 443 else None
            server.listeners.append(
                await asyncio.start_server(
                    handler, server.address, port, ssl=context, reuse_address=True
                )
            )

    @property
    def listener_count(self) -> int:
        return sum(len(s.listeners) for s in self.servers.values())

    def labels(self) -> list[str]:
        return list(self.servers)

    def failing(self) -> list[str]:
        return [name for name, s in self.servers.items() if s.failing]

    def describe(self, name: str) -> str:
        """What a failure of this server does, in words."""
        server = self.servers[name]
        if server.key == "dicom":
            return f"{name} stops listening on {server.address} ports 4000 and 5000"
        path = _CHECK_OF.get(server.key, "/")  # Cardiology is checked on /
        return f"{name} answers its check URL {path} with 503"

    async def set_failing(self, name: str, failing: bool) -> bool:
        """Make `name` fail (or recover); False when it already was so. An unknown name is a
        ValueError naming the servers there are."""
        server = self.servers.get(name)
        if server is None:
            raise ValueError(f"no demo real server {name!r} (there are {', '.join(self.servers)})")
        if server.failing == failing:
            return False
        if server.key == "dicom":
            if failing:
                for listener in server.listeners:
                    listener.close()  # new connections are refused; open ones finish
                server.listeners.clear()
            else:
                await self._listen(server)  # first: a port it cannot bind leaves it failing
        server.failing = failing
        return True

    def close(self) -> None:
        for server in self.servers.values():
            for listener in server.listeners:
                listener.close()
            server.listeners.clear()


_CHECK_OF = {
    "web": "/wpp/srvpacs.asp",
    "manager": "/cis/index.html",
    "crv": "/McKessonEmiCRV/Ping.aspx",
}


def run(
    state_dir: Path,
    webui_listen: str,
    net: str | None,
    data_planes: Callable[[Path, Config], list[Engine]],
) -> None:
    """`pacslb demo`: the config (written once, then kept), the real servers, the control
    process with the servers attached for --fail; until stopped."""
    import uvloop

    from pacslb.control.app import ControlProcess
    from pacslb.control.demo import attach
    from pacslb.control.serve import serve
    from pacslb.control.store import read_config, write_atomic

    try:
        vips, rips = addresses(net)
    except ValueError as exc:
        raise PacslbError(str(exc)) from None
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    config_path = state_dir / "pacslb.yaml"
    if config_path.exists():  # changes made through the WebUI or API are kept
        print(f"demo: using the existing {config_path} (delete it to start afresh)")
    else:
        write_atomic(config_path, config_text(state_dir, webui_listen, net).encode())
    text, config = read_config(config_path)

    async def main() -> None:
        try:
            servers = await DemoEstate.start(state_dir, net)
        except PermissionError:
            raise PacslbError(
                "the demo binds the guide's ports (80, 443, 4000, 5000) on 127.0.x.x: run it "
                "as root, or allow it with sysctl net.ipv4.ip_unprivileged_port_start=80"
            ) from None
        first, last = rips["dicom"][0], rips["cardiology"][1].rsplit(".", 1)[1]
        print(f"demo real servers: {servers.listener_count} listeners on {first}-{last}; "
              f"config {config_path}")  # fmt: skip
        print(
            f"try: curl -si http://{vips['web']}/wpp/srvpacs.asp   |   pacslb status --state-dir "
            f"{state_dir}   |   pacslb demo --fail Radiology_Web_Srv1 --state-dir {state_dir}",
            flush=True,
        )
        process = ControlProcess(
            config_path, config, text, data_planes(state_dir, config), state_dir
        )
        attach(process, servers)
        try:
            await serve(process)
        finally:
            servers.close()

    uvloop.run(main())
