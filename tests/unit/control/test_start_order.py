"""start() against a reload that comes in during start-up (the control socket and SIGHUP are
live before it), and the revision a fallback start names."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pacslb.control.app import ControlProcess
from pacslb.control.startup import BrokenFile
from pacslb.control.store import ConfigStore, read_config

GOOD = """version: 1
node: {{webui: {{enabled: false}}}}
virtual_services:
  - label: Web
    vip: 127.10.18.30
    ports: [8080]
    mode: l7-http
    health_check: {{type: none}}
    real_servers:
      - {{label: Srv1, address: 127.10.18.1, port: {port}}}
"""


def fallback(tmp_path: Path, good: str) -> tuple[Path, ControlProcess]:
    """A process started from `good` (the last good revision) because the file is broken."""
    path = tmp_path / "pacslb.yaml"
    path.write_text(good)
    text, config = read_config(path)
    path.write_text(good.replace("mode: l7-http", "mode: l7-htp"))
    broken = BrokenFile(path, ("Web › mode: ...",), 1)
    state = tmp_path / "state"
    return path, ControlProcess(path, config, text, (), state, broken_file=broken)


def test_a_reload_during_start_up_waits_for_start_and_ends_degraded(tmp_path: Path) -> None:
    good = GOOD.format(port=18081)
    ConfigStore(tmp_path / "state").save(good, "first run")
    path, process = fallback(tmp_path, good)

    async def main() -> None:
        path.write_text(GOOD.format(port=18082))  # the operator fixes the file, and reloads
        reload = asyncio.create_task(process.reload())
        await asyncio.sleep(0.5)  # before: the reload was applied here, before start()
        await process.start()
        answer = await asyncio.wait_for(reload, 10)
        assert answer["revision"] == 2 and process.revision == 2
        assert process.degraded() == [], process.degraded()
        assert process.config.virtual_services[0].real_servers[0].port == 18082
        await process.stop()

    asyncio.run(main())
    events = [
        json.loads(line)["message"]
        for line in (tmp_path / "state" / "events.jsonl").read_text().splitlines()
    ]
    applied = [m for m in events if m.startswith("applying revision")]
    assert applied == [
        "applying revision 1 the last good one",
        f"applying revision 2: reload {path}",
    ]


def test_a_fallback_saved_again_names_the_revision_it_runs(tmp_path: Path) -> None:
    good, later = GOOD.format(port=18081), GOOD.format(port=18083)
    store = ConfigStore(tmp_path / "state")
    store.save(good, "first run")
    store.save(later, "a revision no longer valid here, say")
    _, process = fallback(tmp_path, good)

    async def main() -> None:
        await process.start()
        assert process.revision == 3
        (reason,) = process.degraded()
        assert "running revision 3, the last good one" in reason, reason
        await process.stop()

    asyncio.run(main())
