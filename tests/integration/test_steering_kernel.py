"""The kernel facts core/steering.py is built on, checked on this kernel with real sockets on
loopback (127.10.4.0/24): the selector's index is the socket's place in listen() order; a
closed socket's place is taken by the last one; an index past the group's end falls back to
the kernel's 4-tuple hash; shutdown() takes a socket out of the group even while another
descriptor of it is open."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.procs import free_port

from pacslb.core.steering import program, worker_index
from pacslb.proxy.steering import attach, detach, steer

VIP = "127.10.4.240"
CLIENTS = [f"127.10.4.{i}" for i in range(200, 216)]


def listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((VIP, port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def taker(socks: list[socket.socket], port: int, client: str) -> int:
    """Which of `socks` accepts a new connection from `client`."""
    with socket.socket() as conn:
        conn.bind((client, 0))
        conn.connect((VIP, port))
        ready, _, _ = select.select(socks, [], [], 2)
        assert len(ready) == 1, ready
        accepted, _ = ready[0].accept()
        accepted.close()
    return socks.index(ready[0])


@pytest.fixture
def group() -> Iterator[tuple[list[socket.socket], int]]:
    port = free_port(VIP)
    socks = [listener(port) for _ in range(3)]
    try:
        yield socks, port
    finally:
        for sock in socks:
            sock.close()


def test_the_kernel_picks_the_socket_worker_index_names(
    group: tuple[list[socket.socket], int],
) -> None:
    socks, port = group
    steer(socks[1], 3, 32)  # any member sets the group's program
    for _ in range(3):
        assert [taker(socks, port, c) for c in CLIENTS] == [worker_index(c, 3, 32) for c in CLIENTS]
    steer(socks[2], 3, 24)  # one /24: one socket for all
    assert {taker(socks, port, c) for c in CLIENTS} == {worker_index(CLIENTS[0], 3, 24)}
    steer(socks[0], 3, None)  # detached: the 4-tuple hash spreads one client's connections
    assert len({taker(socks, port, CLIENTS[0]) for _ in range(40)}) > 1
    detach(socks[0])  # detaching twice is no error


def test_a_closed_socket_s_place_goes_to_the_last_and_out_of_range_falls_back(
    group: tuple[list[socket.socket], int],
) -> None:
    socks, port = group
    socks[0].close()
    rest = [socks[2], socks[1]]  # the last moved into place 0
    attach(rest[0], program(4, 2, 32))
    assert [taker(rest, port, c) for c in CLIENTS] == [worker_index(c, 2, 32) for c in CLIENTS]
    attach(rest[0], program(4, 3, 32))  # index 2 does not exist: the kernel's own hash
    fallback = [c for c in CLIENTS if worker_index(c, 3, 32) == 2]
    assert fallback
    assert {taker(rest, port, fallback[0]) for _ in range(40)} == {0, 1}
    for client in CLIENTS:
        if worker_index(client, 3, 32) < 2:
            assert taker(rest, port, client) == worker_index(client, 3, 32)


def test_shutdown_leaves_the_group_although_a_descriptor_stays_open(
    group: tuple[list[socket.socket], int],
) -> None:
    socks, port = group
    steer(socks[0], 3, 32)
    kept = socks[0].dup()
    try:
        socks[0].shutdown(socket.SHUT_RDWR)
        rest = [socks[2], socks[1]]
        assert {taker(rest, port, c) for c in CLIENTS} == {0, 1}
    finally:
        kept.close()


def test_a_worker_steers_source_ip_listeners_only(tmp_path: Path) -> None:
    """A worker (ProxyProcess, in this process) with the worker count of its apply request:
    a socket of the test joins its group as the second "worker" and takes exactly the clients
    worker_index gives index 1; without source-ip persistence the kernel's hash is back."""
    import asyncio

    from pacslb.config import Config
    from pacslb.core.plan import build_plan
    from pacslb.proxy.server import ProxyControl, ProxyProcess

    port = free_port(VIP)

    def plan(persistence: dict[str, object], revision: int) -> dict[str, Any]:
        service = {
            "label": "Archive",
            "vip": VIP,
            "ports": [port],
            "mode": "l7-tcp",
            "persistence": persistence,
            "health_check": {"type": "none"},
            "real_servers": [{"label": "Srv1", "address": "127.10.4.241", "port": 9}],
        }
        config = Config.model_validate({"virtual_services": [service]})
        result: dict[str, Any] = json.loads(build_plan(config, revision=revision).to_json())
        return result

    async def scenario() -> tuple[list[bool], list[bool]]:
        proxy = ProxyProcess(1024)
        control = ProxyControl(proxy, tmp_path / "w.sock")
        sticky = {"type": "source-ip", "timeout": 60}
        request = {"cmd": "apply", "workers": 2, "plan": plan(sticky, 1)}
        assert (await control.handle(request)) == {"ok": True}
        ours = listener(port)  # index 1 of the group
        try:
            steered = [await asyncio.to_thread(taken_by_us, ours, port, c) for c in CLIENTS]
            request = {"cmd": "apply", "plan": plan({"type": "none"}, 2)}
            assert (await control.handle(request)) == {"ok": True}
            spread = [
                await asyncio.to_thread(taken_by_us, ours, port, CLIENTS[0]) for _ in range(16)
            ]
        finally:
            ours.close()
            proxy.close()
        return steered, spread

    steered, spread = asyncio.run(scenario())
    assert steered == [worker_index(c, 2, 32) == 1 for c in CLIENTS]
    assert any(spread) and not all(spread)


def taken_by_us(ours: socket.socket, port: int, client: str) -> bool:
    """Whether `ours` accepts a new connection from `client` (else the worker's socket did)."""
    with socket.socket() as conn:
        conn.bind((client, 0))
        conn.connect((VIP, port))
        ready, _, _ = select.select([ours], [], [], 0.3)
        if ready:
            ours.accept()[0].close()
        return bool(ready)
