"""Attach (or detach) the client-address selector of core/steering.py to a listening socket's
SO_REUSEPORT group. Unprivileged: classic BPF needs no capability."""

from __future__ import annotations

import ctypes
import errno
import socket

from pacslb.core.steering import Instruction, program

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SO_DETACH_REUSEPORT_BPF = getattr(socket, "SO_DETACH_REUSEPORT_BPF", 68)  # Linux 5.8+


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


def attach(sock: socket.socket, instructions: list[Instruction]) -> None:
    """Make `instructions` the selector of the group `sock` listens in (OSError if refused)."""
    code = (_SockFilter * len(instructions))(*(_SockFilter(*i) for i in instructions))
    fprog = _SockFprog(len(instructions), code)
    # the kernel copies the program during the call; `code` is alive until it returns
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def detach(sock: socket.socket) -> None:
    """Back to the kernel's 4-tuple hash (no error when no program was attached)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def steer(sock: socket.socket, workers: int, granularity: int | None) -> None:
    """Steer the group of `sock` by client address for `workers` workers, masked to
    `granularity` bits of the listener's family; None: no steering (kernel default)."""
    if granularity is None:
        detach(sock)
        return
    family = 6 if sock.family == socket.AF_INET6 else 4
    attach(sock, program(family, workers, granularity))
