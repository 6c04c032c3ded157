"""Durable state on disk: numbered config revisions and the per-real-server admin state.

A thin I/O shell. Every write goes through `write_atomic` (temp file, fsync, rename, fsync the
directory), so a crash or power loss leaves either the old file or the new one, never half of
each. Anything that cannot be read back is an error naming the file: silently starting from
empty would, for the admin state, bring halted servers back into rotation.

Revisions layout (`state_dir/revisions/`):
    000001.yaml ...  the operator's text, byte for byte (comments and layout survive)
    index.json       metadata of every committed revision (number, created, comment, author, sha256)
    .lock            flock target that serialises savers across processes

Replacing index.json is the commit point: a revision exists iff the index lists it. A crash after
the YAML file is written but before the index is replaced leaves an orphan file that the next
save overwrites under the same number, so numbers stay consecutive and nothing committed is ever
rewritten. A config change commits its revision before it replaces the config file; if that
file cannot be written, `withdraw` takes the revision out of the index again (it never took
effect). Metadata lives in one index rather than a header inside each YAML file because a
header would change the operator's bytes, and the index gives `revisions()` in one read.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacslb import config as c
from pacslb.config import Config
from pacslb.core.state import AdminState
from pacslb.core.validate import FileExists, load_text
from pacslb.errors import ConfigError, PacslbError, Problem

INDEX_VERSION = 1
STATE_VERSION = 1
# Configs can name key files and check scripts; keep the history readable by its owner only.
_REVISION_MODE = 0o600


class RevisionNotFound(LookupError):
    """No committed revision has this number."""


class StateFileError(PacslbError):
    """A state file exists but cannot be read or parsed; the message names the file."""


class ConfigConflict(PacslbError):
    """A change was made from a config that another change replaced meanwhile."""


class HandEdited(ConfigConflict):
    """The config file no longer holds the running revision: someone edited it by hand (and
    has not reloaded it, or the reload was refused). A change from the API or WebUI would
    overwrite that edit, so it is refused; the operator reloads the file or discards the edit.

    `broken`: the process started from the last good revision because the file could not be
    used; the file is the operator's (broken) one, to be fixed and reloaded.
    """

    def __init__(self, path: Path, revision: int, state_dir: Path, broken: bool = False) -> None:
        # The discard command writes a new file and renames it only once `config show` has
        # succeeded: `show N > FILE` would empty the file first, even when show fails.
        new = f"{path}.revision-{revision}"
        discard = (
            f"discard it (pacslb config show {revision} --state-dir {state_dir} > {new} && "
            f"mv {new} {path}), then make this change again"
        )
        if broken:
            super().__init__(
                f"the config file {path} could not be used at start (pacslb check {path}) and "
                f"revision {revision}, the last good one, is running; nothing was applied and "
                f"the file is kept. Either fix the file and reload it (pacslb reload "
                f"--state-dir {state_dir}), or {discard}"
            )
        else:
            super().__init__(
                f"the config file {path} was edited by hand since revision {revision} (the "
                f"running config); nothing was applied and the edit is kept. Apply the edit "
                f"first (pacslb reload --state-dir {state_dir}), or {discard}"
            )
        self.path, self.revision, self.broken = path, revision, broken


def file_holds(path: Path, text: str) -> bool:
    """Whether the file at `path` holds `text` as `read_config` reads it: line endings aside
    (an editor on Windows saves CRLF; the revision holds LF). A missing file holds nothing that
    could be lost: True; one that is not UTF-8 was not written by pacslb: False (an edit).
    OSError when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8") == text
    except FileNotFoundError:
        return True
    except UnicodeDecodeError:
        return False


def line_ending(path: Path) -> str:
    """The line ending the file at `path` uses ("\r\n" or "\n"): a rewrite keeps it, so an
    operator's editor does not see every line change. "\n" when it cannot be read."""
    try:
        return "\r\n" if b"\r\n" in path.read_bytes() else "\n"
    except OSError:
        return "\n"


class StorageError(PacslbError):
    """The host refused a write (disk full, read-only, no permission): the change that needed
    it was refused and nothing of it was kept. The message says what, where and the errno."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.errno = code

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


def storage_error(exc: OSError, disk: str) -> StorageError:
    """An OSError of a write as an operator reads it: 'state disk full: cannot write
    /var/lib/pacslb/revisions/000007.yaml: No space left on device (ENOSPC)'."""
    code = exc.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else "?"
    where = f"cannot write {exc.filename}" if exc.filename else "cannot write"
    problem = {
        errno.ENOSPC: f"{disk} full",
        errno.EDQUOT: f"{disk} quota exceeded",
        errno.EROFS: f"{disk} read-only",
        errno.EACCES: f"{disk} not writable",
        errno.EPERM: f"{disk} not writable",
    }.get(code or 0, f"{disk} write failed")
    return StorageError(f"{problem}: {where}: {exc.strerror or exc} ({name})", code)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so readers and crashes see the old file or the new, never a mix.

    The temp file sits in the same directory because rename is atomic only within a file system;
    the directory fsync makes the rename itself durable (ext4/xfs may otherwise lose it).
    Errors are OSError with `filename` set to `path` (ENOSPC from a write names no file);
    the temp file is removed on any failure.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp creates 0600; fchmod ignores the umask
            view = memoryview(data)
            while view:  # unbuffered: a short write or ENOSPC is seen here, not at close
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise
    try:
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error with `path` as its file name (the temp file's name says nothing)."""
    if exc.errno is None:
        return exc  # not from the OS: nothing to name
    return OSError(exc.errno, exc.strerror, str(path))  # OSError() picks the same subclass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive flock; a fresh open per call, so threads of one process exclude each other too."""
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_json(path: Path) -> Any | None:
    """Parsed JSON, None when the file does not exist, StateFileError for anything else."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateFileError(f"{path}: not valid JSON: {e}") from e


def _dump_json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- config revisions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revision:
    number: int
    created: datetime  # timezone-aware UTC
    comment: str
    author: str
    sha256: str  # of the UTF-8 text

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "created": self.created.isoformat(),
            "comment": self.comment,
            "author": self.author,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, data: Any) -> Revision:
        return cls(
            number=int(data["number"]),
            created=datetime.fromisoformat(data["created"]),
            comment=str(data["comment"]),
            author=str(data["author"]),
            sha256=str(data["sha256"]),
        )


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    """Unified diff of two texts; a last line without a newline still gets its own line."""

    def lines(text: str) -> list[str]:
        return [ln if ln.endswith("\n") else ln + "\n" for ln in text.splitlines(keepends=True)]

    return "".join(difflib.unified_diff(lines(old), lines(new), old_name, new_name))


def file_exists(base: Path) -> FileExists:
    """Whether a file a config names (a TLS file, a check program) exists, relative paths
    taken from `base`, the config file's folder: what validation and applying both judge."""
    return lambda p: (p if p.is_absolute() else base / p).is_file()


def read_config(path: Path) -> tuple[str, Config]:
    """A config file's text and its validated Config; ConfigError lists every problem.

    Relative paths inside the config (TLS files, check scripts) are relative to its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = Problem("", f"cannot read: {exc.strerror}")
        raise ConfigError([problem], str(path)) from None
    base = path.resolve().parent
    config = load_text(text, str(path), file_exists(base))
    return text, absolute_paths(config, base)


def absolute_paths(config: Config, base: Path) -> Config:
    """The config with its relative file paths (TLS files, external check programs) made
    absolute against `base`, as validation resolved them: what was checked is what is used,
    whatever the current directory of the process that uses it."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    def fix_check(check: Any) -> Any:
        if isinstance(check, c.ExternalCheck) and not Path(check.command).is_absolute():
            return check.model_copy(update={"command": str(base / check.command)})
        if isinstance(check, c.AllChecks):
            return check.model_copy(update={"checks": [fix_check(x) for x in check.checks]})
        return check

    services = []
    for vs in config.virtual_services:
        update: dict[str, Any] = {"health_check": fix_check(vs.health_check)}
        if vs.tls is not None:
            pairs = [
                pair.model_copy(update={"certificate": fix(pair.certificate), "key": fix(pair.key)})
                for pair in vs.tls.certificates
            ]
            update["tls"] = vs.tls.model_copy(update={"certificates": pairs})
        services.append(vs.model_copy(update=update))
    ui = config.node.webui
    webui = ui.model_copy(update={"certificate": fix(ui.certificate), "key": fix(ui.key)})
    node = config.node.model_copy(update={"webui": webui})
    return config.model_copy(update={"virtual_services": services, "node": node})


class ConfigStore:
    """Append-only history of validated config texts under `state_dir/revisions/`."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "revisions"
        self._index = self.dir / "index.json"
        self._lock = self.dir / ".lock"

    def _file(self, number: int) -> Path:
        return self.dir / f"{number:06d}.yaml"

    def revisions(self) -> list[Revision]:
        """Every committed revision, oldest first."""
        data = _read_json(self._index)
        if data is None:
            return []
        try:
            if data["version"] != INDEX_VERSION:
                raise ValueError(f"unsupported version {data['version']!r}")
            revs = [Revision.from_json(item) for item in data["revisions"]]
        except (KeyError, TypeError, ValueError) as e:
            raise StateFileError(f"{self._index}: malformed revision index: {e!r}") from e
        return sorted(revs, key=lambda r: r.number)

    def latest(self) -> Revision | None:
        revs = self.revisions()
        return revs[-1] if revs else None

    def get(self, number: int) -> Revision:
        for rev in self.revisions():
            if rev.number == number:
                return rev
        raise RevisionNotFound(f"config revision {number} does not exist")

    def text(self, number: int) -> str:
        """The exact text saved as `number`; checked against its sha256 so bit rot is loud."""
        rev = self.get(number)
        path = self._file(number)
        try:
            text = path.read_bytes().decode()
        except (OSError, UnicodeDecodeError) as e:
            raise StateFileError(f"{path}: cannot read revision {number}: {e}") from e
        if _sha256(text) != rev.sha256:
            raise StateFileError(f"{path}: content does not match the sha256 in {self._index}")
        return text

    def config(self, number: int) -> Config:
        return load_text(self.text(number), f"revision {number}", lambda p: p.exists())

    def diff(self, a: int, b: int) -> str:
        return unified_diff(self.text(a), self.text(b), f"revision {a}", f"revision {b}")

    def save(
        self,
        text: str,
        comment: str = "",
        author: str = "",
        base_dir: Path | None = None,
        validated: bool = False,
    ) -> Revision:
        """Validate, then commit `text` as the next revision (or return the latest if identical).

        Relative paths in the config (TLS files, check scripts) are resolved against `base_dir`
        (the config file's folder), else the current directory. Raises ConfigError, having
        written nothing, when the text is not a valid config (`validated`: the caller has just
        validated it; spares a second parse). Raises StorageError ("state disk full: ...
        (ENOSPC)") when the disk refuses a write: nothing is committed then, and no temp file
        is left behind.
        """
        if not validated:
            base = base_dir or Path.cwd()
            load_text(text, "new revision", file_exists(base))
        try:
            return self._commit(text, comment, author)
        except OSError as exc:
            raise storage_error(exc, "state disk") from None

    def _commit(self, text: str, comment: str, author: str) -> Revision:
        sha = _sha256(text)
        self.dir.mkdir(parents=True, exist_ok=True)
        # The lock spans read-latest .. replace-index so two savers cannot take one number.
        with _locked(self._lock):
            revs = self.revisions()
            if revs and revs[-1].sha256 == sha:
                return revs[-1]
            rev = Revision(
                number=revs[-1].number + 1 if revs else 1,
                created=datetime.now(UTC),
                comment=comment,
                author=author,
                sha256=sha,
            )
            write_atomic(self._file(rev.number), text.encode(), _REVISION_MODE)
            index = {
                "version": INDEX_VERSION,
                "revisions": [r.to_json() for r in [*revs, rev]],
            }
            write_atomic(self._index, _dump_json(index), _REVISION_MODE)  # the commit point
            return rev

    def withdraw(self, rev: Revision) -> None:
        """Undo the commit of `rev`, the latest revision, whose change could not be completed
        (its config file could not be written): the index drops it, as if the save had
        stopped before its commit point, and the next save takes its number again. History
        that took effect is never rewritten: only a revision that never went live comes here.

        Raises StorageError when the index cannot be rewritten, LookupError when `rev` is no
        longer the latest (another saver came after it: it stays)."""
        try:
            with _locked(self._lock):
                revs = self.revisions()
                if not revs or revs[-1] != rev:
                    raise LookupError(f"revision {rev.number} is no longer the latest")
                index = {"version": INDEX_VERSION, "revisions": [r.to_json() for r in revs[:-1]]}
                write_atomic(self._index, _dump_json(index), _REVISION_MODE)
                with contextlib.suppress(OSError):
                    self._file(rev.number).unlink()
        except OSError as exc:
            raise storage_error(exc, "state disk") from None

    def rollback(self, number: int, author: str = "") -> Revision:
        """Save revision `number`'s text as a new revision; history is never rewritten.

        When that text is already the latest, the latest is returned (nothing to roll back).
        """
        return self.save(self.text(number), f"rollback to revision {number}", author)


# --- admin state ---------------------------------------------------------------------------

ServerKey = tuple[str, str]  # (virtual service label, real server label)


class AdminStateStore:
    """Per-real-server admin state (drain/halt) kept apart from the config.

    Only exceptions are stored: a server absent from the file is ONLINE. The file is read on
    every call so that a CLI and the control process never act on stale copies.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = self.path.with_name(self.path.name + ".lock")

    def all(self) -> dict[ServerKey, AdminState]:
        data = _read_json(self.path)
        if data is None:
            return {}
        out: dict[ServerKey, AdminState] = {}
        try:
            if data["version"] != STATE_VERSION:
                raise ValueError(f"unsupported version {data['version']!r}")
            for service, servers in data["servers"].items():
                for server, state in servers.items():
                    out[(str(service), str(server))] = AdminState(state)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StateFileError(f"{self.path}: malformed admin state file: {e!r}") from e
        return out

    def get(self, service: str, server: str) -> AdminState:
        return self.all().get((service, server), AdminState.ONLINE)

    def set(self, service: str, server: str, state: AdminState) -> None:
        """Raises StorageError (nothing changed) when the disk refuses the write."""
        state = AdminState(state)
        if state is AdminState.REMOVING:
            raise ValueError("removing is not an admin state to set: remove the server")
        with self._locked():
            states = self.all()
            before = dict(states)
            if state is AdminState.ONLINE:
                states.pop((service, server), None)
            else:
                states[(service, server)] = state
            if states != before:
                self._write(states)

    def prune(self, valid: AbstractSet[ServerKey]) -> list[ServerKey]:
        """Drop entries for servers no longer in the config; return them, sorted."""
        with self._locked():
            states = self.all()
            gone = sorted(key for key in states if key not in valid)
            if gone:
                self._write({k: v for k, v in states.items() if k in valid})
            return gone

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Read-modify-write: without the lock two writers could each drop the other's change.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self._lock):
            yield

    def _write(self, states: dict[ServerKey, AdminState]) -> None:
        servers: dict[str, dict[str, str]] = {}
        for (service, server), state in sorted(states.items()):
            servers.setdefault(service, {})[server] = state.value
        try:
            write_atomic(self.path, _dump_json({"version": STATE_VERSION, "servers": servers}))
        except OSError as exc:  # not written: the admin state in force stays as it was
            raise storage_error(exc, "state disk") from None
