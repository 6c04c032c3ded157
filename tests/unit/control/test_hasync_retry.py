"""State sync and conntrackd that fail to start are tried again, and the node says degraded
meanwhile (status line, /metrics gauge): on loopback, 127.10.12.x (F2's block)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pacslb import config as c
from pacslb.control import hasync
from pacslb.core.ha_role import HaState, Role

ME, PEER = "127.10.12.5", "127.10.12.6"
PORT = 32447  # F2's block


class Process:
    """What start_ha_sync reads of the control process."""

    def __init__(self, config: c.Config, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.ha = HaState(Role.PASSIVE)
        self.engines: list[Any] = []
        self.events: list[str] = []

    def _record(self, kind: str, message: str) -> None:
        self.events.append(message)


def config(ha: dict[str, Any], services: list[dict[str, Any]] | None = None) -> c.Config:
    settings = {"enabled": True, "peers": [PEER], "secret": "s" * 20, "sync_port": PORT, **ha}
    return c.Config.model_validate(
        {"version": 1, "node": {"ha": settings}, "virtual_services": services or []}
    )


def metrics_text(sync: hasync.HaSync) -> str:
    registry = CollectorRegistry()
    registry.register(type("C", (), {"collect": lambda self: hasync.metrics(sync)})())
    return generate_latest(registry).decode()


def test_state_sync_on_a_taken_port_is_retried_and_degraded_until_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hasync, "RETRY_DELAYS", (0.05, 0.1))
    process = Process(config({"address": ME, "interface": "lo"}), tmp_path)

    async def main() -> None:
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind((ME, PORT))  # the last run's socket, not closed yet
        sync = await hasync.start_ha_sync(process)  # type: ignore[arg-type]
        assert sync is not None
        try:
            assert sync.statesync is None
            [line] = sync.degraded()
            assert line.startswith("state sync is not running, so flows will not survive")
            assert "Address already in use" in line
            assert 'pacslb_ha_sync_up{part="statesync"} 0.0' in metrics_text(sync)
            await asyncio.sleep(0.4)  # a few more tries: one event, not one per try
            assert len([e for e in process.events if "not started" in e]) == 1
            taken.close()
            deadline = time.monotonic() + 5
            while sync.statesync is None:
                assert time.monotonic() < deadline, "state sync never started"
                await asyncio.sleep(0.05)
            assert sync.degraded() == []
            assert 'pacslb_ha_sync_up{part="statesync"} 1.0' in metrics_text(sync)
            assert any(e.startswith("state sync started at try") for e in process.events)
        finally:
            taken.close()
            await sync.close()

    asyncio.run(main())


def test_conntrackd_without_an_address_on_the_ha_interface_is_named_degraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lo has no global address: conntrackd cannot be given one to sync from (as at boot,
    before the HA interface got its address); the node says so and keeps trying."""
    monkeypatch.setattr(hasync, "RETRY_DELAYS", (0.05,))
    nat = {
        "label": "Nat",
        "vip": "198.18.1.100",
        "ports": [4000],
        "mode": "l4-nat",
        "real_servers": [{"label": "a", "address": "198.18.2.11"}],
    }
    process = Process(config({"interface": "lo"}, [nat]), tmp_path)

    async def main() -> None:
        sync = await hasync.start_ha_sync(process)  # type: ignore[arg-type]
        assert sync is not None
        try:
            await asyncio.sleep(0.3)
            lines = sync.degraded()
            assert any(line.startswith("conntrackd is not running") for line in lines), lines
            assert any("has no address" in line for line in lines), lines
            assert sync.tries["conntrackd"] >= 3
            assert 'pacslb_ha_sync_up{part="conntrackd"} 0.0' in metrics_text(sync)
        finally:
            await sync.close()
        assert sync._retries == []

    asyncio.run(main())
