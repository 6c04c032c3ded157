"""Publishing Plans to engines, in one process with stand-in engines: what readiness says when
an engine fails in a way it should not (a bug), or reports a failure of its own between two
applies, and which engines a retry reaches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from pacslb.control.app import ControlProcess
from pacslb.control.store import read_config
from pacslb.core.plan import Plan, ServerKey
from pacslb.engines.base import Counters
from pacslb.errors import EngineError

CONFIG = """version: 1
node: {webui: {enabled: false}}
virtual_services:
  - label: Web
    vip: 127.10.18.30
    ports: [8080]
    mode: l7-http
    health_check: {type: none}
    real_servers:
      - {label: Srv1, address: 127.10.18.1, port: 18081}
"""


class StandIn:
    """An engine that counts the Plans it took, and fails while `failure` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failure: Exception | None = None
        self.applied = 0  # Plans taken
        self.tried = 0  # applies asked for, taken or not

    async def apply(self, plan: Plan) -> None:
        self.tried += 1
        if self.failure is not None:
            raise self.failure
        self.applied += 1

    def counters(self) -> dict[ServerKey, Counters]:
        return {}

    async def close(self, keep_running: bool = False) -> None:
        pass


class Reporting(StandIn):
    """One that reports what happens to it (the proxy engine's notify hook)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.notify: Callable[..., None] = lambda *args: None


def run(
    tmp_path: Path, engines: list[StandIn], body: Callable[[ControlProcess], Awaitable[None]]
) -> None:
    path = tmp_path / "pacslb.yaml"
    path.write_text(CONFIG)
    text, config = read_config(path)

    async def main() -> None:
        process = ControlProcess(path, config, text, engines, tmp_path / "state")  # type: ignore[arg-type]
        await process.start()
        try:
            await body(process)
        finally:
            process.request_stop()
            await process.stop()

    asyncio.run(main())


def test_an_engine_bug_is_a_failure_of_that_engine_not_of_the_publish(tmp_path: Path) -> None:
    buggy, other = StandIn("buggy"), StandIn("other")
    buggy.failure = RuntimeError("a bug")

    async def body(process: ControlProcess) -> None:
        assert other.applied == 1  # the next engine was given the Plan all the same
        assert process.not_ready() == ["buggy: apply failed: RuntimeError('a bug')"]
        assert process.engine_records["buggy"].error == "RuntimeError('a bug')"
        assert "buggy: apply failed" in (tmp_path / "state" / "events.jsonl").read_text()
        buggy.failure = None
        await process.publish()  # no change in the Plan: the failing engine is given it again
        assert buggy.applied == 1 and process.ready

    run(tmp_path, [buggy, other], body)


def test_a_retry_goes_only_to_the_failing_engines(tmp_path: Path) -> None:
    failing, healthy = StandIn("kernel"), StandIn("proxy")
    failing.failure = EngineError("no route to 127.10.18.99")

    async def body(process: ControlProcess) -> None:
        assert healthy.applied == 1 and failing.tried == 1
        for _ in range(3):  # what _retry_failed_engines does every ENGINE_RETRY s
            await process.publish()
        assert failing.tried == 4 and healthy.applied == 1, (failing.tried, healthy.applied)
        await process.publish(force=True)  # an operator's re-apply reaches every engine
        assert healthy.applied == 2

    run(tmp_path, [failing, healthy], body)


def test_a_failure_an_engine_reports_makes_it_not_ready_until_it_takes_the_plan(
    tmp_path: Path,
) -> None:
    engine = Reporting("proxy")
    words = "worker proxy-1 did not take the last Plan: 127.10.18.30:8080: address in use"

    async def body(process: ControlProcess) -> None:
        assert process.ready and engine.applied == 1
        engine.notify(words, None, {"worker": "proxy-1", "reason": "plan-failed"})
        assert process.not_ready() == [f"proxy: apply failed: {words}"]
        engine.notify("worker proxy-1 replaced (crashed)", None, {"reason": "replaced"})
        assert not process.ready  # a replacement alone does not mean it serves the Plan
        await process.publish()  # the retry: nothing changed, but this engine gets it again
        assert engine.applied == 2 and process.ready

    run(tmp_path, [engine], body)
