"""Issue 16, item 5 (l7): source-IP persistence entries move between nodes.

Two proxy engines with their own state directories and workers stand for the two nodes of an
HA pair (H3's state sync carries the entries over UDP; here they are handed over directly, as
statesync does with ProxyEngine.export_sticky / import_sticky). On loopback each node gets its
own VIP (the floating address would move between them); the service, its label and its real
servers are the same, as replication makes them. A client placed by node A must reach the
same server through node B once B has imported A's entries.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from tests.peers.procs import free_port, http_peer

from pacslb.config import Config
from pacslb.core.plan import Plan, build_plan
from pacslb.engines.proxy import ProxyEngine

HOST = "127.10.4.20"  # the real servers
VIP_A, VIP_B = "127.10.4.2", "127.10.4.3"
CLIENTS = [f"127.10.4.{i}" for i in range(150, 162)]
TIMEOUT = 900


def plan(vip: str, port: int, backends: list[int], timeout: int = TIMEOUT) -> Plan:
    config = Config.model_validate(
        {
            "virtual_services": [
                {
                    "label": "Archive",
                    "vip": vip,
                    "ports": [port],
                    "mode": "l7-tcp",
                    "scheduler": "rr",
                    "persistence": {"type": "source-ip", "timeout": timeout},
                    "health_check": {"type": "none"},
                    "real_servers": [
                        {"label": f"Srv{i}", "address": HOST, "port": p}
                        for i, p in enumerate(backends, 1)
                    ],
                }
            ]
        }
    )
    return build_plan(config, revision=1)


def who(vip: str, port: int, client: str) -> str:
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((client, 0))
        sock.connect((vip, port))
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
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


async def exported(engine: ProxyEngine, since: int, count: int) -> tuple[list[dict[str, Any]], int]:
    """export_sticky once it lists `count` entries (the watchdog reads the workers each
    second), bounded."""
    deadline = time.monotonic() + 10
    while True:
        entries, cursor = engine.export_sticky(since)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries, cursor
        await asyncio.sleep(0.1)


def test_entries_exported_by_one_node_send_the_client_to_the_same_server_on_the_other(
    tmp_path: Path, backends: list[int]
) -> None:
    port = free_port(VIP_A)

    async def scenario() -> dict[str, Any]:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = ProxyEngine(tmp_path / "a", workers=2, spare=False)
        b = ProxyEngine(tmp_path / "b", workers=2, spare=False)
        try:
            await asyncio.gather(
                a.apply(plan(VIP_A, port, backends)), b.apply(plan(VIP_B, port, backends))
            )
            placed = {}
            for client in CLIENTS:  # rr over three servers: the clients are spread
                placed[client] = await asyncio.to_thread(who, VIP_A, port, client)
            # a client of B's own, before the import: its live entry on B must be kept
            own = await asyncio.to_thread(who, VIP_B, port, "127.10.4.170")
            entries, cursor = await exported(a, 0, len(CLIENTS))
            again, cursor2 = a.export_sticky(cursor)
            conflicting = {
                "service": "Archive",
                "key": "127.10.4.170",
                "server": next(s for s in ("Srv1", "Srv2", "Srv3") if f"server{s[-1]}" != own),
                "ttl": 60.0,
            }
            b.import_sticky([*entries, conflicting])
            await b.sticky.settled()
            through_b = {}
            for client in reversed(CLIENTS):  # another order: B's rr alone would differ
                through_b[client] = await asyncio.to_thread(who, VIP_B, port, client)
            own_after = await asyncio.to_thread(who, VIP_B, port, "127.10.4.170")
            # a new client of A: the next export from the cursor lists it alone
            await asyncio.to_thread(who, VIP_A, port, "127.10.4.171")
            later, _ = await exported(a, cursor, 1)
            # A peer's bad entry is skipped and counted; the good ones beside it are taken.
            skipped = sum(b.sticky.skipped.values())
            b.import_sticky([{"service": "Archive", "key": "nope", "server": "x", "ttl": 1}])
            assert sum(b.sticky.skipped.values()) == skipped + 1
            with pytest.raises(ValueError):
                b.import_sticky("not a list")  # type: ignore[arg-type]
            return {
                "placed": placed,
                "entries": entries,
                "again": again,
                "cursors": (cursor, cursor2),
                "through_b": through_b,
                "own": (own, own_after),
                "later": later,
            }
        finally:
            await asyncio.gather(a.close(), b.close())

    result = asyncio.run(scenario())
    placed = result["placed"]
    assert len(set(placed.values())) == 3, placed
    entries = result["entries"]
    assert {e["key"]: f"server{e['server'][-1]}" for e in entries} == placed
    for entry in entries:
        assert entry["service"] == "Archive"
        assert 0 < entry["ttl"] <= TIMEOUT, entry  # closed connections: the time left
    assert result["again"] == [] and result["cursors"][1] == result["cursors"][0]
    assert result["through_b"] == placed
    own, own_after = result["own"]
    assert own_after == own  # B's live entry won over the imported one
    assert [e["key"] for e in result["later"]] == ["127.10.4.171"]


def test_entries_imported_before_the_proxy_starts_are_served_from_its_start(
    tmp_path: Path, backends: list[int]
) -> None:
    """A passive node whose proxy has not started yet (no Plan) already gets the active node's
    entries: its workers take them with their first Plan, before they listen."""
    port = free_port(VIP_A)

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = ProxyEngine(tmp_path / "a", workers=2, spare=False)
        b = ProxyEngine(tmp_path / "b", workers=2, spare=False)
        try:
            await a.apply(plan(VIP_A, port, backends))
            placed = {c: await asyncio.to_thread(who, VIP_A, port, c) for c in CLIENTS}
            entries, _ = await exported(a, 0, len(CLIENTS))
            b.import_sticky(entries)  # not started: kept for its workers
            await b.apply(plan(VIP_B, port, backends))
            through_b = {}
            for client in reversed(CLIENTS):
                through_b[client] = await asyncio.to_thread(who, VIP_B, port, client)
            return placed, through_b
        finally:
            await asyncio.gather(a.close(), b.close())

    placed, through_b = asyncio.run(scenario())
    assert len(set(placed.values())) == 3, placed
    assert through_b == placed
