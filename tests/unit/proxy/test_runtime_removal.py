"""The proxy's per-service state keeps a removed server's connections while it drains
(REMOVING), sends it nothing new, moves its persistent clients, and cuts what is left only
when the server leaves the Plan (the drain cap)."""

from __future__ import annotations

from typing import Any

from pacslb.core.plan import build_plan, removals
from pacslb.core.validate import load_data
from pacslb.proxy.runtime import ServiceRuntime


class Conn:
    def __init__(self) -> None:
        self.aborted = False
        self.why = ""

    def abort(self, reason: str = "") -> None:
        self.aborted, self.why = True, reason


def config(*labels: str) -> Any:
    servers = [{"label": x, "address": "127.0.1.1", "port": 9000 + i} for i, x in enumerate(labels)]
    service = {
        "label": "DICOM",
        "vip": "127.0.0.30",
        "ports": [4000],
        "mode": "l7-tcp",
        "persistence": {"type": "source-ip", "timeout": 3600},
        "health_check": {"type": "none"},
        "real_servers": servers,
    }
    return load_data({"version": 1, "virtual_services": [service]})


def test_removing_keeps_connections_moves_clients_and_the_cap_cuts() -> None:
    old = config("Srv1", "Srv2")
    plan = build_plan(old)
    runtime = ServiceRuntime(plan.services[0])
    picked = runtime.pick("198.18.0.7", now=1.0)
    assert picked is not None and picked.label == "Srv1"
    runtime.release("198.18.0.7", "Srv1", now=1.0)  # persistent: the client sticks to Srv1
    conn = Conn()
    runtime.opened("Srv1", conn)

    new = config("Srv2")
    leaving = removals(plan, old, new, now=0.0)
    runtime.update(build_plan(new, leaving=leaving).services[0])
    assert not conn.aborted  # draining: its connection goes on
    for i in range(5):  # nothing new, not even the client that stuck to it
        rs = runtime.pick("198.18.0.7" if i == 0 else f"198.18.0.{10 + i}", now=2.0)
        assert rs is not None and rs.label == "Srv2"
    runtime.closed("Srv1", conn)
    assert runtime.stats["Srv1"].active == 0  # what the control process waits for

    late = Conn()
    runtime.opened("Srv1", late)  # (as if it were still open at the cap)
    runtime.update(build_plan(new).services[0])  # gone from the Plan: the cap cuts it
    assert late.aborted and late.why == "the real server was removed"  # as the event says
