"""The kernel engine's apply logic with an injected nftables runner and host (no root)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pacslb import config as c
from pacslb.core.plan import build_plan
from pacslb.core.state import AdminState
from pacslb.engines.host import Route
from pacslb.engines.kernel import KernelEngine
from pacslb.errors import EngineError


class FakeNft:
    def __init__(self, fail: str = "") -> None:
        self.scripts: list[str] = []
        self.fail = fail

    def run(self, script: str) -> str:
        if self.fail:
            raise EngineError(self.fail)
        self.scripts.append(script)
        return ""

    def json(self, command: str) -> Any:
        assert command == "list tables"
        return {"nftables": []}  # nothing live yet


class FakeHost:
    def __init__(self) -> None:
        self.asked = 0
        self.added: list[tuple[str, str]] = []

    def route(self, address: str) -> Route:
        self.asked += 1
        return Route("eth1", None, False)

    def link_mac(self, device: str) -> str:
        return "02:00:00:00:00:01"

    def resolve(self, addresses: list[str]) -> dict[str, str]:
        return {a: f"02:00:00:00:01:{i:02x}" for i, a in enumerate(addresses)}

    def add_address(self, address: str, device: str) -> None:
        self.added.append((address, device))

    def del_address(self, address: str, device: str) -> None:
        self.added.remove((address, device))

    def enable_forwarding(self, version: int) -> bool:
        return False

    def ip(self, *args: str) -> Any:
        return []  # no policy rule of transparent mode (engines/tproxy.py) on this host


def config(mode: str = "l4-dr") -> c.Config:
    return c.Config.model_validate(
        {
            "virtual_services": [
                {
                    "label": "DICOM",
                    "vip": "198.18.0.100",
                    "ports": [4000],
                    "mode": mode,
                    "real_servers": [
                        {"label": "a", "address": "198.18.0.11"},
                        {"label": "b", "address": "198.18.0.12"},
                    ],
                }
            ]
        }
    )


def engine(tmp_path: Path, nft: FakeNft, host: FakeHost) -> KernelEngine:
    return KernelEngine(tmp_path, nft_runner=nft, host=host)  # type: ignore[arg-type]


def test_a_drain_is_an_element_update_and_asks_the_host_nothing(tmp_path: Path) -> None:
    nft, host = FakeNft(), FakeHost()
    kernel = engine(tmp_path, nft, host)

    async def scenario() -> None:
        await kernel.apply(build_plan(config()))
        asked = host.asked
        await kernel.apply(build_plan(config(), admin={("DICOM", "a"): AdminState.DRAIN}))
        assert host.asked == asked  # same addresses: the cached facts serve
        await kernel.close()

    asyncio.run(scenario())
    full, drain = nft.scripts
    assert full.startswith("add table netdev pacslb") and "chain" in full
    assert "chain" not in drain and "flush map netdev pacslb" in drain
    assert host.added == [("198.18.0.100", "eth1")]  # the VIP, on the servers' segment


def test_an_engine_without_layer4_services_never_touches_nftables(tmp_path: Path) -> None:
    nft = FakeNft(fail="must not be called")
    kernel = engine(tmp_path, nft, FakeHost())
    proxy_only = config("l7-tcp")
    asyncio.run(kernel.apply(build_plan(proxy_only)))
    assert nft.scripts == []


def test_a_layer7_vip_beside_layer4_services_is_placed_too(tmp_path: Path) -> None:
    """nat-l7: Manager's l7-http VIP sits in the clients' subnet beside DICOM's l4-nat one;
    without the address on the interface nobody reaches the proxy listening on it."""
    nft, host = FakeNft(), FakeHost()
    kernel = engine(tmp_path, nft, host)
    mixed = config("l4-nat").model_dump()
    manager = {**mixed["virtual_services"][0], "label": "Manager", "vip": "198.18.0.101"}
    mixed["virtual_services"].append({**manager, "mode": "l7-http", "ports": [80]})

    async def scenario() -> None:
        await kernel.apply(build_plan(c.Config.model_validate(mixed)))
        assert host.added == [("198.18.0.100", "eth1"), ("198.18.0.101", "eth1")]
        del mixed["virtual_services"][1]  # the layer 7 service goes: so does its address
        await kernel.apply(build_plan(c.Config.model_validate(mixed)))
        await kernel.close()

    asyncio.run(scenario())
    assert host.added == [("198.18.0.100", "eth1")]
    assert "198.18.0.101" not in nft.scripts[0]  # the proxy forwards it, not the kernel


def test_a_refused_transaction_keeps_the_old_state_and_says_why(tmp_path: Path) -> None:
    nft, host = FakeNft(), FakeHost()
    kernel = engine(tmp_path, nft, host)
    plan = build_plan(config())

    async def scenario() -> None:
        await kernel.apply(plan)
        nft.fail = "nftables: Error: Operation not permitted"
        with pytest.raises(EngineError, match="need root"):
            await kernel.apply(build_plan(config(), admin={("DICOM", "a"): AdminState.HALT}))
        await kernel.close()

    asyncio.run(scenario())
    assert kernel._plan is plan  # what the kernel holds is still the first Plan


def test_a_dr_server_without_a_mac_is_left_out_and_the_others_forward(tmp_path: Path) -> None:
    nft, host = FakeNft(), FakeHost()
    answering = ["198.18.0.11"]
    host.resolve = (
        lambda addresses: {  # type: ignore[method-assign]
            a: f"02:00:00:00:01:{a[-2:]}" for a in addresses if a in answering
        }
    )
    notes: list[str] = []
    kernel = KernelEngine(tmp_path, nft_runner=nft, host=host, notify=notes.append)  # type: ignore[arg-type]

    async def scenario() -> None:
        await kernel.apply(build_plan(config()))
        answering.append("198.18.0.12")  # b answers ARP now: the next apply takes it in
        await kernel.apply(build_plan(config()))
        await kernel.close()

    asyncio.run(scenario())
    first, second = nft.scripts
    assert "02:00:00:00:01:11" in first and "jump" in first  # a forwards from the start
    assert "02:00:00:00:01:12" not in first and "02:00:00:00:01:12" in second
    assert notes == [
        "DICOM/b: no ARP answer, so no MAC address: not forwarded to until it answers "
        "(is it up, on this segment?)",
        "added VIP 198.18.0.100 to eth1",
    ]
    assert kernel._unresolved == set()


def test_a_table_deleted_by_hand_is_rebuilt_on_the_next_update(tmp_path: Path) -> None:
    nft, host = FakeNft(), FakeHost()
    kernel = engine(tmp_path, nft, host)
    refused = []
    run = nft.run

    def run_once_refusing(script: str) -> str:
        if script.startswith("flush map") and not refused:
            refused.append(script)
            raise EngineError("nftables: Error: No such file or directory")
        return run(script)

    nft.run = run_once_refusing  # type: ignore[method-assign]

    async def scenario() -> None:
        await kernel.apply(build_plan(config()))
        await kernel.apply(build_plan(config(), admin={("DICOM", "a"): AdminState.DRAIN}))
        await kernel.close()

    asyncio.run(scenario())
    assert refused and nft.scripts[-1].startswith("add table netdev pacslb")
