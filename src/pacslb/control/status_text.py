"""`pacslb status` as text: the status JSON (control/status.py) laid out one line per VIP and
real server, as an operator reads it in a terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pacslb.control.status import dicom_server_text, dicom_text


def ago(iso: str | None) -> str:
    if not iso:
        return ""
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    return f"{seconds:.0f}s ago"


def status_text(status: dict[str, Any]) -> str:
    out = [
        f"pacslb {status['pacslb']} pid {status['pid']}  config revision {status['revision']}  "
        f"up {status['uptime_s']:.0f}s  engines: {', '.join(status['engines']) or 'none'}  "
        + ("ready" if status["ready"] else "NOT READY")
        + (", DEGRADED" if status.get("degraded") else "")
    ]
    if (ha := status.get("ha")) and ha["role"] != "standalone":
        out.append(f"ha: {ha['role']} since {ha['since']} ({ago(ha['since'])})")
        if ha.get("peer"):  # paired (control/replica.py)
            out.append(f"ha peer: {ha['peer']['address']}: replication {ha['replication']['text']}")
    for reason in status.get("not_ready", []):
        out.append(f"not ready: {reason}")
    for reason in status.get("degraded", []):
        out.append(f"degraded: {reason}")
    proxy = status.get("proxy") or {}
    if proxy.get("workers"):
        workers = "  ".join(
            f"{w['worker']} pid {w['pid'] or '-'} {w['state']} restarts={w['restarts']}"
            for w in proxy["workers"]
        )
        spare = f"  spare pid {proxy['spare']}" if proxy.get("spare") else ""
        restarts = sorted(proxy.get("restarts", {}).items())
        faults = ", ".join(f"{n} {why}" for why, n in restarts if n)
        out.append(
            f"proxy workers: {workers}{spare}" + (f"  (replaced: {faults})" if faults else "")
        )
    for svc in status["services"]:
        ports = ",".join(str(p) for p in svc["ports"])
        out.append(
            f"\n{svc['label']}  {svc['vip']}:{ports}/{svc['protocol']}  {svc['mode']}  "
            f"{svc['scheduler']}  persistence={svc['persistence']}  ({svc['forwarded_by']})"
        )
        for rs in svc["real_servers"]:
            port = f":{rs['port']}" if rs["port"] else ""
            conns = rs["connections"]
            count = f"{conns['active']}/{conns['total']}" if conns else "-"
            if conns and svc["mode"] == "l7-http":
                errors = conns["responses"].get("5xx", 0)
                count += f" req={conns['requests']} 5xx={errors}"
            if conns and conns.get("retries"):
                count += f" retried={conns['retries']}"
            if conns and conns.get("ejected"):
                count += " EJECTED"  # passive health has it out (in that many workers)
            count += dicom_server_text(rs)
            last = rs["last_check"]
            check = f"{last['reason']} ({ago(last['at'])})" if last else "not checked yet"
            out.append(
                f"  {rs['label']:<28} {rs['address'] + port:<22} {rs['health']:<7} "
                f"{rs['admin']:<6} w={rs['effective_weight']}/{rs['weight']:<5} "
                f"conns={count:<9} {check}"
            )
        out += dicom_text(svc)  # l7-dicom: associations per service and calling AE
    return "\n".join(out)
