"""`pacslb alert test`: a test message through every alert channel of the running pacslb.

It asks the control process over the local control socket (control/local.py), which sends
the message through each configured channel (node.alerts) within the channel's timeout and
answers, per channel, delivered or the reason it was not. Exit status 0 when every channel
delivered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

# The longest a test can take: a webhook's every retry and back-off (config_alerts.py limits).
TEST_TIMEOUT = 600.0


def cmd_alert_test(args: argparse.Namespace) -> int:
    from pacslb.cli import _state_dir
    from pacslb.control.local import request

    who = os.environ.get("SUDO_USER") or os.environ.get("USER", "cli")
    result = request(_state_dir(args), {"cmd": "alert-test", "by": who}, timeout=TEST_TIMEOUT)
    for name, outcome in result.items():
        print(f"{name}: {'delivered' if outcome['delivered'] else 'failed: ' + outcome['reason']}")
    return 0 if all(outcome["delivered"] for outcome in result.values()) else 1


def add_alert_commands(sub: Any, locate: Callable[[argparse.ArgumentParser], None]) -> None:
    alert = sub.add_parser("alert", help="alerts by email, syslog and webhook (node.alerts)")
    commands = alert.add_subparsers(dest="alert_command", required=True, metavar="ALERT_COMMAND")
    p = commands.add_parser(
        "test", help="send a test message through every alert channel; say which delivered"
    )
    locate(p)
    p.set_defaults(func=cmd_alert_test)
