"""HA replication figures: how long a change made on the active node takes to be in force on
the passive one.

    sudo .venv/bin/python bench/ha_replication.py [--rounds 20] [--json FILE]

Two pacslb nodes in network namespaces with real keepalived (tests/netns/ha_replica_pair.py,
the same helpers as tests/netns/test_ha_replication.py), paired over the control socket. Each
round makes one admin change (drain / online, through the control socket as `pacslb drain`
sends it, without the CLI's own start-up) and one config change (a real server added or
removed in the active node's file, then `reload` through the socket). Two times each: from the
command to the change in force on the passive node (polled every 10 ms through its control
socket), and from the change's event on the active node to its event on the passive one (one
host, one clock: what replication itself takes).

Root only; namespaces and addresses from 198.18.0.0/15, all deleted afterwards. Timing only:
nothing here passes or fails (DESIGN §6).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
)

from tests.netns.ha_replica_pair import LB1, Lb, commit_to_peer, replication_pair  # noqa: E402
from tests.peers.ha_node import wait_for  # noqa: E402

EXTRA = "      - {label: rs3, address: 198.18.0.13}\n"


def pair_up(lb1: Lb, lb2: Lb) -> None:
    token = lb2.node.token("bench")
    lb1.node.control("ha-pair", address=lb2.node.address, token=token, fingerprint=None)
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 20, "in sync")


def admin_round(lb1: Lb, lb2: Lb, state: str) -> tuple[float, float]:
    started = time.monotonic()
    lb1.node.control("set-admin", service="Dicom", server="rs1", state=state, by="bench")
    wait_for(lambda: lb2.node.admin_states()["Dicom/rs1"] == state, 20, state, step=0.01)
    total = time.monotonic() - started
    before = "online" if state == "drain" else "drain"
    events = commit_to_peer(
        lb1, lb2, "admin", f"{before} -> {state} by bench", f"{before} -> {state} by ha-peer"
    )
    return total, events


def config_round(lb1: Lb, lb2: Lb, add: bool) -> tuple[float, float]:
    text = lb1.node.config.read_text()
    text = text + EXTRA if add else text.replace(EXTRA, "")
    lb1.node.config.write_text(text)
    started = time.monotonic()
    revision = lb1.node.control("reload")["revision"]

    def applied() -> bool:
        return ("rs3" in lb2.node.config.read_text()) is add

    wait_for(applied, 20, "the config change on lb2", step=0.01)
    total = time.monotonic() - started
    events = commit_to_peer(
        lb1, lb2, "config", f"applying revision {revision}:", f"from {LB1} revision {revision}"
    )
    return total, events


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "n": len(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/ha_replication.py needs root (network namespaces)", file=sys.stderr)
        return 1
    figures: dict[str, list[float]] = {
        "admin change: command to in force on the passive": [],
        "admin change: event on the active to event on the passive": [],
        "config change (reload): command to in force on the passive": [],
        "config change (reload): event on the active to event on the passive": [],
    }
    names = list(figures)
    with (
        tempfile.TemporaryDirectory(prefix="pacslb-bench-ha-repl-") as tmp,
        replication_pair(Path(tmp)) as (lb1, lb2),
    ):
        pair_up(lb1, lb2)
        for i in range(args.rounds):
            total, events = admin_round(lb1, lb2, "drain" if i % 2 == 0 else "online")
            figures[names[0]].append(total)
            figures[names[1]].append(events)
            total, events = config_round(lb1, lb2, add=i % 2 == 0)
            figures[names[2]].append(total)
            figures[names[3]].append(events)
    out: dict[str, Any] = {name: summary(values) for name, values in figures.items()}
    width = max(len(n) for n in out)
    print(f"{'':<{width}}  median     p95     max  (ms, n={args.rounds})")
    for name, row in out.items():
        print(f"{name:<{width}}  {row['median_ms']:>6}  {row['p95_ms']:>6}  {row['max_ms']:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
