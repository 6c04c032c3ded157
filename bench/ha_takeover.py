"""HA takeover figures: how long clients cannot open a new connection after a fault.

    sudo .venv/bin/python bench/ha_takeover.py [--advert 1 0.3] [--shape two-arm one-arm]
                                               [--rounds 1] [--json FILE]

Two pacslb nodes in network namespaces with real keepalived (tests/netns/ha_pair.py, the same
helpers as tests/netns/test_ha_vrrp.py): `two-arm` is an l7-http and an l4-nat service with the
real servers' gateway floating, `one-arm` an l4-dr service. For each advert interval (1 s is
VRRPv2; 0.3 s is VRRPv3) and shape, each round does to the node active at the time:
keepalived SIGKILLed (parent and VRRP child: no priority-0 advert), its links down (node loss),
`pacslb stop` (graceful: keepalived sends priority 0), and `pacslb ha release` (manual
hand-over). A client opens a new connection every 50 ms (each given 250 ms) from just before
the fault until the survivor holds the addresses; the table gives the longest time without a
successful new connection ("gap": what a client sees), when connections succeeded again for
good measured from the fault ("back", which for `pacslb stop` includes the CLI's own start),
and the failed tries.

Root only; namespaces and addresses from 198.18.0.0/15, all deleted afterwards. Timing only:
nothing here passes or fails (DESIGN §6).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
)

from tests.netns.ha_pair import (  # noqa: E402
    PROBES,
    Outage,
    fault_sequence,
    running_pair,
    wait_sole_active,
)


def quiet(_: str) -> None:
    pass


def measure(shape: str, advert: float, rounds: int, tmp: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    probes = PROBES[shape]
    with running_pair(shape, tmp / f"{shape}-{advert:g}", advert) as pair:
        for round_ in range(1, rounds + 1):
            found = fault_sequence(pair, probes, say=quiet)
            active = pair.wait_one_active()
            found["release"] = pair.takeover(
                "release",
                partial(active.run.cli, "ha", "release"),
                probes,
                settled=partial(wait_sole_active, pair, pair.other(active)),
            )
            for fault, outages in found.items():
                for probe, o in outages.items():
                    rows.append(_row(shape, advert, round_, fault, probe, o))
                    print(
                        f"  {shape} advert {advert:g} round {round_}: {fault} {probe}: {o}",
                        file=sys.stderr,
                    )
    return rows


def _row(
    shape: str, advert: float, round_: int, fault: str, probe: str, o: Outage
) -> dict[str, Any]:
    return {
        "shape": shape,
        "advert_int": advert,
        "vrrp": 2 if float(advert).is_integer() else 3,
        "round": round_,
        "fault": fault,
        "service": probe,
        "gap_s": o.longest,
        "back_s": o.recovered,
        "failed": o.failed,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| advert_int | round | fault | service | gap (s) | back after (s) | failed tries |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['advert_int']:g} (VRRPv{r['vrrp']}) | {r['round']} | {r['fault']} | "
            f"{r['service']} | "
            f"{r['gap_s']:.2f} | {r['back_s']:.2f} | {r['failed']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--advert", type=float, nargs="+", default=[1.0, 0.3])
    parser.add_argument(
        "--shape", nargs="+", choices=sorted(PROBES), default=["two-arm", "one-arm"]
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every row here too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("ha_takeover.py needs root (network namespaces, keepalived)", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pacslb-ha-bench-") as tmp:
        for advert in args.advert:
            for shape in args.shape:
                rows += measure(shape, advert, args.rounds, Path(tmp))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
