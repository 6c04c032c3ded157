"""The checker: the stable spread of probe slots across the interval, and what a config edit
does to each server's loop and tracker."""

from __future__ import annotations

import asyncio

from pacslb import config as c
from pacslb.control.checker import HealthChecker, spread
from pacslb.core.validate import load_text


def test_spread_is_stable_and_inside_the_interval() -> None:
    assert spread(("Web", "Srv1"), 2.0) == spread(("Web", "Srv1"), 2.0)
    offsets = [spread(("Web", f"Srv{i}"), 2.0) for i in range(1000)]
    assert all(0 <= o < 2.0 for o in offsets)


def test_a_thousand_servers_fill_the_interval_evenly() -> None:
    """No thundering herd: every tenth of the interval gets about a tenth of the servers."""
    offsets = [spread(("DICOM", f"Srv{i}"), 2.0) for i in range(1000)]
    buckets = [0] * 10
    for o in offsets:
        buckets[int(o / 0.2)] += 1
    assert min(buckets) > 70 and max(buckets) < 130, buckets


def _config(check: str) -> c.Config:
    return load_text(
        f"""version: 1
node: {{webui: {{enabled: false}}}}
virtual_services:
  - label: Web
    vip: 127.10.18.30
    ports: [8080]
    mode: l7-tcp
    health_check: {check}
    real_servers:
      - {{label: Srv1, address: 127.10.18.9, port: 1}}
      - {{label: Srv2, address: 127.10.18.9, port: 2}}
""",
        "test",
    )


def test_a_rise_or_fall_edit_retunes_in_place_and_an_interval_edit_reschedules() -> None:
    """A threshold edit keeps each server's loop (its slot) and tracker; an interval or
    timeout edit starts a new loop with the same tracker; another check starts over."""
    check = "{{type: connect, interval: 30, timeout: 0.5, rise: {rise}, fall: {fall}}}"

    async def main() -> None:
        checker = HealthChecker(lambda *args: None)
        try:
            checker.configure(_config(check.format(rise=2, fall=3)))
            first = {key: checker.target(key) for key in [("Web", "Srv1"), ("Web", "Srv2")]}
            tasks = {key: state.task for key, state in first.items() if state is not None}

            checker.configure(_config(check.format(rise=4, fall=1)))
            for key, state in first.items():
                now = checker.target(key)
                assert now is state and now.task is tasks[key], key  # before: a new loop
                assert (now.tracker.rise, now.tracker.fall) == (4, 1)
                assert not now.task.cancelled() and not now.task.done()

            slower = check.replace("interval: 30", "interval: 40").format(rise=4, fall=1)
            checker.configure(_config(slower))
            await asyncio.sleep(0)
            for key, state in first.items():
                now = checker.target(key)
                assert now is state and now.task is not tasks[key]
                assert tasks[key].cancelled()

            checker.configure(_config("{type: none}"))
            assert checker.target(("Web", "Srv1")) is not first[("Web", "Srv1")]
        finally:
            await checker.close()

    asyncio.run(main())
