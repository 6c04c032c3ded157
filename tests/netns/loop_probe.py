"""How long the event loop stalls while state sync lists the kernel's flow map on its worker
thread and the loop applies Plans (drains), run inside a namespace with `ip netns exec`.

loop_probe.py STATE_DIR FLOWS APPLIES -> one JSON line: {"listing_s", "entries", "max_lag_s",
"applies", "slowest_apply_s"}: the loop's worst lateness (a 5 ms ticker) over the listings'
whole time, and the slowest apply meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

from pacslb import config as c
from pacslb.core import nft
from pacslb.core.plan import build_plan
from pacslb.core.state import AdminState
from pacslb.engines.kernel import KernelEngine

CONFIG = {
    "virtual_services": [
        {
            "label": "DICOM",
            "vip": "198.18.0.100",
            "ports": [4000],
            "mode": "l4-dr",
            "real_servers": [
                {"label": "a", "address": "198.18.0.11"},
                {"label": "b", "address": "198.18.0.12"},
            ],
        }
    ]
}


def fill(engine: KernelEngine, flows: int) -> None:
    """`flows` DR flow entries, as the kernel adds them for clients (in batches of 2000)."""
    name = nft.flows_map("DICOM")
    for start in range(0, flows, 2000):
        items = ", ".join(
            f"{1024 + i % 60000} . 4000 . 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} "
            f"timeout 3600s : 02:00:00:00:00:11"
            for i in range(start, min(flows, start + 2000))
        )
        engine.nftables.run(f"add element netdev {nft.TABLE} {name} {{ {items} }}")


async def main(state_dir: Path, flows: int, applies: int) -> None:
    config = c.Config.model_validate(CONFIG)
    engine = KernelEngine(state_dir)
    plan = build_plan(config)
    await engine.apply(plan)
    fill(engine, flows)
    listed = threading.Event()
    result: dict[str, float] = {}

    def list_repeatedly() -> None:  # state sync's export_state, as statesync.round runs it
        started = time.monotonic()
        entries = 0
        for _ in range(3):
            entries = len(engine.export_state(True))
        result["listing_s"] = (time.monotonic() - started) / 3
        result["entries"] = entries
        listed.set()

    lag = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal lag
        while not stop:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            lag = max(lag, time.monotonic() - before - 0.005)

    tick = asyncio.get_running_loop().create_task(ticker())
    lister = threading.Thread(target=list_repeatedly)
    lister.start()
    done = 0
    slowest = 0.0
    drained = AdminState.DRAIN
    while not listed.is_set() and done < applies:  # drains and undrains while it lists
        admin = {("DICOM", "a"): drained}
        began = time.monotonic()
        await engine.apply(build_plan(config, admin=admin))
        slowest = max(slowest, time.monotonic() - began)
        drained = AdminState.ONLINE if drained is AdminState.DRAIN else AdminState.DRAIN
        done += 1
        await asyncio.sleep(0.01)
    await asyncio.to_thread(lister.join)
    stop = True
    await tick
    await engine.close()
    print(
        json.dumps(
            {
                **result,
                "max_lag_s": round(lag, 4),
                "applies": done,
                "slowest_apply_s": round(slowest, 4),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
