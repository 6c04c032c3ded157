"""Which design keeps the most held layer 4 connections across an HA takeover (issue 16, item 5).

In network namespaces (root), two load balancer nodes (tests/netns/sync_node.py: the real
kernel engine, state sync, conntrackd) and a client holding N connections spread by wlc over two
real servers; the addresses move from one node to the other as keepalived moves them, and every
held connection is pinged through the new node. Designs, for l4-dr and l4-nat:

- `sync`: state sync (DR flows, persistence) and conntrackd (NAT flows), the flows a second old;
- `sync, young flows`: the same, the addresses moved right after the last connection opened
  (younger than one sync round: what the deterministic table must save);
- `sync (conntrackd committing at the takeover), young flows` (l4-nat): conntrackd with its
  external cache, committed into the kernel when the node becomes active (Debian's
  primary-backup.sh); the default injects the peer's flows into the standing-by kernel all
  along, leaving nothing to commit;
- `no sync`: neither; a packet of a flow the new node has not seen is placed by the
  deterministic table (core/hashslots.py) alone.

Then the cost of the sync itself: listing the flow map (what every round does) and importing
(what the peer does) at 1k, 5k and 20k entries.

    .venv/bin/python bench/ha_flows.py [--held 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.netns.test_ha_sync import dr_takeover, nat_takeover  # noqa: E402
from tests.netns.topology import Topology, ha_one_arm, ha_two_arm, named_servers  # noqa: E402

DESIGNS = [
    ("sync", True, True),
    ("sync, young flows", True, False),
    ("sync (conntrackd committing at the takeover)", True, True),
    ("sync (conntrackd committing at the takeover), young flows", True, False),
    ("no sync", False, True),
]


def takeovers(held: int, rounds: int) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    shapes = [
        ("l4-dr", lambda: ha_one_arm(servers=2, vip="198.18.0.100"), dr_takeover),
        ("l4-nat", lambda: ha_two_arm(servers=2), nat_takeover),
    ]
    for mode, topology, takeover in shapes:
        with topology() as topo:
            named_servers(topo, [4000, 5000])
            for r in range(rounds):
                for design, sync, settle in DESIGNS:
                    inject = "committing" not in design
                    if not inject and mode != "l4-nat":
                        continue  # conntrackd carries NAT flows only
                    with tempfile.TemporaryDirectory() as tmp:
                        got = run_one(takeover, topo, Path(tmp), sync, held, settle, inject)
                    out.setdefault((mode, design), []).append(got)
                    print(f"  {mode} {design} round {r + 1}: {got}/{held}", flush=True)
    return out


def run_one(
    takeover: object,
    topo: Topology,
    tmp: Path,
    sync: bool,
    held: int,
    settle: bool,
    inject: bool = False,
) -> int:
    extra = {} if inject else {"inject": False}
    try:
        got = takeover(topo, tmp, sync, held, settle, **extra)  # type: ignore[operator]
    except (AssertionError, TimeoutError) as exc:  # a check of the test helper: report it
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"    (a check failed at line {where.lineno}: {where.line} {exc})", flush=True)
        return -1
    return int(got["survived"])


def sync_costs() -> list[tuple[int, float, float]]:
    """(entries, list ms, import ms), measured by `--cost` in a scratch namespace."""
    import os
    import subprocess

    ns = f"plbhaflows{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, __file__, "--cost"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    rows = []
    for line in done.stdout.splitlines():
        n, listing, importing = line.split()
        rows.append((int(n), float(listing), float(importing)))
    return rows


def cost_here() -> None:
    """In the scratch namespace: a DR flow map of 1k, 5k, 20k entries, listed and parsed as a
    sync round does, and imported as the peer does (replace: add, delete, add)."""
    from pacslb.core.syncmaps import entry_of, import_scripts
    from pacslb.engines.nftables import Nft

    nft = Nft()
    name = "s00000000_flows"
    key = "th sport . th dport . ip saddr"
    nft.run(
        f"add table netdev pacslb\ntable netdev pacslb {{\n  map {name} {{ typeof {key} : "
        "ether daddr; flags dynamic,timeout; timeout 1800s; size 262144; }\n}"
    )
    added = 0
    for size in (1000, 5000, 20000):
        elems = [
            f"{1024 + i % 60000} . 4000 . 198.18.{2 + i // 60000}.{1 + i % 250} "
            f"timeout 1800s expires 1700s : 02:00:00:00:00:0{1 + i % 2}"
            for i in range(added, size)
        ]
        for j in range(0, len(elems), 2000):
            nft.run(f"add element netdev pacslb {name} {{ {', '.join(elems[j : j + 2000])} }}")
        added = size
        t = time.perf_counter()
        listed = nft.json(f"list map netdev pacslb {name}")["nftables"][1]["map"]["elem"]
        entries = [e for e in (entry_of("netdev", name, x) for x in listed) if e is not None]
        listing = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        for script, _ in import_scripts(entries, replace=True):
            nft.run(script)
        importing = (time.perf_counter() - t) * 1000
        print(size, round(listing, 1), round(importing, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cost", action="store_true", help=argparse.SUPPRESS)  # in a namespace
    args = parser.parse_args()
    if args.cost:
        cost_here()
        return
    started = time.monotonic()
    print(f"takeovers: {args.held} held connections, {args.rounds} rounds per design", flush=True)
    results = takeovers(args.held, args.rounds)
    print("\n| design | l4-dr survived (median, min) | l4-nat survived (median, min) |")
    print("|---|---|---|")
    for design, _, _ in DESIGNS:
        cells = []
        for mode in ("l4-dr", "l4-nat"):
            got = results.get((mode, design))
            if not got:
                cells.append("-")
                continue
            cells.append(f"{statistics.median(got):g}/{args.held} (min {min(got)})")
        print(f"| {design} | {cells[0]} | {cells[1]} |")
    print("\n| flow map entries | listing (JSON, parsed) ms | import on the peer ms |")
    print("|---|---|---|")
    for n, listing, importing in sync_costs():
        print(f"| {n} | {listing:g} | {importing:g} |")
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
