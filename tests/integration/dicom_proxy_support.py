"""Shared by tests/integration/test_dicom_proxy*.py: an l7-dicom virtual service served in
this process (a uvloop loop on a thread, as test_tcp_proxy.py does), and real DICOM peers
(dcmtk storescp / dcmqrscp / storescu / echoscu by full path with TCP_NODELAY=1).

Addresses: the l7-dicom tests' loopback block 127.10.20.0/24 only. dcmtk's SCPs cannot bind one
address, so they listen on every address of a free port and are called on 127.10.20.x.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.dicom_files import write_ct_series
from tests.integration.test_tcp_proxy import ProxyLoop
from tests.peers.procs import running, wait_until

from pacslb.core.plan import build_plan
from pacslb.core.state import AdminState
from pacslb.core.validate import load_data
from pacslb.proxy.dicom import DicomListener
from pacslb.proxy.runtime import ServiceRuntime

__all__ = [
    "DCMTK_ENV",
    "ECHOSCU",
    "PEER",
    "STORESCU",
    "DicomVip",
    "ProxyLoop",
    "associate_rq",
    "dcmqrscp",
    "echo",
    "files_in",
    "free_port",
    "read_pdu",
    "storescp",
    "storescu",
    "write_ct_series",
]

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMQRSCP = "/usr/bin/dcmqrscp"
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk 3.6.7 leaves Nagle on otherwise (research/dicom.md)
PEER = "127.10.20.1"  # where the archives are called


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))  # dcmtk SCPs listen on every address
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _scp(argv_for: Any, log: Path | None = None) -> Iterator[int]:
    """Start an SCP that cannot bind port 0: another port if the one chosen was taken."""
    for attempt in range(3):
        port = free_port()
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(running(argv_for(port), PEER, port, env=DCMTK_ENV, log=log))
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            yield port
            return


def storescp(rx: Path, aet: str = "PACS1") -> contextlib.AbstractContextManager[int]:
    """storescp writing bit-preserving files to `rx` (answers any called AE)."""
    rx.mkdir(parents=True, exist_ok=True)
    return _scp(lambda port: [STORESCP, "-aet", aet, "+B", "-od", str(rx), str(port)])


def dcmqrscp(root: Path, aet: str) -> contextlib.AbstractContextManager[int]:
    """dcmqrscp answering only `aet` as called AE (it refuses any other with
    called-AE-not-recognised) and storing what it is sent under root/db."""
    db = root / "db"
    db.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        cfg = root / "qr.cfg"
        cfg.write_text(
            f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{aet} {db} RW (1000, 1024mb) ANY\nAETable END\n"
        )
        return [DCMQRSCP, "-c", str(cfg)]  # one process per association (-s takes one only)

    return _scp(argv, root / "dcmqrscp.log")


def files_in(root: Path) -> list[Path]:
    """The DICOM files an archive stored (dcmqrscp's index.dat aside)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix == ".dcm")


def storescu(
    vip: str, port: int, called: str, calling: str, *paths: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = [STORESCU, "-aet", calling, "-aec", called, vip, str(port), *map(str, paths)]
    return subprocess.run(
        argv, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def echo(vip: str, port: int, called: str, calling: str) -> subprocess.CompletedProcess[str]:
    argv = [ECHOSCU, "-aet", calling, "-aec", called, vip, str(port)]
    return subprocess.run(argv, env=DCMTK_ENV, capture_output=True, text=True, timeout=30)


def associate_rq(called: bytes = b"ARCHIVE", calling: bytes = b"MODALITY") -> bytes:
    """A Verification A-ASSOCIATE-RQ (PS3.8 §9.3.2), written from the tables."""

    def item(kind: int, value: bytes) -> bytes:
        return bytes([kind, 0]) + len(value).to_bytes(2, "big") + value

    body = b"\0\1\0\0" + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    body += item(
        0x20, b"\1\0\0\0" + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2")
    )
    body += item(0x50, item(0x51, (16384).to_bytes(4, "big")))
    return b"\x01\x00" + len(body).to_bytes(4, "big") + body


def read_pdu(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """One PDU (type, payload) from the socket, or None if it closed first."""
    sock.settimeout(timeout)
    head = b""
    try:
        while len(head) < 6:
            chunk = sock.recv(6 - len(head))
            if not chunk:
                return None
            head += chunk
        kind, _, length = struct.unpack(">BBI", head)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
    except ConnectionResetError:
        return None
    return kind, body


class DicomVip:
    """One l7-dicom virtual service on one port, served by a DicomListener on the proxy loop."""

    def __init__(
        self,
        loop: ProxyLoop,
        vip: str,
        real_servers: list[dict[str, Any]],
        splice: bool | None = None,
        **settings: Any,
    ) -> None:
        self.loop = loop
        self.vip = vip
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((vip, 0))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self.label = "D"
        self.data = {
            "version": 1,
            "virtual_services": [
                {
                    "label": self.label,
                    "vip": vip,
                    "ports": [self.port],
                    "mode": "l7-dicom",
                    "health_check": {"type": "none"},
                    "real_servers": real_servers,
                    **settings,
                }
            ],
        }
        self.config = load_data(self.data)
        self.runtime = ServiceRuntime(build_plan(self.config).services[0])

        def start() -> DicomListener:
            listener = DicomListener(sock, self.runtime, self.port, splice=splice)
            listener.start()
            return listener

        self.listener = loop.call(start)

    def set_admin(self, **states: str) -> None:
        admin = {(self.label, rs): AdminState(state) for rs, state in states.items()}
        service = build_plan(self.config, admin=admin).services[0]
        self.loop.call(self.runtime.update, service)

    def stats(self, row: str) -> dict[str, Any]:
        return self.loop.call(
            lambda: self.runtime.stats[row].as_dict() if row in self.runtime.stats else {}
        )

    def open_connections(self) -> int:
        return self.loop.call(lambda: len(self.listener.connections))

    def wait_idle(self, timeout: float = 10.0) -> None:
        wait_until(lambda: self.open_connections() == 0, timeout, "associations to end")

    def close(self) -> None:
        self.loop.call(self.listener.close)
        self.loop.call(self.listener.abort_all)

    @contextlib.contextmanager
    def serving(self) -> Iterator[DicomVip]:
        try:
            yield self
        finally:
            self.close()
