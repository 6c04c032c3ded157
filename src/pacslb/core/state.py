"""Small shared value types for the decision cores: a real server's admin state and health."""

from __future__ import annotations

from enum import StrEnum


class AdminState(StrEnum):
    """What the operator asked for a real server (survives restarts)."""

    ONLINE = "online"  # takes new connections
    DRAIN = "drain"  # no new connections; existing ones and persistent clients finish
    HALT = "halt"  # no traffic at all; existing connections are closed
    # Never set by an operator: a real server removed from the config whose connections finish
    # (no new clients, its persistent clients go elsewhere) before it leaves the Plan.
    REMOVING = "removing"


class Health(StrEnum):
    """What the health checker last concluded about a real server."""

    UNKNOWN = "unknown"  # not checked yet: usable, as keepalived and HAProxy treat new servers
    UP = "up"
    DOWN = "down"
