"""The control process's status as JSON: every VIP and real server with health, admin state,
last check and connections, readiness, HA role and the engines' own state. One view for
`pacslb status`, GET /api/v1/status and the WebUI."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pacslb import __version__
from pacslb.proxy.runtime import NO_SERVER

# l7-dicom figures (proxy worker counters, summed over workers): where they come from and
# the names status, the WebUI and /metrics give them.
DICOM_FIELDS = (
    "associations",  # A-ASSOCIATE-RQs forwarded
    "assoc_active",  # open now: what a drained server still holds
    "assoc_rejected",  # A-ASSOCIATE-RJ, the proxy's or the server's
    "assoc_aborted",  # ended by an A-ABORT from any side
    "pdata_pdus",  # P-DATA-TF PDUs relayed, both directions
    "assoc_seconds",  # durations of ended associations, summed
    "bytes_in",
    "bytes_out",
)
CALLING_AE_ROW = "ae:"  # proxy/runtime.py: a calling AE title's row is "ae:" + title

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess


def status_json(process: ControlProcess) -> dict[str, Any]:
    plan = process.plan or process.current_plan()
    counters = process.counters()
    services = []
    for svc in plan.services:
        dicom = str(svc.mode) == "l7-dicom"
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
                **({"dicom": dicom_summary(svc.label, servers, counters)} if dicom else {}),
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


def _figures(row: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        values = dataclasses.asdict(row)
    else:
        values = dict(row or {})
    out = {name: values.get(name, 0) for name in DICOM_FIELDS}
    ended = out["associations"] - out["assoc_active"]
    # the mean over associations that ended (the open ones have no duration yet)
    out["mean_seconds"] = round(out["assoc_seconds"] / ended, 3) if ended > 0 else None
    return out


def dicom_summary(
    service: str, servers: list[dict[str, Any]], counters: Mapping[tuple[str, str], Any]
) -> dict[str, Any]:
    """An l7-dicom service's association figures: per real server (also set on each server's
    entry as `dicom`), refused before any server (no_server: unknown called AE, no usable
    server, a malformed or late request), per calling AE title, and the totals."""
    rows = []
    for rs in servers:
        rs["dicom"] = _figures(counters.get((service, rs["label"])))
        rows.append(rs["dicom"])
    refused = _figures(counters.get((service, NO_SERVER)))
    calling = [
        {"calling_ae": server.removeprefix(CALLING_AE_ROW), **_figures(row)}
        for (label, server), row in sorted(counters.items())
        if label == service and server.startswith(CALLING_AE_ROW)
    ]
    total = {name: sum(r[name] for r in rows) for name in DICOM_FIELDS}
    total["assoc_rejected"] += refused["assoc_rejected"]
    total["assoc_aborted"] += refused["assoc_aborted"]
    return {
        "total": _figures(total),
        "no_server": {"rejected": refused["assoc_rejected"], "aborted": refused["assoc_aborted"]},
        "calling_aes": calling,
    }


def dicom_text(svc: dict[str, Any]) -> list[str]:
    """`pacslb status` lines for an l7-dicom service (none for other modes)."""
    dicom = svc.get("dicom")
    if not dicom:
        return []
    t, refused = dicom["total"], dicom["no_server"]
    lines = [
        f"  associations: {t['associations']} opened, {t['assoc_active']} active, "
        f"{t['assoc_rejected']} rejected ({refused['rejected']} before any server), "
        f"{t['assoc_aborted']} aborted; {t['pdata_pdus']} P-DATA PDUs, "
        f"{byte_size(t['bytes_in'] + t['bytes_out'])}, mean {_seconds(t['mean_seconds'])}"
    ]
    for ae in dicom["calling_aes"]:
        lines.append(
            f"    calling AE {ae['calling_ae']:<16} {ae['associations']} opened, "
            f"{ae['assoc_active']} active, {ae['assoc_rejected']} rejected, "
            f"{ae['assoc_aborted']} aborted, {ae['pdata_pdus']} P-DATA, "
            f"{byte_size(ae['bytes_in'] + ae['bytes_out'])}, mean {_seconds(ae['mean_seconds'])}"
        )
    return lines


def dicom_server_text(rs: dict[str, Any]) -> str:
    """The figures after a real server's line: associations it holds (what a drain waits
    for) and has had."""
    d = rs.get("dicom")
    if not d:
        return ""
    held = f"holds {d['assoc_active']} assoc" if d["assoc_active"] else "no assoc"
    return f" {held} ({d['associations']} opened, {d['assoc_aborted']} aborted)"


def byte_size(n: float) -> str:
    """A byte count as an operator reads it (`1.2 MB`): `pacslb status` and the WebUI's
    `size` filter alike."""
    unit = "B"
    for bigger in ("kB", "MB", "GB"):
        if n < 1000:
            break
        n, unit = n / 1000, bigger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
