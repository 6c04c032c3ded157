"""`pacslb ha pair|unpair|status|takeover|fingerprint` and `pacslb token create|list|revoke`.

The `ha` commands talk to the running pacslb over its control socket (control/pair_commands.py):
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
        if peer.get("error"):
            lines.append(f"peer error: {peer['error']}")
    lines.append(f"replication: {status['replication']['text']}")
    if status.get("problem"):
        lines.append(f"PROBLEM: {status['problem']}")
    if status.get("conflict"):
        lines.append(
            "CONFLICT: both nodes changed since they last agreed; nothing is replicated until "
            "`pacslb ha resolve --keep-this` on the node whose state is to win"
        )
    if status.get("split_brain"):
        lines.append("SPLIT BRAIN: both nodes are active; config changes are refused on both")
    lines.append(f"config revision here: {status['revision']}")
    return lines


def _request(args: argparse.Namespace, payload: dict[str, Any], timeout: float = 10.0) -> Any:
    from pacslb.control.local import request

    return request(args.locate_state_dir(args), payload, timeout=timeout)


def cmd_ha_status(args: argparse.Namespace) -> int:
    status = _request(args, {"cmd": "ha-status"})
    print(json.dumps(status, indent=2) if args.json else "\n".join(status_lines(status)))
    return EXIT_OK


def cmd_ha_fingerprint(args: argparse.Namespace) -> int:
    print(_request(args, {"cmd": "ha-fingerprint"})["fingerprint"])
    return EXIT_OK


def cmd_ha_pair(args: argparse.Namespace) -> int:
    token = args.token
    if token in (None, "-"):
        token = sys.stdin.readline().strip()
    payload = {"cmd": "ha-pair", "address": args.address, "token": token}
    payload["force"] = args.force
    result = _request(args, {**payload, "fingerprint": args.fingerprint}, PAIR_TIMEOUT)
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


def cmd_ha_unpair(args: argparse.Namespace) -> int:
    result = _request(args, {"cmd": "ha-unpair"}, PAIR_TIMEOUT)
    if result["peer_told"]:
        print(f"unpaired from {result['unpaired']} on both nodes")
    else:
        print(
            f"unpaired from {result['unpaired']} here; the peer could not be told "
            f"({result['note']}): run `pacslb ha unpair` on it too"
        )
    return EXIT_OK


def cmd_ha_resolve(args: argparse.Namespace) -> int:
    if not args.keep_this:
        print(
            "pacslb ha resolve: say --keep-this (run it on the node whose state is to win)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    result = _request(args, {"cmd": "ha-resolve"})
    print(f"kept this node's state (revision {result['revision']}); it is pushed to the peer")
    return EXIT_OK


def cmd_ha_takeover(args: argparse.Namespace) -> int:
    result = _request(args, {"cmd": "ha-takeover"}, PAIR_TIMEOUT)
    print(f"asked {result['released_by']} to release the floating addresses to this node")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from pacslb.control.auth import AuthStore
    from pacslb.core.auth import Role

    where = args.locate_state_dir(args)
    if not where.is_dir():  # a token for a node that is not there would be a token for nobody
        print(
            f"pacslb token: no state directory {where} (pacslb has not run there): name the "
            "node's with --state-dir DIR or --config FILE",
            file=sys.stderr,
        )
        return EXIT_FAILED
    store = AuthStore(where)
    if args.action == "create":
        if not args.name:
            print("pacslb token create: a NAME is needed", file=sys.stderr)
            return EXIT_FAILED
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


def add_pair_commands(
    commands: Any, locate: Callable[[argparse.ArgumentParser], None], state_dir: StateDir
) -> None:
    """`pacslb ha status|pair|unpair|takeover|fingerprint`, under the `ha` command's
    subcommands (`commands`, as cli_ha.py makes them)."""

    def add(name: str, text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        p = commands.add_parser(name, help=text)
        locate(p)
        p.set_defaults(func=func, locate_state_dir=state_dir)
        return p

    p = add("status", "this node's role, the peer's, replication, split brain", cmd_ha_status)
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p = add("pair", "pair with the peer (on the node that is to be active)", cmd_ha_pair)
    p.add_argument("address", help="the peer's WebUI/API: ADDR[:PORT] (port 9443 by default)")
    p.add_argument("--token", help="an admin API token of the peer (- reads it from stdin)")
    p.add_argument("--fingerprint", help="the peer certificate's SHA-256 fingerprint, to check")
    p.add_argument(
        "--force",
        action="store_true",
        help="pair even when the peer is active or holds other services (this node's replace them)",
    )
    p = add(
        "resolve",
        "a replication conflict (both nodes changed): keep this node's state",
        cmd_ha_resolve,
    )
    p.add_argument("--keep-this", action="store_true", help="this node's state wins")
    add(
        "unpair", "remove the pairing on both nodes (and the tokens they were given)", cmd_ha_unpair
    )
    add(
        "takeover",
        "on the passive node: ask the active peer to release the floating addresses to this one",
        cmd_ha_takeover,
    )
    add(
        "fingerprint",
        "this node's WebUI certificate fingerprint (to check a pairing)",
        cmd_ha_fingerprint,
    )


def add_token_commands(
    sub: Any, locate: Callable[[argparse.ArgumentParser], None], state_dir: StateDir
) -> None:
    p = sub.add_parser("token", help="API tokens of this node: create, list, revoke")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("name", nargs="?", help="create: the token's name; revoke: its id")
    p.add_argument("--role", choices=["admin", "readonly"], default="readonly")
    locate(p)
    p.set_defaults(func=cmd_token, locate_state_dir=state_dir)
