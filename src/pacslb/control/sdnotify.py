"""Tell systemd how the service is doing: the sd_notify protocol (sd_notify(3)), no library.

Under `Type=notify` systemd sets $NOTIFY_SOCKET to a datagram socket (a path, or "@name" for the
abstract namespace) and waits for `READY=1` before it calls the unit started: pacslb sends it once
the first Plan has been given to every engine, so `systemctl start pacslb` returns when the
service forwards (and a unit ordered `After=pacslb.service` starts after that). Around a reload
it sends `RELOADING=1` then `READY=1` (systemd 253's Type=notify-reload also wants
MONOTONIC_USEC with RELOADING; older versions ignore it), and `STOPPING=1` when it stops. Each
message may carry a `STATUS=` line that `systemctl status` shows.

Without $NOTIFY_SOCKET (not started by systemd) every call does nothing. A send that fails is
ignored: systemd going away must never stop the load balancer.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Protocol

STATUS_MAX = 200  # a status line is one line in `systemctl status`; keep it short


def notify_socket_address(value: str | None) -> str | bytes | None:
    """$NOTIFY_SOCKET as an address for sendto: "@name" is the abstract namespace ("\\0name")."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # "vsock:..." and other transports: not used by a system service


def message(
    *,
    ready: bool = False,
    reloading: bool = False,
    stopping: bool = False,
    status: str | None = None,
    now_usec: int | None = None,
) -> bytes:
    """The datagram's text: one KEY=VALUE a line."""
    lines = []
    if reloading:
        lines.append("RELOADING=1")
        # CLOCK_MONOTONIC, as systemd reads it (time.monotonic is that clock on Linux)
        usec = now_usec if now_usec is not None else time.monotonic_ns() // 1000
        lines.append(f"MONOTONIC_USEC={usec}")
    if ready:
        lines.append("READY=1")
    if stopping:
        lines.append("STOPPING=1")
    if status is not None:
        one_line = " ".join(status.split())
        lines.append(f"STATUS={one_line[:STATUS_MAX]}")
    return ("\n".join(lines) + "\n").encode()


class Notifier:
    """Sends to $NOTIFY_SOCKET (read once, at construction); a no-op without it."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_socket_address(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, data: bytes) -> bool:
        """True when systemd's socket took the datagram."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(message(ready=True, status=status))

    def reloading(self, status: str = "reloading the config") -> bool:
        return self.send(message(reloading=True, status=status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(message(stopping=True, status=status))

    def status(self, status: str) -> bool:
        return self.send(message(status=status))


class _Process(Protocol):
    revision: int

    def not_ready(self) -> list[str]: ...
    def degraded(self) -> list[str]: ...


def status_line(process: _Process) -> str:
    """What `systemctl status pacslb` shows on its Status: line."""
    not_ready, degraded = process.not_ready(), process.degraded()
    if not_ready:
        more = f" (+{len(not_ready) - 1} more)" if len(not_ready) > 1 else ""
        return f"NOT READY: {not_ready[0]}{more}"
    text = f"ready: config revision {process.revision}"
    return text + (f"; DEGRADED: {degraded[0]}" if degraded else "")
