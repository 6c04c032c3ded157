"""The Plan: config + health + admin state -> effective weights; JSON; diff."""

from __future__ import annotations

from typing import Any

from pacslb.config import Mode
from pacslb.core.plan import Plan, build_plan, diff_plans, drained, effective_weight, removals
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


# --- removal: drain first, then gone ---------------------------------------------------------


def without(cfg: Any, *labels: str, **timeouts: float) -> Any:
    (vs,) = cfg.virtual_services
    servers = [rs for rs in vs.real_servers if rs.label not in labels]
    update: dict[str, Any] = {"real_servers": servers}
    if timeouts:
        update["timeouts"] = vs.timeouts.model_copy(update=timeouts)
    return cfg.model_copy(update={"virtual_services": [vs.model_copy(update=update)]})


def test_a_removed_server_stays_in_the_plan_as_removing_until_dropped() -> None:
    old = config()
    plan = build_plan(old, {("DICOM", "Srv2"): Health.UP}, {("DICOM", "Srv3"): AdminState.HALT})
    new = without(old, "Srv2", "Srv3")
    leaving = removals(plan, old, new, now=100.0)
    # Srv3 was halted: its connections are cut already, nothing to wait for.
    assert list(leaving) == [("DICOM", "Srv2")]
    gone = leaving[("DICOM", "Srv2")]
    assert (gone.since, gone.deadline, gone.cap) == (100.0, 1000.0, 900.0)  # the 15 min default
    after = build_plan(new, leaving=leaving)
    (svc,) = after.services
    assert [rs.label for rs in svc.real_servers] == ["Srv1", "Srv2"]
    srv2 = svc.real_servers[1]
    assert srv2.admin is AdminState.REMOVING and srv2.health is Health.UP
    assert srv2.effective_weight == 0 and not srv2.takes_new_connections
    assert not srv2.keeps_existing  # its persistent clients are scheduled anew
    assert Plan.from_json(after.to_json()) == after
    assert [str(ch) for ch in diff_plans(plan, after)] == [
        "server-changed DICOM/Srv2: effective_weight 50 -> 0, admin online -> removing",
        "server-removed DICOM/Srv3",
    ]
    # Put back under the same label: the config's server wins, no duplicate.
    (back,) = build_plan(old, leaving=leaving).services
    assert [(rs.label, rs.admin) for rs in back.real_servers][1] == ("Srv2", AdminState.ONLINE)
    assert len(back.real_servers) == 3


def test_a_cap_of_zero_or_a_removed_service_drains_nothing() -> None:
    old = config()
    plan = build_plan(old)
    assert removals(plan, old, without(old, "Srv2", remove_drain=0), now=0.0) == {}
    empty = old.model_copy(update={"virtual_services": []})
    assert removals(plan, old, empty, now=0.0) == {}


def test_drained_when_no_connection_is_left_or_the_cap_passes() -> None:
    old = config()
    leaving = removals(build_plan(old), old, without(old, "Srv1", "Srv2", remove_drain=60), 0.0)
    key1, key2 = ("DICOM", "Srv1"), ("DICOM", "Srv2")
    # A count of 0 read too soon after the removal may predate the Plan: not believed yet.
    assert drained(leaving, {key1: 0, key2: 3}, now=1.0, settle=2.5) == {}
    assert drained(leaving, {key2: 3}, now=3.0, settle=2.5) == {
        key1: "its connections ended after 3 s"  # no count at all: nothing open
    }
    assert drained(leaving, {key2: 3}, now=60.0, settle=2.5)[key2] == (
        "drain cap of 60 s passed: 3 connections cut"
    )


# --- how a change reads ----------------------------------------------------------------------


def test_every_field_change_reads_without_python_reprs() -> None:
    """Each PlanService and PlanRealServer field, changed alone, words the change as an
    operator reads it: no dataclass repr, no None/True/False."""
    from dataclasses import fields, replace

    from pacslb.config import SchedulerName
    from pacslb.core.plan import (
        PlanCertificate,
        PlanDicom,
        PlanEndpoint,
        PlanPassive,
        PlanPersistence,
        PlanRealServer,
        PlanService,
        PlanTimeouts,
        PlanTls,
    )

    rs = PlanRealServer("A", "127.0.1.1", 104, 100, 100)
    other_rs = {
        "address": "127.0.1.2",
        "port": None,
        "weight": 50,
        "effective_weight": 0,
        "admin": AdminState.HALT,
        "health": Health.DOWN,
        "min_connections": 2,
        "max_connections": 9,
        "reencrypt": True,
        "ae_title": "ARCHIVE_A",
    }
    timeouts = PlanTimeouts(5.0, 900.0, 30.0, 60.0)
    svc = PlanService(
        "PACS", "127.0.0.30", (104,), "tcp", Mode.L7_DICOM, SchedulerName.WLC,
        PlanPersistence("calling-ae", 3600), timeouts, (rs,),
        dicom=PlanDicom(routes=(("PACS1", ("A", "B")),)),
    )  # fmt: skip
    other_svc = {
        "vip": "127.0.0.31",
        "ports": (104, 11112),
        "protocol": "udp",
        "mode": Mode.L7_TCP,
        "scheduler": SchedulerName.RR,
        "persistence": PlanPersistence(),
        "timeouts": replace(timeouts, idle=1800.0),
        "fallback": PlanEndpoint("127.0.0.99", 4000),
        "tls": PlanTls((PlanCertificate("/etc/pacslb/pacs.pem", None),), (2762,)),
        "passive": PlanPassive(consecutive_failures=0),
        "max_connections": 500,
        "source": "vip",
        "dicom": None,
    }
    assert set(other_rs) == {f.name for f in fields(PlanRealServer)} - {"label"}
    assert set(other_svc) == {f.name for f in fields(PlanService)} - {"label", "real_servers"}

    def detail(old: Any, new: Any) -> str:
        (change,) = diff_plans(Plan(1, (old,)), Plan(2, (new,)))
        return change.detail

    said = {}
    for name, value in other_svc.items():
        said[name] = detail(svc, replace(svc, **{name: value}))
    for name, value in other_rs.items():
        said[name] = detail(svc, replace(svc, real_servers=(replace(rs, **{name: value}),)))
    for name, text in said.items():
        assert text.startswith(name + " "), text
        for python in ("Plan", "=", "None", "True", "False", "(", "'"):
            assert python not in text, text
    assert said["persistence"] == "persistence calling-ae 3600 s -> none"
    assert said["dicom"] == "dicom routes PACS1→A,B -> none"
    assert said["timeouts"] == "timeouts idle 900 s -> 1800 s"
    assert said["ports"] == "ports 104 -> 104,11112"
    assert said["fallback"] == "fallback none -> 127.0.0.99:4000"
    assert said["tls"] == "tls none -> /etc/pacslb/pacs.pem on ports 2762"
    assert said["passive"] == "passive consecutive_failures 5 -> 0"
    assert said["port"] == "port 104 -> none"
    assert said["reencrypt"] == "reencrypt off -> on"
    assert said["ae_title"] == "ae_title none -> ARCHIVE_A"
    assert said["admin"] == "admin online -> halt"


def test_a_nested_change_names_only_what_changed() -> None:
    from dataclasses import replace

    from pacslb.core.plan import PlanCertificate, PlanDicom, PlanPersistence, PlanTls

    plan = build_plan(config())
    (svc,) = plan.services
    dicom = PlanDicom(routes=(("PACS1", ("A", "B")),))
    before = replace(svc, persistence=PlanPersistence("calling-ae", 3600), dicom=dicom)
    after = replace(
        svc,
        persistence=PlanPersistence("calling-ae", 60),
        dicom=replace(dicom, routes=(("PACS1", ("A",)), ("PACS2", ())), drain_limit=60.0),
    )
    (change,) = diff_plans(Plan(1, (before,)), Plan(2, (after,)))
    assert change.detail == (
        "persistence timeout 3600 s -> 60 s, "
        "dicom routes PACS1→A,B -> PACS1→A PACS2→any, drain_limit 3600 s -> 60 s"
    )

    tls = PlanTls((PlanCertificate("/etc/a.pem", "/etc/a.key"),), (443,))
    more = replace(tls, certificates=(*tls.certificates, PlanCertificate("/etc/b.pem", None)))
    (change,) = diff_plans(Plan(1, (replace(svc, tls=tls),)), Plan(2, (replace(svc, tls=more),)))
    assert change.detail == "tls certificates /etc/a.pem -> /etc/a.pem,/etc/b.pem"
