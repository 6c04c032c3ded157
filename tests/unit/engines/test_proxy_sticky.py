"""The control process's mirror of the workers' persistence entries (engines/proxy_sticky.py),
against workers' real command handler (ProxyControl.handle) in this process: only the Unix
socket between them is left out (tests/integration/test_sticky_share.py has it)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from tests.unit.core.test_plan import config

from pacslb.config import Config
from pacslb.core.plan import Plan, build_plan
from pacslb.engines.proxy_sticky import StickyMirror, replaces_steered_listeners
from pacslb.errors import EngineError
from pacslb.proxy.runtime import ServiceRuntime
from pacslb.proxy.server import ProxyControl, ProxyProcess

_pids = itertools.count(1000)


def plan(persistence: dict[str, Any] | None = None, cert: str = "a", timeout: int = 600) -> Plan:
    return build_plan(
        Config.model_validate(
            {
                "virtual_services": [
                    {
                        "label": "Viewer",
                        "vip": "127.10.4.7",
                        "ports": [443],
                        "mode": "l7-http",
                        "persistence": persistence or {"type": "source-ip", "timeout": timeout},
                        "health_check": {"type": "none"},
                        "tls": {"certificates": [{"certificate": f"/{cert}.crt"}]},
                        "real_servers": [
                            {"label": "Srv1", "address": "127.10.4.8"},
                            {"label": "Srv2", "address": "127.10.4.9"},
                        ],
                    }
                ]
            }
        ),
        revision=1,
    )


class InProcessWorker:
    """A worker's ProxyProcess and command handler, its services set up without listeners."""

    def __init__(self, name: str, with_plan: Plan | None) -> None:
        self.name, self.pid = name, next(_pids)
        self.proxy = ProxyProcess(1024)
        self.control = ProxyControl(self.proxy, Path(f"/nonexistent/{name}.sock"))
        if with_plan is not None:
            self.proxy.plan = with_plan
            self.proxy.runtimes = {s.label: ServiceRuntime(s) for s in with_plan.services}

    async def call(self, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        answer = await self.control.handle(payload)
        if not answer["ok"]:
            raise EngineError(answer["error"])
        return answer.get("result")

    def place(self, client: str, close: bool = True) -> str:
        runtime = self.proxy.runtimes["Viewer"]
        rs = runtime.pick(client)
        assert rs is not None
        if close:
            runtime.release(client, rs.label)
        return rs.label

    def server_of(self, client: str) -> str | None:
        table = self.proxy.runtimes["Viewer"].balancer.sticky
        assert table is not None
        return table.lookup(client, time.monotonic())


def test_collect_then_export_lists_each_change_once() -> None:
    async def scenario() -> None:
        mirror = StickyMirror()
        a, b = InProcessWorker("proxy-0", plan()), InProcessWorker("proxy-1", plan())
        placed = {"10.0.0.1": a.place("10.0.0.1"), "10.0.0.2": b.place("10.0.0.2", close=False)}
        await mirror.collect([a, b])
        entries, cursor = mirror.export(0)
        assert {e["key"]: e["server"] for e in entries} == placed
        ttl = {e["key"]: e["ttl"] for e in entries}
        assert ttl["10.0.0.2"] == 600  # open: the timeout
        assert 599 < ttl["10.0.0.1"] <= 600
        await mirror.collect([a, b])
        assert mirror.export(cursor) == ([], cursor)
        a.place("10.0.0.3")
        await mirror.collect([a, b])
        assert [e["key"] for e in mirror.export(cursor)[0]] == ["10.0.0.3"]

    asyncio.run(scenario())


def test_a_replaced_worker_is_read_from_its_start_and_a_dead_one_s_open_entries_close() -> None:
    async def scenario() -> None:
        mirror = StickyMirror()
        a = InProcessWorker("proxy-0", plan())
        a.place("10.0.0.1", close=False)
        await mirror.collect([a])
        _, cursor = mirror.export(0)
        mirror.worker_lost("proxy-0")  # its connection died with it: counts down from now
        entries = mirror.entries()
        assert len(entries) == 1 and entries[0]["ttl"] <= 600
        fresh = InProcessWorker("proxy-0", plan())  # same name, another process
        fresh.place("10.0.0.9")
        await mirror.collect([fresh])
        assert [e["key"] for e in mirror.export(cursor)[0]] == ["10.0.0.9"]

    asyncio.run(scenario())


def test_open_entries_are_listed_again_every_half_timeout() -> None:
    async def scenario() -> None:
        mirror = StickyMirror()
        a = InProcessWorker("proxy-0", plan(timeout=60))
        a.place("10.0.0.1", close=False)
        await mirror.collect([a])
        _, cursor = mirror.export(0)
        mirror._relist_open(time.monotonic() + 29)
        assert mirror.export(cursor)[0] == []
        mirror._relist_open(time.monotonic() + 31)
        assert [e["ttl"] for e in mirror.export(cursor)[0]] == [60]

    asyncio.run(scenario())


def test_learnt_entries_reach_every_worker_and_are_not_exported() -> None:
    async def scenario() -> None:
        mirror = StickyMirror()
        a, b = InProcessWorker("proxy-0", plan()), InProcessWorker("proxy-1", plan())
        own = a.place("10.0.0.1")
        await mirror.collect([a, b])
        _, cursor = mirror.export(0)
        other = "Srv2" if own == "Srv1" else "Srv1"
        mirror.learn(
            [
                {"service": "Viewer", "key": "10.0.0.1", "server": other, "ttl": 30},
                {"service": "Viewer", "key": "10.0.0.5", "server": "Srv2", "ttl": 30},
                {"service": "Nowhere", "key": "10.0.0.6", "server": "Srv2", "ttl": 30},
                {"service": "Viewer", "key": "10.0.0.7", "server": "Gone", "ttl": 30},
                {"service": "Viewer", "key": "10.0.0.8", "server": "Srv1", "ttl": 0},
            ],
            [a, b],
        )
        await mirror.settled()
        assert a.server_of("10.0.0.1") == own  # its own live entry is kept
        assert b.server_of("10.0.0.1") == own  # b has a's (shared at collect): kept too
        assert a.server_of("10.0.0.5") == b.server_of("10.0.0.5") == "Srv2"
        assert a.server_of("10.0.0.7") is None and a.server_of("10.0.0.8") is None
        assert mirror.export(cursor)[0] == []  # learnt: not listed back to the peer
        b.place("10.0.0.9")
        await mirror.collect([a, b])
        assert [e["key"] for e in mirror.export(cursor)[0]] == ["10.0.0.9"]
        taken = mirror.learn(
            [
                {"service": "Viewer", "key": "10.0.0.20", "server": "Srv1", "ttl": 5},
                {"service": "Viewer", "key": "10.0.0.21", "server": "Srv1", "ttl": -1},
            ],
            [a, b],
        )
        await mirror.settled()
        # One bad entry is skipped and counted; the good ones of the same batch are taken.
        assert taken == 1 and a.server_of("10.0.0.20") == "Srv1"
        assert a.server_of("10.0.0.21") is None
        assert mirror.skipped["malformed"] == 1
        assert mirror.last_skip.startswith("sticky entry [1].ttl")
        with pytest.raises(ValueError, match="must be a list"):
            mirror.learn({"not": "a list"}, [a, b])

    asyncio.run(scenario())


def test_a_spare_keeps_seeded_entries_for_its_first_plan() -> None:
    async def scenario() -> None:
        mirror = StickyMirror()
        a = InProcessWorker("proxy-0", plan())
        server = a.place("10.0.0.1")
        await mirror.collect([a])
        spare = InProcessWorker("proxy-1", None)
        assert await mirror.seed([spare]) == []
        assert len(spare.proxy.pending_sticky) == 1
        spare.proxy.plan = plan()
        spare.proxy.runtimes = {s.label: ServiceRuntime(s) for s in plan().services}
        from pacslb.proxy import sticky_share

        _, waiting = sticky_share.learn(spare.proxy.runtimes, spare.proxy.pending_sticky)
        assert waiting == [] and spare.server_of("10.0.0.1") == server

    asyncio.run(scenario())


def test_which_plans_replace_a_steered_listener() -> None:
    assert not replaces_steered_listeners(None, plan())
    assert not replaces_steered_listeners(plan(), plan())
    assert replaces_steered_listeners(plan(cert="a"), plan(cert="b"))  # a new certificate
    cookie = {"type": "http-cookie"}
    assert not replaces_steered_listeners(plan(cookie, "a"), plan(cookie, "b"))  # not steered
    assert not replaces_steered_listeners(build_plan(config(), revision=1), plan())  # new VIP


def test_a_learnt_ttl_is_cut_to_the_services_timeout_and_the_table_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pacslb.engines.proxy_sticky as proxy_sticky

    async def scenario() -> None:
        mirror = StickyMirror()
        mirror.plan_applied(plan(timeout=60))
        a = InProcessWorker("proxy-0", plan(timeout=60))
        huge = {"service": "Viewer", "key": "10.0.1.1", "server": "Srv1", "ttl": 1e12}
        elsewhere = {"service": "Nowhere", "key": "10.0.1.2", "server": "Srv1", "ttl": 30}
        assert mirror.learn([huge, elsewhere], [a]) == 1
        await mirror.settled()
        [held] = mirror.entries()
        assert held["key"] == "10.0.1.1" and held["ttl"] <= 60  # not a 30,000-year entry
        assert mirror.skipped["unknown-service"] == 1
        monkeypatch.setattr(proxy_sticky, "MAX_HELD", 3)
        batch = [
            {"service": "Viewer", "key": f"10.0.2.{i}", "server": "Srv1", "ttl": 30}
            for i in range(5)
        ]
        assert mirror.learn(batch, [a]) == 2  # 1 held + 2 = 3: the bound
        assert len(mirror) == 3 and mirror.skipped["full"] == 3
        await mirror.settled()

    asyncio.run(scenario())


def test_calling_ae_entries_are_shared_by_title_and_keys_of_the_wrong_kind_skipped() -> None:
    def dicom_plan() -> Plan:
        return build_plan(
            Config.model_validate(
                {
                    "virtual_services": [
                        {
                            "label": "Viewer",  # (the helpers above name this service)
                            "vip": "127.10.4.7",
                            "ports": [104],
                            "mode": "l7-dicom",
                            "persistence": {"type": "calling-ae", "timeout": 600},
                            "health_check": {"type": "none"},
                            "real_servers": [
                                {"label": "Srv1", "address": "127.10.4.8"},
                                {"label": "Srv2", "address": "127.10.4.9"},
                            ],
                        }
                    ]
                }
            ),
            revision=1,
        )

    async def scenario() -> None:
        mirror = StickyMirror()
        a, b = InProcessWorker("proxy-0", dicom_plan()), InProcessWorker("proxy-1", dicom_plan())
        mirror.plan_applied(dicom_plan())
        own = a.place("CT_SCANNER_1", close=False)  # an association open on worker a
        await mirror.collect([a, b])
        assert b.server_of("CT_SCANNER_1") == own  # shared with the other worker
        assert [e["key"] for e in mirror.export(0)[0]] == ["CT_SCANNER_1"]
        taken = mirror.learn(
            [
                {"service": "Viewer", "key": "MR_2", "server": "Srv2", "ttl": 30},
                {"service": "Viewer", "key": "10.0.0.1", "server": "Srv2", "ttl": 30},
            ],
            [a, b],
        )
        await mirror.settled()
        assert taken == 1 and a.server_of("MR_2") == b.server_of("MR_2") == "Srv2"
        assert mirror.last_skip == "sticky entry [1].key: an IP address for Viewer"
        source_ip = StickyMirror()
        source_ip.plan_applied(plan())
        entry = {"service": "Viewer", "key": "MR_2", "server": "Srv2", "ttl": 9}
        assert source_ip.learn([entry], []) == 0  # a title for a source-ip service
        assert source_ip.skipped["malformed"] == 1

    asyncio.run(scenario())
