"""What a restore may write, and with which mode: the archive's manifest is not signed, so it
is not trusted to say where files go.

A restore runs as root. Without this, any `files/<absolute path>` member of an edited archive
would be written there with the archive's mode (a setuid program, /etc/cron.d/x). So:

- `state/...` members must be the state directory's known files (revisions, admin states,
  users, tokens, the device-cookie key, the WebUI's generated certificate and key, HA pairing,
  the demo profile's files) or files inside it that the restored config names;
- `files/...` members must be the restored config file itself (a .yaml/.yml that reads as a
  pacslb config) or a certificate or key that config names (node.webui, the services' tls),
  and hold PEM;
- no member may carry a setuid, setgid or sticky bit, and modes are clamped: 0o600 for keys,
  secrets and state, at most 0o644 for certificates and the config file.

Anything else refuses the whole restore (nothing changed), naming the member. Links and
devices never get this far: read_archive takes plain files only.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

from pacslb.config import Config
from pacslb.control.store import absolute_paths
from pacslb.core.validate import load_text
from pacslb.errors import ConfigError, PacslbError

SECRET_MODE = 0o600  # keys, tokens, users, revisions, any state file
PUBLIC_MODE = 0o644  # at most: certificates and the config file
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
STATE_FILES = {
    "admin-state.json": SECRET_MODE,
    "webui-users.json": SECRET_MODE,
    "api-tokens.json": SECRET_MODE,
    "webui-device.key": SECRET_MODE,
    "webui-key.pem": SECRET_MODE,
    "webui-cert.pem": PUBLIC_MODE,
    "ha-peer.json": SECRET_MODE,  # the peer's API token: a secret
    "demo-key.pem": SECRET_MODE,  # `pacslb profile demo` keeps its files in the state dir
    "demo-cert.pem": PUBLIC_MODE,
    "pacslb.yaml": SECRET_MODE,
    "revisions/index.json": SECRET_MODE,
}
REVISION = re.compile(r"revisions/[0-9]{6,}\.yaml")
CONFIG_SUFFIXES = (".yaml", ".yml")


class RestoreRefused(PacslbError):
    """A member the restore must not write; nothing was changed."""


def _named(config: Config) -> dict[Path, int]:
    """The certificates (0o644 at most) and keys (0o600) `config` names, absolute."""
    out: dict[Path, int] = {}
    pairs = [(config.node.webui.certificate, config.node.webui.key)]
    for vs in config.virtual_services:
        if vs.tls is not None:
            pairs += [(p.certificate, p.key) for p in vs.tls.certificates]
    for cert, key in pairs:
        if cert is not None and cert.is_absolute():
            out.setdefault(cert, PUBLIC_MODE)
        if key is not None and key.is_absolute():
            out[key] = SECRET_MODE  # a combined PEM (cert and key in one file) is a key
    return out


def _config_of(text: bytes, path: Path, member: str) -> Config:
    try:
        config = load_text(text.decode("utf-8"), str(path), lambda _p: True)
    except (ConfigError, UnicodeDecodeError) as exc:
        raise RestoreRefused(f"{member}: the config file in it does not read ({exc})") from None
    return absolute_paths(config, path.parent)


def latest_revision(members: dict[str, Any]) -> str | None:
    names = sorted(n for n in members if REVISION.fullmatch(n.removeprefix("state/")))
    return names[-1] if names else None


def named_by_archive(
    meta: dict[str, Any], members: dict[str, Any]
) -> tuple[Path | None, dict[Path, int]]:
    """The config file's path (None: the backup was made without one) and the certificates
    and keys named by the restored config: the config file in the archive, and the latest
    revision (what a node restored from it runs)."""
    source_state = Path(str(meta.get("state_dir") or "/nonexistent"))
    config_file = meta.get("config_file")
    config_path: Path | None = None
    named: dict[Path, int] = {}
    if config_file:
        config_path = Path(str(config_file))
        if not config_path.is_absolute() or config_path.suffix not in CONFIG_SUFFIXES:
            raise RestoreRefused(
                f"MANIFEST.json names {config_file!r} as the config file: not an absolute "
                f"path ending in {' or '.join(CONFIG_SUFFIXES)}"
            )
        name = _member_name(config_path, source_state)
        if name in members:
            named.update(_named(_config_of(members[name].data, config_path, name)))
    latest = latest_revision(members)
    if latest is not None:
        base = config_path or source_state / "pacslb.yaml"  # relative paths: from its folder
        try:
            revision = _config_of(members[latest].data, base, latest)
        except RestoreRefused:
            revision = None  # one an older pacslb wrote, say: what it names stays unnamed
        for path, limit in (_named(revision) if revision is not None else {}).items():
            named[path] = min(named.get(path, limit), limit)
    return config_path, named


def allowed(meta: dict[str, Any], members: dict[str, Any]) -> dict[str, int]:
    """Every member's clamped mode; RestoreRefused naming the first member not allowed."""
    modes, refused = judge(meta, members)
    if refused:
        name, why = refused[0]
        raise RestoreRefused(f"{name}: {why}")
    return modes


def judge(
    meta: dict[str, Any], members: dict[str, Any]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(the clamped mode of every member allowed, [(member, why) for those refused])."""
    source_state = Path(str(meta.get("state_dir") or "/nonexistent"))
    config_path, named = named_by_archive(meta, members)
    modes: dict[str, int] = {}
    refused: list[tuple[str, str]] = []
    for name, member in sorted(members.items()):
        limit = limit_of(name, config_path, named, source_state)
        if member.mode & SPECIAL_BITS:
            refused.append((name, f"mode {member.mode:#o} has a setuid, setgid or sticky bit"))
        elif limit is None:
            refused.append(
                (
                    name,
                    "not a file a pacslb backup holds (neither a known state file nor the "
                    "config file or a certificate or key the restored config names)",
                )
            )
        elif _path_of(name, source_state) in named and b"-----BEGIN " not in member.data:
            refused.append((name, "named by the config as a certificate or key, but not PEM"))
        else:
            modes[name] = (member.mode & limit) | 0o600
    return modes, refused


def _member_name(path: Path, source_state: Path) -> str:
    """Where `path` is in an archive made on a node with `source_state` as its state dir."""
    try:
        return "state/" + path.relative_to(source_state).as_posix()
    except ValueError:
        return "files" + str(path)


def _path_of(name: str, source_state: Path) -> Path:
    if name.startswith("state/"):
        return source_state / name.removeprefix("state/")
    return Path("/" + name.removeprefix("files/"))


def limit_of(
    name: str, config_path: Path | None, named: dict[Path, int], source_state: Path
) -> int | None:
    """The most permissive mode for member `name`, or None: not allowed at all."""
    if name.startswith("state/"):
        rel = name.removeprefix("state/")
        if rel in STATE_FILES:
            return STATE_FILES[rel]
        if REVISION.fullmatch(rel):
            return SECRET_MODE
    path = _path_of(name, source_state)
    if config_path is not None and path == config_path:
        return SECRET_MODE if name.startswith("state/") else PUBLIC_MODE
    return named.get(path)
