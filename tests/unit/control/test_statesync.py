"""State sync's shell between two nodes on loopback (127.10.3.x, H3's block), with stand-in
engines that hold entries in memory (the real kernel engine runs in tests/netns/test_ha_sync.py):
what the active node sends reaches the other, how it is imported for each role, what is
rejected and counted, and that a (re)started peer is sent everything at once."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from pacslb import config as c
from pacslb.control.statesync import StateSync
from pacslb.core.ha_role import HaState, Role
from pacslb.core.syncwire import MapEntry, Sealer

A, B = "127.10.3.1", "127.10.3.2"
PORT = 23446  # H3's block
SECRET = "state sync unit test secret"


class Kernel:
    name = "kernel"

    def __init__(self, entries: list[MapEntry] | None = None) -> None:
        self.entries = list(entries or [])
        self.imports: list[tuple[list[MapEntry], bool]] = []

    def export_state(self, complete: bool = True) -> list[MapEntry]:
        """All entries when `complete`; else none of the long-lived ones (as the kernel engine
        lists only the recent flows then)."""
        return list(self.entries) if complete else []

    def import_state(self, entries: list[MapEntry], replace: bool = False) -> int:
        self.imports.append((entries, replace))
        return len(entries)


class Proxy:
    name = "proxy"

    def __init__(self, sticky: list[dict[str, Any]] | None = None) -> None:
        self.sticky = list(sticky or [])
        self.imported: list[dict[str, Any]] = []
        self.cursors: list[int] = []

    def export_sticky(self, since: int) -> tuple[list[dict[str, Any]], int]:
        self.cursors.append(since)
        return self.sticky[since:], len(self.sticky)

    def import_sticky(self, entries: list[dict[str, Any]]) -> None:
        self.imported.extend(entries)


def flow(port: int) -> MapEntry:
    return MapEntry(
        "netdev", "s0a1b2c3d_flows", (port, 4000, "198.18.0.10"), "02:00:00:00:01:01", 30, 1700
    )


def settings(me: str, peer: str, secret: str = SECRET) -> c.HASettings:
    return c.HASettings.model_validate(
        {"enabled": True, "address": me, "peers": [peer], "secret": secret, "sync_port": PORT}
    )


async def until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_the_active_node_sends_and_the_passive_one_imports_with_the_newer_expiry() -> None:
    async def main() -> None:
        ka, kb = Kernel([flow(i) for i in range(300)]), Kernel()
        pa = Proxy([{"service": "Web", "key": "198.18.0.10", "server": "rs2", "ttl": 600}])
        pb = Proxy()
        ha_a, ha_b = HaState(Role.ACTIVE), HaState(Role.PASSIVE)
        notes: list[str] = []
        a = StateSync(settings(A, B), ha_a, [ka, pa], notes.append)
        b = StateSync(settings(B, A), ha_b, [kb, pb], notes.append)
        await a.start()
        await b.start()
        try:
            await until(lambda: sum(len(e) for e, _ in kb.imports) >= 300, "300 flows on b")
            got = {e.key for entries, _ in kb.imports for e in entries}
            assert got == {flow(i).key for i in range(300)}
            assert all(replace for _, replace in kb.imports)  # standing by: the sender's wins
            await until(lambda: pb.imported, "sticky entries on b")
            assert pb.imported == pa.sticky
            assert a.sent > 1 and b.received > 1 and not a.rejected and not b.rejected
            # Then the rounds send nothing new: a heartbeat is all. (b's first heartbeat may
            # still make a send everything once more, as to a peer that restarted: a loaded
            # machine can put it after the first rounds, so a quiet 0.6 s is waited for.)
            for _ in range(10):
                before = sum(len(e) for e, _ in kb.imports)
                await asyncio.sleep(0.6)
                if sum(len(e) for e, _ in kb.imports) == before:
                    break
            else:
                raise AssertionError("a keeps sending the same flows again")
            # A takeover: b active, a standing by; b's new flows go to a, kept as a holds them.
            ha_a.set(Role.PASSIVE)
            ha_b.set(Role.ACTIVE)
            kb.entries = [flow(5000)]
            await until(lambda: any(e.key == flow(5000).key for x, _ in ka.imports for e in x), "a")
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_a_restarted_peer_is_sent_everything_at_once() -> None:
    async def main() -> None:
        ka = Kernel([flow(i) for i in range(50)])
        a = StateSync(settings(A, B), HaState(Role.ACTIVE), [ka], lambda m: None)
        await a.start()
        kb = Kernel()
        b = StateSync(settings(B, A), HaState(Role.PASSIVE), [kb], lambda m: None)
        try:
            await asyncio.sleep(0.6)  # a has sent its full round to nobody: b is not up yet
            await b.start()  # its heartbeat tells a; a's next round is a full one
            await until(lambda: sum(len(e) for e, _ in kb.imports) >= 50, "the full round")
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_forged_and_foreign_datagrams_are_counted_and_change_nothing() -> None:
    async def main() -> None:
        kb = Kernel()
        notes: list[str] = []
        b = StateSync(settings(B, A), HaState(Role.PASSIVE), [kb], notes.append)
        await b.start()
        try:
            good = Sealer(SECRET, "lb1", 1, receivers=[B]).seal([flow(1)], time.time())[0]
            wrong = Sealer("not the group's secret!", "lb1", 1, receivers=[B]).seal([flow(2)], 1e9)[
                0
            ]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((A, 0))  # the peer's address: authenticated by the MAC only
                s.sendto(wrong, (B, PORT))
                s.sendto(good, (B, PORT))
                s.sendto(good, (B, PORT))  # replayed
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.10.3.9", 0))  # not a peer at all
                s.sendto(good, (B, PORT))
            await until(lambda: sum(b.rejected.values()) == 3, "three rejections")
            assert b.rejected == {"bad-mac": 1, "replay": 1, "unknown-peer": 1}
            await until(lambda: kb.imports, "the one good datagram imported")
            assert [e.key for e in kb.imports[0][0]] == [flow(1).key]
            assert any("rejected" in n for n in notes)  # reported as events, once per kind
        finally:
            await b.close()

    asyncio.run(main())


def test_the_counters_are_in_metrics_by_reason() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pacslb.control.hasync import HaSync, metrics

    sync = HaSync()
    sync.statesync = StateSync(settings(A, B), HaState(Role.ACTIVE), [], lambda m: None)
    sync.statesync.sent, sync.statesync.received = 7, 5
    sync.statesync.rejected["bad-mac"] = 2

    class Collector:
        def collect(self) -> Any:
            return metrics(sync)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert "pacslb_sync_sent_total 7.0" in text
    assert "pacslb_sync_received_total 5.0" in text
    assert 'pacslb_sync_rejected_total{reason="bad-mac"} 2.0' in text
    assert 'pacslb_sync_rejected_total{reason="replay"} 0.0' in text


def test_a_reload_restarts_state_sync_only_when_its_settings_changed(tmp_path: Any) -> None:
    from types import SimpleNamespace

    from pacslb.control.hasync import reconfigure_ha_sync, start_ha_sync

    def config(peer: str, enabled: bool = True) -> c.Config:
        return c.Config.model_validate(
            {
                "version": 1,
                "node": {"ha": {**settings(A, peer).model_dump(), "enabled": enabled}},
                "virtual_services": [],
            }
        )

    async def main() -> None:
        events: list[str] = []
        process = SimpleNamespace(
            config=config(B),
            ha=HaState(Role.PASSIVE),
            engines=[],
            state_dir=tmp_path,
            _record=lambda kind, message: events.append(message),
        )
        sync = await start_ha_sync(process)  # type: ignore[arg-type]
        assert sync is not None and sync.statesync is not None and sync.conntrackd is None
        try:
            same = await reconfigure_ha_sync(process, sync, config(B))  # type: ignore[arg-type]
            assert same is sync
            old = process.config
            process.config = config("127.10.3.3")
            moved = await reconfigure_ha_sync(process, sync, old)  # type: ignore[arg-type]
            assert moved is not sync and moved is not None and moved.statesync is not None, events
            assert moved.statesync.peers == {"127.10.3.3"}
            old, process.config = process.config, config(B, enabled=False)
            assert await reconfigure_ha_sync(process, moved, old) is None  # type: ignore[arg-type]
        finally:
            await sync.close()
        assert any("restarted" in e for e in events)

    asyncio.run(main())
