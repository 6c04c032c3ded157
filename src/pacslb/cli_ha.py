"""`pacslb ha ...`: this node's part in an HA pair, through the local control socket.

`pacslb ha release`: hand the floating addresses to the peer for maintenance (the node goes
FAULT, so the peer becomes active at once, then stays passive: nopreempt). Pairing and the
peer's side (`pair`, `unpair`, `status`, `takeover`) join these subcommands.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0


def _state_dir(args: argparse.Namespace) -> Path:
    from pacslb.cli import _state_dir as locate

    return locate(args)


def cmd_ha_release(args: argparse.Namespace) -> int:
    from pacslb.control.local import request

    who = os.environ.get("SUDO_USER") or os.environ.get("USER", "cli")
    result = request(_state_dir(args), {"cmd": "ha-release", "by": who}, timeout=30.0)
    print(
        f"released: this node is {result['role']} (no longer active after "
        f"{result['seconds']:g} s); the peer holds the floating addresses"
    )
    return EXIT_OK


def add_ha_commands(sub: Any, locate: Callable[[argparse.ArgumentParser], None]) -> None:
    ha = sub.add_parser("ha", help="this node's part in an HA pair (keepalived VRRP)")
    commands = ha.add_subparsers(dest="ha_command", required=True, metavar="HA_COMMAND")
    p = commands.add_parser(
        "release",
        help="hand the floating addresses to the peer for maintenance; this node stays "
        "passive until the peer fails or is released in turn",
    )
    locate(p)
    p.set_defaults(func=cmd_ha_release)
