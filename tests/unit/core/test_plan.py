"""The Plan: config + health + admin state -> effective weights; JSON; diff."""

from __future__ import annotations

from typing import Any

from pacslb.config import Mode
from pacslb.core.plan import Plan, build_plan, diff_plans, effective_weight
from pacslb.core.state import AdminState, Health
from pacslb.core.validate import load_data


def config(**overrides: Any) -> Any:
    service: dict[str, Any] = {
        "label": "DICOM",
        "vip": "127.0.0.30",
        "ports": "4000,5000",
        "mode": "l7-tcp",
        "persistence": {"type": "source-ip", "timeout": 3600, "granularity": "255.255.255.0"},
        "health_check": {"type": "connect", "port": 5000},
        "fallback": {"address": "127.0.0.99", "port": 4000},
        "real_servers": [
            {"label": "Srv1", "address": "127.0.1.1", "weight": 100},
            {"label": "Srv2", "address": "127.0.1.2", "weight": 50, "max_connections": 10},
            {"label": "Srv3", "address": "127.0.1.3", "port": 104},
        ],
    }
    service.update(overrides)
    return load_data({"version": 1, "virtual_services": [service]})


def test_effective_weight_is_zero_unless_online_and_not_down() -> None:
    assert effective_weight(100, AdminState.ONLINE, Health.UP) == 100
    assert effective_weight(100, AdminState.ONLINE, Health.UNKNOWN) == 100
    assert effective_weight(100, AdminState.ONLINE, Health.DOWN) == 0
    assert effective_weight(100, AdminState.DRAIN, Health.UP) == 0
    assert effective_weight(100, AdminState.HALT, Health.UP) == 0


def test_plan_carries_health_and_admin_state() -> None:
    plan = build_plan(
        config(),
        health={("DICOM", "Srv1"): Health.UP, ("DICOM", "Srv2"): Health.DOWN},
        admin={("DICOM", "Srv3"): AdminState.DRAIN},
        revision=7,
    )
    svc = plan.service("DICOM")
    assert svc is not None and plan.revision == 7
    assert svc.mode is Mode.L7_TCP and svc.ports == (4000, 5000)
    assert svc.persistence.kind == "source-ip" and svc.persistence.granularity == 24
    srv1, srv2, srv3 = svc.real_servers
    assert (srv1.effective_weight, srv2.effective_weight, srv3.effective_weight) == (100, 0, 0)
    assert [rs.label for rs in svc.available] == ["Srv1"]
    assert srv3.keeps_existing and not srv3.takes_new_connections  # drained: finishes its work
    assert not srv2.keeps_existing  # down: loses its connections and persistent clients
    assert srv3.port == 104 and srv2.max_connections == 10
    assert svc.fallback is not None and svc.fallback.address == "127.0.0.99"


def test_no_check_means_always_up() -> None:
    plan = build_plan(
        config(health_check={"type": "none"}), health={("DICOM", "Srv1"): Health.DOWN}
    )
    assert all(rs.health is Health.UP for rs in plan.services[0].real_servers)


def test_json_round_trip_is_exact() -> None:
    plan = build_plan(config(), admin={("DICOM", "Srv2"): AdminState.HALT}, revision=3)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.services[0].real_servers[1].admin is AdminState.HALT


def test_diff_names_each_change() -> None:
    old = build_plan(config())
    new_config = config(
        real_servers=[
            {"label": "Srv1", "address": "127.0.1.1", "weight": 200},
            {"label": "Srv2", "address": "127.0.1.2", "weight": 50, "max_connections": 10},
            {"label": "Srv4", "address": "127.0.1.4"},
        ]
    )
    new = build_plan(new_config, admin={("DICOM", "Srv2"): AdminState.DRAIN})
    changes = {(ch.kind, ch.server): ch.detail for ch in diff_plans(old, new)}
    assert changes[("server-changed", "Srv1")] == "weight 100 -> 200, effective_weight 100 -> 200"
    assert "admin online -> drain" in changes[("server-changed", "Srv2")]
    assert ("server-removed", "Srv3") in changes and ("server-added", "Srv4") in changes
    assert diff_plans(old, old) == ()


def test_diff_of_services() -> None:
    old = build_plan(config())
    new = build_plan(config(label="Other", ports=[104], health_check={"type": "connect"}))
    kinds = {(ch.kind, ch.service) for ch in diff_plans(old, new)}
    assert kinds == {("service-added", "Other"), ("service-removed", "DICOM")}
    changed = diff_plans(old, build_plan(config(scheduler="rr")))
    assert [str(ch) for ch in changed] == ["service-changed DICOM: scheduler wlc -> rr"]
