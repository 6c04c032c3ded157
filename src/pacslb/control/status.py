"""The control process's status as JSON: every VIP and real server with health, admin state,
last check and connections, readiness, HA role and the engines' own state. One view for
`pacslb status`, GET /api/v1/status and the WebUI."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pacslb import __version__
from pacslb.proxy.runtime import NO_SERVER

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess


def status_json(process: ControlProcess) -> dict[str, Any]:
    plan = process.plan or process.current_plan()
    counters = process.counters()
    services = []
    for svc in plan.services:
        servers = []
        for rs in svc.real_servers:
            key = (svc.label, rs.label)
            target = process.checker.target(key)
            last = None
            if target is not None and target.last is not None:
                last = {
                    "ok": target.last.ok,
                    "reason": target.last.reason,
                    "latency_ms": round(target.last.latency * 1000, 3),
                    "at": datetime.fromtimestamp(target.last_at or 0, UTC).isoformat(),
                    "checks": target.checks,
                }
            count = counters.get(key)
            servers.append(
                {
                    "label": rs.label,
                    "address": rs.address,
                    "port": rs.port,
                    "weight": rs.weight,
                    "effective_weight": rs.effective_weight,
                    "admin": str(rs.admin),
                    "health": str(rs.health),
                    "last_check": last,
                    "connections": None if count is None else dataclasses.asdict(count),
                }
            )
        services.append(
            {
                "label": svc.label,
                "vip": svc.vip,
                "ports": list(svc.ports),
                "protocol": svc.protocol,
                "mode": str(svc.mode),
                "scheduler": str(svc.scheduler),
                "persistence": svc.persistence.kind,
                "forwarded_by": "kernel" if svc.mode.is_kernel else "proxy",
                # l7-http requests answered 503 by the proxy: no server could take them
                "no_server": no_server.responses.get("5xx", 0)
                if (no_server := counters.get((svc.label, NO_SERVER)))
                else 0,
                "real_servers": servers,
            }
        )
    return {
        "pacslb": __version__,
        "pid": os.getpid(),
        "config": str(process.config_path),
        "revision": process.revision,
        "ready": process.ready,
        "not_ready": process.not_ready(),  # why not, one line each
        "degraded": process.degraded(),  # forwarding, but not what the config file says
        "started": process.started.isoformat(timespec="seconds"),
        "uptime_s": round((datetime.now(UTC) - process.started).total_seconds(), 1),
        # The data planes this config uses (the others are idle and hold nothing).
        "engines": sorted({svc["forwarded_by"] for svc in services}),
        "ha": {**process.keepalived.status(), **process.replica.status_json()},  # role, peer
        "ha_sync": process.ha_sync.status() if process.ha_sync else None,  # control/hasync.py
        "services": services,
        **process.engine_status(),  # "proxy": {"workers": [...], "restarts": {...}}
    }
