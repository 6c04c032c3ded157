"""One load balancer node for the state sync tests, run inside its namespace with `ip netns exec`:
the real kernel engine (nftables), state sync (control/statesync.py) and, for NAT, conntrackd
(control/conntrackd.py), with this node's HA role set by the test through stdin, as the
keepalived supervisor sets it from VRRP's notify events.

sync_node.py CONFIG STATE_DIR [--no-sync] [--commit]   (--commit: conntrackd with its external
                                                        cache, committed at the takeover)
    {"op": "role", "role": "active"}  -> "ok"   (active | passive | fault)
    {"op": "status"}                  -> state sync and conntrackd status
    {"op": "entries"}                 -> the synced maps' entries as the kernel lists them
    {"op": "quit"}
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from pacslb.control.conntrackd import ConntrackdSupervisor
from pacslb.control.statesync import StateSync
from pacslb.control.store import read_config
from pacslb.core import conntrackd
from pacslb.core.ha_role import HaState, Role
from pacslb.core.plan import build_plan
from pacslb.engines.kernel import KernelEngine


def note(message: str) -> None:
    print(f"event: {message}", file=sys.stderr, flush=True)


async def main(config_path: Path, state_dir: Path, sync_on: bool, inject: bool) -> None:
    _, config = read_config(config_path)
    assert config.node.ha is not None
    engine = KernelEngine(state_dir, notify=note)
    await engine.apply(build_plan(config))
    ha = HaState(Role.STARTING)
    parts: list[Any] = []
    if sync_on:
        sync = StateSync(config.node.ha, ha, [engine], note)
        await sync.start()
        parts.append(sync)
        if conntrackd.wanted(config):
            supervisor = ConntrackdSupervisor(config, state_dir, ha, note, inject)
            await supervisor.start()
            parts.append(supervisor)
    loop = asyncio.get_running_loop()
    print(json.dumps("ready"), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        answer: Any = "ok"
        if cmd["op"] == "role":
            ha.set(Role(cmd["role"]))
        elif cmd["op"] == "status":
            answer = {type(p).__name__: p.status() for p in parts}
        elif cmd["op"] == "entries":
            entries = await asyncio.to_thread(engine.export_state)
            answer = [dataclasses.asdict(e) for e in entries]
        elif cmd["op"] == "quit":
            break
        print(json.dumps(answer), flush=True)
    for part in parts:
        await part.close()
    await engine.close()


if __name__ == "__main__":
    flags = sys.argv[3:]
    sync_on, inject = "--no-sync" not in flags, "--commit" not in flags
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), sync_on, inject))
