"""Issue 16, item 5 (l7): source-IP persistence holds when the listeners are replaced.

A new certificate replaces the listening sockets of an l7-http VIP in every worker (each new
one bound before the old one closes). In the SO_REUSEPORT group a closed socket's place is
taken by the last one (core/steering.py): if two workers replace their sockets at the same
time, their places can swap, and with them the clients each worker's table holds. Two proxy
workers, an l7-http VIP terminating TLS with source-ip persistence, three real servers; the
certificate changes several times; every client stays on its server.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from tests.integration.test_http_proxy import certificate, insecure
from tests.peers.procs import free_port, http_peer

from pacslb.config import Config
from pacslb.core.plan import Plan, build_plan
from pacslb.engines.proxy import ProxyEngine

HOST = "127.10.4.21"  # the real servers
VIP = "127.10.4.6"
CLIENTS = [f"127.10.4.{i}" for i in range(120, 132)]


def plan(port: int, backends: list[int], cert: tuple[str, str], revision: int) -> Plan:
    config = Config.model_validate(
        {
            "virtual_services": [
                {
                    "label": "Viewer",
                    "vip": VIP,
                    "ports": [port],
                    "mode": "l7-http",
                    "scheduler": "rr",
                    "persistence": {"type": "source-ip", "timeout": 900},
                    "health_check": {"type": "none"},
                    "tls": {"certificates": [{"certificate": cert[0], "key": cert[1]}]},
                    "real_servers": [
                        {"label": f"Srv{i}", "address": HOST, "port": p}
                        for i, p in enumerate(backends, 1)
                    ],
                }
            ]
        }
    )
    return build_plan(config, revision=revision)


def who(port: int, client: str, context: ssl.SSLContext) -> str:
    with socket.socket() as raw:
        raw.settimeout(5)
        raw.bind((client, 0))
        raw.connect((VIP, port))
        with context.wrap_socket(raw, server_hostname="viewer") as sock:
            sock.sendall(b"GET /who HTTP/1.1\r\nHost: viewer\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return data.rsplit(b"\r\n\r\n", 1)[1].decode()


@pytest.fixture
def backends() -> Iterator[list[int]]:
    ports = [free_port(HOST) for _ in range(3)]
    with ExitStack() as stack:
        for i, port in enumerate(ports, 1):
            stack.enter_context(http_peer(HOST, port, f"/who=200:server{i}"))
        yield ports


def test_clients_keep_their_servers_when_every_worker_replaces_its_listener(
    tmp_path: Path, backends: list[int]
) -> None:
    port = free_port(VIP)
    certs = [certificate(tmp_path, "one.test"), certificate(tmp_path, "two.test")]
    context = insecure()

    async def seen() -> dict[str, str]:
        return {c: await asyncio.to_thread(who, port, c, context) for c in CLIENTS}

    async def scenario() -> list[dict[str, str]]:
        engine = ProxyEngine(tmp_path / "state", workers=2, spare=False)
        (tmp_path / "state").mkdir()
        try:
            await engine.apply(plan(port, backends, certs[0], 1))
            rounds = [await seen()]
            for revision in range(2, 8):
                await engine.apply(plan(port, backends, certs[revision % 2], revision))
                rounds.append(await seen())
            return rounds
        finally:
            await engine.close()

    rounds = asyncio.run(scenario())
    first = rounds[0]
    assert len(set(first.values())) == 3, first  # spread over the servers
    for n, later in enumerate(rounds[1:], 1):
        moved = {c: (first[c], s) for c, s in later.items() if s != first[c]}
        assert not moved, f"after certificate change {n}: {moved}"
