"""The `pacslb backup` and `pacslb restore` commands (the work is in control/backup.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parsers(
    sub: Any,
    locate: Callable[[argparse.ArgumentParser], None],
    state_dir_of: Callable[[argparse.Namespace], Path],
) -> None:
    """`locate` adds --state-dir/--config; `state_dir_of` reads them (both from cli.py)."""
    p = sub.add_parser(
        "backup",
        help="write config, revisions, admin states, users, tokens and certificates to FILE",
    )
    p.add_argument("file", type=Path, help="the archive to write (a .tar.gz, mode 0600)")
    locate(p)
    p.set_defaults(func=cmd_backup, state_dir_of=state_dir_of)

    p = sub.add_parser("restore", help="restore a backup into an empty (or --force) state dir")
    p.add_argument("file", type=Path, help="an archive `pacslb backup` wrote")
    p.add_argument("--state-dir", help="restore into this state directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="restore over existing state (moved into pre-restore-TIME/) and files",
    )
    p.add_argument(
        "--no-files",
        dest="files",
        action="store_false",
        help="leave the config file and certificates outside the state directory alone",
    )
    p.set_defaults(func=cmd_restore, state_dir_of=state_dir_of)


def _config_file(args: argparse.Namespace, state_dir: Path) -> Path | None:
    """--config, else the config file of the pacslb running on the state directory."""
    if args.config:
        return Path(args.config)
    from pacslb.control.local import NotRunning, request

    try:
        return Path(request(state_dir, {"cmd": "status"}, timeout=5.0)["config"])
    except (NotRunning, OSError):
        return None


def cmd_backup(args: argparse.Namespace) -> int:
    from pacslb.control.backup import backup

    state_dir = args.state_dir_of(args)
    config = _config_file(args, state_dir)
    meta = backup(args.file, state_dir, config)
    members = meta["members"]
    size = sum(m["size"] for m in members)
    print(f"wrote {args.file}: {len(members)} files ({size} bytes) from {state_dir}")
    print(
        "it holds credentials (password hashes, API tokens, private keys, the HA peer's API "
        "token in plain text): store it as you store this node's own secrets (mode 0600)",
        file=sys.stderr,
    )
    for left in meta["left_out"]:
        print(f"note: left out {left}", file=sys.stderr)
    if config is None:
        print(
            "note: no config file in it (none given with --config, and no pacslb running "
            "here): its revisions are, and certificates outside the state directory are not",
            file=sys.stderr,
        )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from pacslb.control.backup import restore

    state_dir = args.state_dir_of(args)
    done = restore(args.file, state_dir, force=args.force, files=args.files)
    source = done["from"]
    print(
        f"restored {done['revisions']} config revisions (latest {done['latest']}) into "
        f"{state_dir} from the backup of {source['host']} made {source['created']} "
        f"(pacslb {source['pacslb']})"
    )
    for path in done["files"]:
        print(f"wrote {path}")
    if done["set_aside"]:
        print(f"the state it replaced is in {done['set_aside']}")
    return 0
