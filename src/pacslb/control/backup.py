"""`pacslb backup FILE` and `pacslb restore FILE`: the node's state in one verified archive.

What a backup holds (a gzip'd tar):
    MANIFEST.json          format, pacslb version, time, host, the source paths, and for every
                           other member its size, mode and sha256
    state/...              the state directory's durable files: config revisions (revisions/),
                           admin states (admin-state.json), WebUI users with their password
                           hashes (webui-users.json), API token hashes (api-tokens.json), the
                           device-cookie key, the WebUI's generated certificate and key (a peer
                           or a browser may have pinned it), HA pairing (ha-peer.json), and
                           the files inside it the config names; a file no part of pacslb keeps
                           is left out (a restore would refuse it: control/restore_policy.py)
    files/<absolute path>  the config file and every certificate and key the config names
                           (virtual_services[].tls, node.webui), restored to the same paths
Left out, being runtime or logs: sockets, locks, pid files, *.log, events.jsonl and rotated
logs, what the kernel engine added to this host (kernel-addresses.json: another host has not),
the HA supervisors' folders (keepalived/, conntrackd/: rendered from the config at each start),
temp files and the folders an earlier restore set aside. Kept with the rest: HA pairing
(ha-peer.json: the peer's pinned certificate and token).

Restore checks everything before it writes anything: the archive must read to its end (a
truncated or corrupt one is refused), every member must be a plain file with a safe name and one
a backup holds, without setuid/setgid/sticky bits (control/restore_policy.py: the manifest is
not trusted to say where files go; modes are clamped), the
manifest must list exactly the members present with matching sizes and sha256 (a member changed
or added afterwards is refused), and the restored state must read back (the revision index and
every revision's sha256, the admin states, users and tokens) from a staging folder. The target
state directory must be empty or missing, or `--force`: its state files are then moved into
`pre-restore-TIME/` inside it, not deleted. No pacslb may be running on it. A file outside the
state directory that exists and differs from the archive's is refused unless `--force`. Only
then are the staged files renamed into place (each rename atomic, the staging folder on the
same file system) and the outside files written atomically.

The sha256 sums find corruption and edits made without updating the manifest; the manifest is
not signed (there is no key a restore on a new host could check it with), so keep backups where
only administrators can write.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import stat
import tarfile
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pacslb import __version__
from pacslb.config import Config
from pacslb.control.store import AdminStateStore, ConfigStore, _locked, read_config, write_atomic
from pacslb.errors import ConfigError, PacslbError

FORMAT = "pacslb-backup"
FORMAT_VERSION = 1
MANIFEST = "MANIFEST.json"
MAX_TOTAL = 512 * 1024 * 1024  # a state directory is kilobytes; this bounds a hostile archive
# stop-intent: how the last stop was asked for, read by the unit's ExecStopPost (runtime).
SKIP_NAMES = frozenset(
    {"events.jsonl", "kernel-addresses.json", "control.sock", ".lock", "stop-intent"}
)
SKIP_SUFFIXES = (".log", ".lock", ".sock", ".tmp", ".pid", ".fifo", ".1", ".gz")
SKIP_PREFIXES = ("pre-restore-", ".restore-", ".")
# What the HA supervisors render and run from (config made from pacslb.yaml at each start, pid
# files, FIFOs, a maintenance hand-over flag, logs): this node's runtime, not its state.
SKIP_DIRS = frozenset({"keepalived", "conntrackd"})


class BackupError(PacslbError):
    """The archive cannot be made, or cannot be restored; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str  # in the archive: state/REL or files/ABS-WITHOUT-SLASH
    data: bytes
    mode: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": len(self.data),
            "mode": self.mode,
            "sha256": hashlib.sha256(self.data).hexdigest(),
        }


def is_state_file(rel: PurePosixPath) -> bool:
    """Whether a file of the state directory (path relative to it) belongs in a backup."""
    folders = rel.parts[:-1]
    if any(p.startswith(SKIP_PREFIXES) for p in folders) or (folders and folders[0] in SKIP_DIRS):
        return False
    name = rel.name
    if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES):
        return False
    return not name.startswith(SKIP_PREFIXES)


def state_files(state_dir: Path) -> list[PurePosixPath]:
    """The state directory's files that a backup holds, sorted (regular files only)."""
    out = []
    for root, dirs, files in os.walk(state_dir):
        top = Path(root) == state_dir
        dirs[:] = [
            d for d in dirs if not d.startswith(SKIP_PREFIXES) and not (top and d in SKIP_DIRS)
        ]
        for name in files:
            path = Path(root, name)
            rel = PurePosixPath(path.relative_to(state_dir).as_posix())
            if is_state_file(rel) and stat.S_ISREG(path.lstat().st_mode):
                out.append(rel)
    return sorted(out)


def named_files(config: Config) -> list[Path]:
    """The certificates and keys the config names (absolute, as read_config made them)."""
    paths: list[Path | None] = [config.node.webui.certificate, config.node.webui.key]
    for vs in config.virtual_services:
        if vs.tls is not None:
            for pair in vs.tls.certificates:
                paths += [pair.certificate, pair.key]
    return sorted({p for p in paths if p is not None and p.is_absolute()})


def _read(path: Path) -> tuple[bytes, int]:
    try:
        return path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None


def collect(state_dir: Path, config_file: Path | None) -> list[Member]:
    """Every member of a backup of `state_dir` (and of `config_file` and what it names)."""
    if not (state_dir / "revisions" / "index.json").is_file():
        raise BackupError(
            f"{state_dir} holds no config revisions (no revisions/index.json): is it the "
            "state directory? (--state-dir, or --config with the config file)"
        )
    members = []
    # The revision lock: a revision committed meanwhile cannot leave the index and its files
    # out of step in the archive.
    with _locked(state_dir / "revisions" / ".lock"):
        for rel in state_files(state_dir):
            data, mode = _read(state_dir / rel)
            members.append(Member(f"state/{rel}", data, mode))
    outside: list[Path] = []
    if config_file is not None:
        config_file = config_file.resolve()
        try:
            _, config = read_config(config_file)
        except ConfigError as exc:
            raise BackupError(f"the config file does not read: {exc}") from None
        outside = [config_file, *named_files(config)]
    for path in dict.fromkeys(outside):
        if path.is_relative_to(state_dir.resolve()):
            continue  # in the state directory: there already
        data, mode = _read(path)
        members.append(Member("files" + str(path), data, mode))
    return members


def manifest(members: list[Member], state_dir: Path, config_file: Path | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pacslb": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "state_dir": str(state_dir),
        "config_file": str(config_file.resolve()) if config_file else None,
        "members": [m.to_json() for m in members],
    }


def write_archive(path: Path, members: list[Member], meta: dict[str, Any]) -> None:
    """The archive, written atomically (mode 0600: it holds password hashes and keys)."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        head = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        for name, data, mode in [(MANIFEST, head, 0o600)] + [
            (m.name, m.data, m.mode) for m in members
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))
    try:
        write_atomic(path, buf.getvalue(), 0o600)
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror or exc}") from None


def backup(archive: Path, state_dir: Path, config_file: Path | None) -> dict[str, Any]:
    """The archive, holding only what a restore accepts (control/restore_policy.py): a file
    of the state directory no part of pacslb keeps (put there by hand, say) is left out and
    listed in the returned `left_out`, rather than make the whole backup unrestorable."""
    from pacslb.control.restore_policy import RestoreRefused, judge

    members = collect(state_dir, config_file)
    meta = manifest(members, state_dir, config_file)
    try:
        _, refused = judge(meta, {m.name: m for m in members})
    except RestoreRefused as exc:  # the config file itself (its name, or it does not read)
        raise BackupError(f"a restore would refuse this backup: {exc}") from None
    if refused:
        left = {name for name, _ in refused}
        members = [m for m in members if m.name not in left]
        meta = manifest(members, state_dir, config_file)
    write_archive(archive, members, meta)
    return {**meta, "left_out": [f"{name} ({why})" for name, why in refused]}


# --- restore -------------------------------------------------------------------------------


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, Member]]:
    """The manifest and the members, each checked against it; BackupError for anything off."""
    where = f"{path}: not a usable pacslb backup"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    found: dict[str, Member] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for info in tar:  # reads to the end: a truncated archive fails here
                if info.isdir():
                    continue
                if not info.isfile():
                    raise BackupError(f"{where}: {info.name!r} is not a plain file")
                safe_name(info.name, where)
                if info.name in found:
                    raise BackupError(f"{where}: {info.name!r} is in it twice")
                total += info.size
                if total > MAX_TOTAL:
                    raise BackupError(f"{where}: larger than {MAX_TOTAL >> 20} MiB")
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise BackupError(f"{where}: {info.name!r} is cut short (truncated)")
                found[info.name] = Member(info.name, data, stat.S_IMODE(info.mode))
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        # gzip: BadGzipFile (an OSError) or EOFError when cut short; zlib.error when damaged
        raise BackupError(f"{where}: corrupt or truncated ({type(exc).__name__}: {exc})") from None
    head = found.pop(MANIFEST, None)
    if head is None:
        raise BackupError(f"{where}: it has no {MANIFEST}")
    try:
        meta = json.loads(head.data)
        listed = {m["name"]: m for m in meta["members"]}
        ok = meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{where}: {MANIFEST} is malformed ({exc!r})") from None
    if not ok:
        raise BackupError(
            f"{where}: format {meta.get('format')!r} version {meta.get('format_version')!r} "
            f"(this pacslb reads {FORMAT} version {FORMAT_VERSION})"
        )
    if set(listed) != set(found):
        extra = sorted(set(found) - set(listed))
        missing = sorted(set(listed) - set(found))
        raise BackupError(
            f"{where}: its members differ from {MANIFEST}"
            + (f"; not listed: {', '.join(extra)}" if extra else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    for name, member in found.items():
        entry = listed[name]
        if len(member.data) != entry.get("size") or (
            hashlib.sha256(member.data).hexdigest() != entry.get("sha256")
        ):
            raise BackupError(
                f"{where}: {name} does not match its sha256 in {MANIFEST} (changed or damaged)"
            )
    return meta, found


def safe_name(name: str, where: str) -> None:
    p = PurePosixPath(name)
    if name == MANIFEST:
        return
    if (
        p.is_absolute()
        or ".." in p.parts
        or p.parts[0] not in ("state", "files")
        or len(p.parts) < 2
    ):
        raise BackupError(f"{where}: unsafe member name {name!r}")


def _running(state_dir: Path) -> bool:
    from pacslb.proxy.server import socket_answers

    sock = state_dir / "control.sock"
    return sock.exists() and socket_answers(sock)


def _stage(staging: Path, members: dict[str, Member], modes: dict[str, int]) -> None:
    for name, member in members.items():
        if not name.startswith("state/"):
            continue
        path = staging / name.removeprefix("state/")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, member.data, modes[name])


def _check_staged(staging: Path) -> None:
    """The restored state must read back as pacslb reads it."""
    from pacslb.control.auth import AuthStore

    try:
        store = ConfigStore(staging)
        revisions = store.revisions()
        for rev in revisions:
            store.text(rev.number)
        AdminStateStore(staging / "admin-state.json").all()
        auth = AuthStore(staging)
        auth.users()
        auth.tokens()
    except (PacslbError, LookupError, OSError) as exc:
        raise BackupError(f"the state in the archive does not read back: {exc}") from None
    if not revisions:
        raise BackupError("the archive holds no config revisions")


def restore(
    archive: Path, state_dir: Path, force: bool = False, files: bool = True
) -> dict[str, Any]:
    """Restore `archive` into `state_dir` (and the outside files to their paths, `files`).
    Returns what was done; BackupError, having changed nothing, when it cannot be."""
    from pacslb.control.restore_policy import RestoreRefused, allowed

    meta, members = read_archive(archive)
    try:
        modes = allowed(meta, members)  # where each member may go, and its clamped mode
    except RestoreRefused as exc:
        raise BackupError(f"{archive}: refused, nothing was changed: {exc}") from None
    if _running(state_dir):
        raise BackupError(
            f"pacslb is running on {state_dir}: stop it first (pacslb stop --state-dir "
            f"{state_dir}); nothing was changed"
        )
    present = state_files(state_dir) if state_dir.is_dir() else []
    if present and not force:
        raise BackupError(
            f"{state_dir} already holds state ({len(present)} files, e.g. {present[0]}): "
            "restore into an empty directory, or add --force (its state files are moved into "
            "pre-restore-TIME/ inside it); nothing was changed"
        )
    outside = {
        Path("/" + name.removeprefix("files/")): (m, modes[name])
        for name, m in members.items()
        if name.startswith("files/") and files
    }
    conflicts = [
        str(p)
        for p, (m, _) in outside.items()
        if p.exists() and _read(p)[0] != m.data and not force
    ]
    if conflicts:
        raise BackupError(
            f"these files exist and differ from the archive's: {', '.join(conflicts)}; add "
            "--force to replace them (or --no-files to leave them); nothing was changed"
        )
    created = not state_dir.exists()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = state_dir / f".restore-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        _stage(staging, members, modes)
        try:
            _check_staged(staging)
        except BackupError:
            shutil.rmtree(staging)
            if created:
                state_dir.rmdir()  # as it was: missing
            raise
        # Everything is checked: from here on the state is replaced.
        aside = _set_aside(state_dir, present) if present else None
        for entry in sorted(staging.iterdir()):
            os.replace(entry, state_dir / entry.name)
        _fsync_dir(state_dir)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    written = []
    for path, (member, mode) in outside.items():
        if path.exists() and _read(path)[0] == member.data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, member.data, mode)
        written.append(str(path))
    revisions = ConfigStore(state_dir).revisions()
    return {
        "state_dir": str(state_dir),
        "revisions": len(revisions),
        "latest": revisions[-1].number if revisions else None,
        "files": written,
        "set_aside": str(aside) if present and aside else None,
        "from": {k: meta.get(k) for k in ("pacslb", "created", "host", "state_dir")},
    }


def _set_aside(state_dir: Path, present: list[PurePosixPath]) -> Path:
    """Move the state files (and revisions/) a restore replaces into pre-restore-TIME/."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = state_dir / f"pre-restore-{stamp}-{secrets.token_hex(2)}"
    aside.mkdir(mode=0o700)
    for top in sorted({rel.parts[0] for rel in present}):
        os.replace(state_dir / top, aside / top)
    return aside


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
