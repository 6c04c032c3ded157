"""proxy/source.py on loopback (block 127.10.1.0/24): which address an upstream connection
is bound to for each `source`, and that the socket really connects from it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket

import pytest
import uvloop

from pacslb import config as c
from pacslb.core.plan import build_plan
from pacslb.proxy.source import bind_address, open_upstream, upstream_socket

SERVER = "127.10.1.1"


def service(source: str, vip: str = "127.10.1.30") -> object:
    vs = c.VirtualService.model_validate(
        {
            "label": "Web",
            "vip": vip,
            "ports": [80],
            "mode": "l7-tcp",
            "real_servers": [{"label": "a", "address": SERVER}],
        }
    )
    plan = build_plan(c.Config(version=1, virtual_services=[vs]))
    return dataclasses.replace(plan.services[0], source=source)


def test_bind_address_per_source(caplog: pytest.LogCaptureFixture) -> None:
    client = "127.10.1.20"
    assert bind_address(service("auto"), client, SERVER) == ""  # type: ignore[arg-type]
    assert bind_address(service("vip"), client, SERVER) == "127.10.1.30"  # type: ignore[arg-type]
    assert bind_address(service("127.10.1.9"), client, SERVER) == "127.10.1.9"  # type: ignore[arg-type]
    assert bind_address(service("client"), client, SERVER) == client  # type: ignore[arg-type]
    # a v4 client seen through a dual-stack listener binds as IPv4
    mapped = f"::ffff:{client}"
    assert bind_address(service("client"), mapped, SERVER) == client  # type: ignore[arg-type]
    # another family than the server: the kernel's choice, said once
    with caplog.at_level(logging.WARNING, logger="pacslb.proxy.source"):
        assert bind_address(service("client"), "2001:2:1::10", SERVER) == ""  # type: ignore[arg-type]
        assert bind_address(service("client"), "2001:2:1::11", SERVER) == ""  # type: ignore[arg-type]
    said = [r.message for r in caplog.records if "different address families" in r.message]
    assert len(said) == 1


@pytest.mark.parametrize("transparent", [False, True])
def test_the_upstream_socket_connects_from_the_bound_address(transparent: bool) -> None:
    with socket.create_server((SERVER, 0)) as srv:
        port = srv.getsockname()[1]
        up = upstream_socket(SERVER, "127.10.1.9", transparent)
        try:
            assert up.getblocking() is False
            up.setblocking(True)
            up.connect((SERVER, port))
            conn, peer = srv.accept()
            conn.close()
            assert peer[0] == "127.10.1.9"
        finally:
            up.close()


def test_open_upstream_hands_the_bound_socket_to_uvloop() -> None:
    async def main() -> tuple[str, str]:
        seen: list[str] = []

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("peername")[0])
            writer.close()

        srv = await asyncio.start_server(accepted, SERVER, 0)
        port = srv.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        transport, _ = await open_upstream(
            loop, asyncio.Protocol, (SERVER, port), "127.10.1.8", False, None
        )
        local = transport.get_extra_info("sockname")[0]
        transport.close()
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.01)
        srv.close()
        return local, seen[0]

    assert uvloop.run(main()) == ("127.10.1.8", "127.10.1.8")
