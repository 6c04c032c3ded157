"""`pacslb ha pair|unpair|status|takeover|fingerprint` and `pacslb token create|list|revoke`.

The `ha` commands talk to the running pacslb over its control socket (control/ha_commands.py):
pairing needs the process's token store, its certificate and its peer client. The `token`
commands work on the state directory's token file directly (read at every use, so a running
pacslb accepts a new token at once), for the pairing step that needs a token of the peer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED = 0, 1
PAIR_TIMEOUT = 40.0  # pairing makes three calls to the peer, each with its own timeout

StateDir = Callable[[argparse.Namespace], Path]


def _when(unix: float | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_lines(status: dict[str, Any]) -> list[str]:
    """`pacslb ha status` for a person (the JSON is --json)."""
    if not status.get("enabled") and not status.get("paired"):
        return ["HA: not enabled on this node (node.ha); it serves alone"]
    lines = [f"this node: {status['role']} (since {_when(status.get('role_since'))})"]
    peer = status.get("peer")
    if peer is None:
        lines.append("peer: not paired (`pacslb ha pair ADDR --token TOKEN` on the active node)")
    else:
        role = peer.get("role") or "unknown"
        reach = "reachable" if peer.get("reachable") else "unreachable"
        if peer.get("reachable") is None:
            reach = "not polled yet"
        lines.append(f"peer: {peer['address']}:{peer['port']}: {role}, {reach}")
        lines.append(f"peer certificate: {peer['fingerprint']} (paired {peer['paired_at']})")
    lines.append(f"replication: {status['replication']['text']}")
    if status.get("split_brain"):
        lines.append("SPLIT BRAIN: both nodes are active; config changes are refused on both")
    lines.append(f"config revision here: {status['revision']}")
    return lines


def cmd_ha(args: argparse.Namespace, state_dir: StateDir) -> int:
    from pacslb.control.local import request

    where = state_dir(args)
    if args.action == "status":
        status = request(where, {"cmd": "ha-status"})
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print("\n".join(status_lines(status)))
        return EXIT_OK
    if args.action == "fingerprint":
        print(request(where, {"cmd": "ha-fingerprint"})["fingerprint"])
        return EXIT_OK
    if args.action == "pair":
        if not args.address:
            print("pacslb ha pair: the peer's ADDR[:PORT] is needed", file=sys.stderr)
            return EXIT_FAILED
        token = args.token
        if token in (None, "-"):
            token = sys.stdin.readline().strip()
        payload = {
            "cmd": "ha-pair",
            "address": args.address,
            "token": token,
            "fingerprint": args.fingerprint,
        }
        result = request(where, payload, timeout=PAIR_TIMEOUT)
        print(f"paired with {result['peer']}")
        print(f"  peer certificate SHA-256 fingerprint: {result['fingerprint']}")
        if result["trusted_on_first_use"]:
            print(
                "  (trusted on first use, as SSH does: compare it with `pacslb ha fingerprint` "
                "on the peer; pair again with --fingerprint to check it)"
            )
        print(f"  this node, as the peer knows it: {result['own_address']}")
        print(f"  this node's fingerprint: {result['own_fingerprint']}")
        return EXIT_OK
    if args.action == "unpair":
        result = request(where, {"cmd": "ha-unpair"}, timeout=PAIR_TIMEOUT)
        if result["peer_told"]:
            print(f"unpaired from {result['unpaired']} on both nodes")
        else:
            print(
                f"unpaired from {result['unpaired']} here; the peer could not be told "
                f"({result['note']}): run `pacslb ha unpair` on it too"
            )
        return EXIT_OK
    result = request(where, {"cmd": "ha-takeover"}, timeout=PAIR_TIMEOUT)
    print(f"asked {result['released_by']} to release the floating addresses to this node")
    return EXIT_OK


def cmd_token(args: argparse.Namespace, state_dir: StateDir) -> int:
    from pacslb.control.auth import AuthStore
    from pacslb.core.auth import Role

    where = state_dir(args)
    store = AuthStore(where)
    if args.action == "create":
        if not args.name:
            print("pacslb token create: a NAME is needed", file=sys.stderr)
            return EXIT_FAILED
        where.mkdir(parents=True, exist_ok=True)
        info, token = store.create_token(args.name, Role(args.role), "cli")
        print(token)
        print(
            f"token {info.id} ({info.name}, {info.role}) created; shown only now", file=sys.stderr
        )
    elif args.action == "list":
        for t in store.tokens():
            print(f"{t.id}  {t.role:<8} {t.created}  {t.name}")
    else:
        if not args.name or not store.revoke(args.name):
            print(f"pacslb token revoke: no token {args.name!r}", file=sys.stderr)
            return EXIT_FAILED
        print(f"token {args.name} revoked")
    return EXIT_OK


def register(
    sub: Any, locate: Callable[[argparse.ArgumentParser], None], state_dir: StateDir
) -> None:
    p = sub.add_parser("ha", help="HA pair: pair, unpair, status, takeover, fingerprint")
    p.add_argument("action", choices=["status", "pair", "unpair", "takeover", "fingerprint"])
    p.add_argument("address", nargs="?", help="pair: the peer's WebUI/API, ADDR[:PORT]")
    p.add_argument("--token", help="pair: an admin API token of the peer (- reads stdin)")
    p.add_argument(
        "--fingerprint", help="pair: the peer certificate's SHA-256 fingerprint, to check"
    )
    p.add_argument("--json", action="store_true", help="status: one JSON document")
    locate(p)
    p.set_defaults(func=lambda a: cmd_ha(a, state_dir))

    p = sub.add_parser("token", help="API tokens of this node: create, list, revoke")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("name", nargs="?", help="create: the token's name; revoke: its id")
    p.add_argument("--role", choices=["admin", "readonly"], default="readonly")
    locate(p)
    p.set_defaults(func=lambda a: cmd_token(a, state_dir))
