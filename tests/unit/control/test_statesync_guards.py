"""State sync's shell against a reflected datagram and a flood of rejected ones, on loopback
(127.10.12.x, F2's block): its own datagram sent back changes nothing (no forced full round),
and a peer whose clock is off by a minute makes one event, not one per datagram."""

from __future__ import annotations

import asyncio
import socket
import time

from prometheus_client import CollectorRegistry, generate_latest

from pacslb import config as c
from pacslb.control.hasync import HaSync, metrics
from pacslb.control.statesync import StateSync
from pacslb.core.ha_role import HaState, Role
from pacslb.core.syncwire import MapEntry, Sealer

A, B = "127.10.12.1", "127.10.12.2"
PORT = 32446  # F2's block
SECRET = "state sync guard test secret"


class Kernel:
    name = "kernel"

    def __init__(self) -> None:
        self.imports: list[list[MapEntry]] = []

    def export_state(self, complete: bool = True) -> list[MapEntry]:
        return []

    def import_state(self, entries: list[MapEntry], replace: bool = False) -> int:
        self.imports.append(entries)
        return len(entries)


def flow(port: int) -> MapEntry:
    return MapEntry(
        "netdev", "s0a1b2c3d_flows", (port, 4000, "198.18.0.10"), "02:00:00:00:01:01", 30, 1700
    )


def settings(me: str, peer: str) -> c.HASettings:
    return c.HASettings.model_validate(
        {"enabled": True, "address": me, "peers": [peer], "secret": SECRET, "sync_port": PORT}
    )


async def until(predicate: object, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_a_reflected_datagram_is_dropped_and_counted() -> None:
    async def main() -> None:
        kernel = Kernel()
        b = StateSync(settings(B, A), HaState(Role.PASSIVE), [kernel], lambda m: None)
        await b.start()
        try:
            # What B itself sent to A (its own name, boot id and key), sent back from A's address.
            own = b._sealer.seal([flow(1)], time.time())[0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((A, 0))
                s.sendto(own, (B, PORT))
            await until(lambda: b.rejected, "the rejection")
            assert b.rejected == {"reflected": 1}
            assert b.received == 0 and not b._boots and not kernel.imports
        finally:
            await b.close()

    asyncio.run(main())


def test_a_peer_with_a_clock_a_minute_off_makes_one_event_and_a_count() -> None:
    async def main() -> None:
        notes: list[str] = []
        b = StateSync(settings(B, A), HaState(Role.PASSIVE), [Kernel()], notes.append)
        await b.start()
        try:
            sealer = Sealer(SECRET, A, 5, receivers=[B])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((A, 0))
                for i in range(40):  # a skew that differs in every datagram
                    s.sendto(sealer.seal([], time.time() - 60 - i * 0.37)[0], (B, PORT))
            await until(lambda: b.rejected["stale"] == 40, "40 stale datagrams")
            assert len([n for n in notes if "stale" in n]) == 1, notes
            sync = HaSync()
            sync.statesync = b
            registry = CollectorRegistry()
            registry.register(type("C", (), {"collect": lambda self: metrics(sync)})())
            text = generate_latest(registry).decode()
            assert 'pacslb_sync_rejected_total{reason="stale"} 40.0' in text
            assert 'pacslb_sync_events_held_back_total{kind="stale"} 39.0' in text
        finally:
            await b.close()

    asyncio.run(main())
