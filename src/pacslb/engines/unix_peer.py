"""Which process listens on a Unix socket, held by a pidfd: the kernel's record (the peer's
credentials, the socket tables), never a pid file, which may name another process by now.

Used for a proxy worker found alive but not answering (stopped, hung): it must be killed, and
only it, before another worker starts on its path; a second one beside it would leave the stuck
one holding its share of every listening port (SO_REUSEPORT).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from pathlib import Path

from pacslb.errors import EngineError

_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5+; Python 3.12 lacks the name
_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags: a listening socket


def listener(path: Path) -> tuple[int, int] | None:
    """The process listening on `path` as (pid, pidfd); None if nobody listens (a stale file,
    or that process exited meanwhile). The caller owns the pidfd. Blocks on /proc reads: call
    it off the event loop. EngineError if a process listens but cannot be identified."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a Unix connect either succeeds at once or fails
        try:
            probe.connect(str(path))
        except BlockingIOError:  # EAGAIN: its backlog is full, it accepts nothing
            return _listener_by_inode(path)
        except OSError:  # ENOENT, ECONNREFUSED: nobody listens there
            return None
        pid = _peer_pid(probe)
        try:
            pidfd: int = probe.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:
                return None  # ESRCH: it exited since the connect
            return pid_checked_again(path, pid)
    return pid, pidfd


def pid_checked_again(path: Path, pid: int) -> tuple[int, int] | None:
    """For a kernel without SO_PEERPIDFD: open a pidfd for `pid`, then ask the kernel again who
    listens on `path`; if that is no longer `pid`, the pid may have been given to another
    process in between, and the pidfd is dropped."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None  # exited
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(str(path))
            again = _peer_pid(probe)
        except (OSError, EngineError):
            again = None
    if again != pid:
        os.close(pidfd)
        if again is None:
            return None
        raise EngineError(f"the process listening at {path} changed while it was identified")
    return pid, pidfd


def _peer_pid(probe: socket.socket) -> int:
    creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid = int(_UCRED.unpack(creds)[0])
    if pid <= 0:  # in another pid namespace
        raise EngineError(f"the process listening at {probe.getpeername()} has no pid here")
    return pid


def listening_inodes(table: str, path: str) -> list[int]:
    """The inodes of the listening sockets bound to `path`, from the text of /proc/net/unix
    (Num RefCount Protocol Flags Type St Inode Path)."""
    inodes = []
    for line in table.splitlines()[1:]:
        fields = line.split(maxsplit=7)
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & _ACCEPTING:
            inodes.append(int(fields[6]))
    return inodes


def _holds(pid: int, names: set[str]) -> bool:
    """Whether the process has an open descriptor whose link is one of `names`
    ("socket:[INODE]")."""
    try:
        return any(_link(fd) in names for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # exited meanwhile, or not ours to read
        return False


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:  # closed meanwhile
        return ""


def _holders(names: set[str]) -> list[int]:
    pids = (int(proc.name) for proc in Path("/proc").iterdir() if proc.name.isdigit())
    return [pid for pid in pids if _holds(pid, names)]


def _listener_by_inode(path: Path) -> tuple[int, int] | None:
    """A listener whose backlog is full: no connection reaches it to ask the kernel its peer.
    Find the process holding the listening socket bound to `path` (/proc/net/unix), and
    check again after pidfd_open that it still holds it (its pid was not given to another)."""
    inodes = listening_inodes(Path("/proc/net/unix").read_text(), str(path))
    names = {f"socket:[{inode}]" for inode in inodes}
    pids = _holders(names)
    if len(pids) != 1:
        # Nobody found: bound under another name (a spare promoted by a rename) or a process
        # of another user. Several: the socket was inherited. Either way not one to kill.
        raise EngineError(
            f"a process listens at {path} but accepts nothing (its backlog is full) and "
            f"{'several hold it' if pids else 'it could not be found'}; find it with "
            f"`ss -xlp src {path}` and stop it"
        )
    try:
        pidfd = os.pidfd_open(pids[0])
    except OSError:
        return None
    if not _holds(pids[0], names):
        os.close(pidfd)
        return None
    return pids[0], pidfd
