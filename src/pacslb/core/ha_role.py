"""This node's role in an HA pair: one value that the keepalived supervisor sets from VRRP's
notify events and that replication, state sync, conntrackd, the API and the WebUI read.

Words as the guide's appliance uses them: the *active* node holds the floating addresses (VRRP
MASTER), the *passive* one stands by (BACKUP). A node without `node.ha` is `standalone`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacslb.config import Config


class Role(StrEnum):
    STANDALONE = "standalone"  # no HA configured: this node serves alone
    STARTING = "starting"  # keepalived started, no VRRP state reported yet
    ACTIVE = "active"  # VRRP MASTER: holds the VIPs and floating gateways
    PASSIVE = "passive"  # VRRP BACKUP: ready, holds no floating address
    FAULT = "fault"  # VRRP FAULT (its interface is down, or it was told to hand over)
    STOPPED = "stopped"  # keepalived is not running

    @property
    def holds_addresses(self) -> bool:
        return self in (Role.STANDALONE, Role.ACTIVE)


Listener = Callable[[Role, Role], None]  # (old, new)


class ListenerError(Exception):
    """Listeners that raised on a role change, raised once every listener has run (the role is
    set and the others were told). The shell that sets the role reports it."""

    def __init__(self, role: Role, errors: list[Exception]) -> None:
        super().__init__(
            f"{len(errors)} listener(s) failed on the change to {role}: "
            + "; ".join(repr(e) for e in errors)
        )
        self.errors = errors


class HaState:
    """The current role, since when (monotonic and wall clock), and who wants to hear of a
    change. Listeners run in the caller's thread (the event loop) and must not block."""

    def __init__(self, role: Role = Role.STANDALONE) -> None:
        self.role = role
        self.since = time.monotonic()
        self.since_wall = time.time()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop telling `listener` (a part that closes); no error when it was not told."""
        self._listeners = [known for known in self._listeners if known != listener]

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def set(self, role: Role) -> bool:
        """Make `role` current; True (and every listener told) when it changed."""
        old = self.role
        if role is old:
            return False
        self.role = role
        self.since, self.since_wall = time.monotonic(), time.time()
        failed: list[Exception] = []
        for listener in list(self._listeners):
            try:
                listener(old, role)
            except Exception as exc:  # the next listeners must hear of the change all the same
                failed.append(exc)
        if failed:
            raise ListenerError(role, failed)
        return True


def ha_enabled(config: Config) -> bool:
    return config.node.ha is not None and config.node.ha.enabled
