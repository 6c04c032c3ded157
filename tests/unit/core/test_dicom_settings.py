"""l7-dicom settings from config to Plan (routes, ae_title, calling-ae persistence), their
validation, the calling-AE persistence table, and the DICOM counters summed over workers."""

from __future__ import annotations

from typing import Any

import pytest

from pacslb.core.balancer import Balancer
from pacslb.core.persistence import TitleStickyTable
from pacslb.core.plan import PlanDicom, build_plan
from pacslb.core.schedule import Candidate, make_scheduler
from pacslb.core.state import AdminState
from pacslb.core.validate import load_data
from pacslb.core.workers import CounterSum
from pacslb.errors import ConfigError


def svc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "label": "PACS",
        "vip": "127.0.0.30",
        "ports": [104],
        "mode": "l7-dicom",
        "real_servers": [
            {"label": "Arch1", "address": "127.0.1.1", "ae_title": "ARCH1"},
            {"label": "Arch2", "address": "127.0.1.2"},
        ],
    }
    base.update(overrides)
    return base


def problems(service: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_data({"version": 1, "virtual_services": [service]})
    return {p.path: p.message for p in info.value.problems}


def test_plan_carries_what_the_worker_needs() -> None:
    dicom = {
        "routes": [{"called_ae": "PACS_A", "real_servers": ["Arch1"]}],
        "unknown_called_ae": "any",
        "request_timeout": 3,
        "max_request": 32768,
        "drain_limit": 600,
    }
    config = load_data({"virtual_services": [svc(dicom=dicom, persistence={"type": "calling-ae"})]})
    service = build_plan(config).services[0]
    assert service.dicom == PlanDicom((("PACS_A", ("Arch1",)),), "any", 3.0, 32768, 600.0)
    assert service.persistence.kind == "calling-ae" and service.persistence.timeout == 3600
    assert [rs.ae_title for rs in service.real_servers] == ["ARCH1", None]
    # Unset dicom: the defaults; other modes: none.
    plain = build_plan(load_data({"virtual_services": [svc()]})).services[0]
    assert plain.dicom == PlanDicom()
    tcp = svc(mode="l7-tcp", real_servers=[{"label": "S", "address": "127.0.1.1"}])
    assert build_plan(load_data({"virtual_services": [tcp]})).services[0].dicom is None


def test_routes_choose_servers_by_called_ae() -> None:
    routes = (("PACS_A", ("Arch1",)), ("PACS_B", ("Arch2", "Arch3")))
    reject = PlanDicom(routes)
    assert reject.servers_for("PACS_B") == ("Arch2", "Arch3")
    assert reject.servers_for("OTHER") is None  # refused: called-AE-not-recognised
    assert PlanDicom(routes, unknown_called_ae="any").servers_for("OTHER") == ()
    assert PlanDicom().servers_for("ANY") == ()  # no routes: any server


def test_a_routes_title_matches_without_its_padding() -> None:
    """PS3.5 §6.2: an AE title's leading and trailing spaces are not significant; the
    proxy reads the request's called AE without them, so a route's title is kept so too."""
    routes = [{"called_ae": " PACS_A  ", "real_servers": ["Arch1"]}]
    plan = build_plan(load_data({"virtual_services": [svc(dicom={"routes": routes})]}))
    dicom = plan.services[0].dicom
    assert dicom is not None and dicom.servers_for("PACS_A") == ("Arch1",)


def test_dicom_settings_only_with_l7_dicom() -> None:
    service = svc(
        mode="l7-tcp",
        persistence={"type": "calling-ae"},
        dicom={"drain_limit": 10},
    )
    found = problems(service)
    assert found["virtual_services[0].persistence.type"] == (
        "calling-ae needs mode l7-dicom (the proxy reads the AE title), not l7-tcp"
    )
    assert found["virtual_services[0].dicom"] == "DICOM settings need mode l7-dicom, not l7-tcp"
    assert found["virtual_services[0].real_servers[0].ae_title"] == (
        "an AE title rewrite needs mode l7-dicom, not l7-tcp"
    )


def test_no_fallback_server_for_dicom() -> None:
    found = problems(svc(fallback={"address": "127.0.1.9"}))
    assert "l7-dicom has no fallback server" in found["virtual_services[0].fallback"]


def test_route_labels_must_name_the_services_servers() -> None:
    routes = [
        {"called_ae": "PACS_A", "real_servers": ["Arch1", "Acrh1"]},
        {"called_ae": "PACS_A", "real_servers": ["Arch2"]},
    ]
    found = problems(svc(dicom={"routes": routes}))
    assert found["virtual_services[0].dicom.routes[0].real_servers[1]"] == (
        "no real server 'Acrh1' in this service; did you mean 'Arch1'?"
    )
    assert found["virtual_services[0].dicom.routes[1].called_ae"] == (
        "'PACS_A' is already routed by routes[0]"
    )


def test_calling_ae_persistence_keys_by_title_with_template_timeout() -> None:
    a, b = Candidate("A", 100), Candidate("B", 100)
    table = TitleStickyTable(60)
    balancer = Balancer(make_scheduler("rr"), table)
    assert balancer.pick([a, b], "CT_1", now=0) == "A"
    assert balancer.pick([a, b], "MR_2", now=0) == "B"
    for _ in range(5):  # rr would alternate: each modality keeps its archive
        assert balancer.pick([a, b], "CT_1", now=1) == "A"
    assert {(e.key, e.server, e.connections) for e in table.entries()} == {
        ("CT_1", "A", 6),
        ("MR_2", "B", 1),
    }
    for _ in range(6):
        balancer.closed("CT_1", now=10, server_key="A")
    # IPVS template: alive `timeout` s after the last association closed, then gone.
    assert table.lookup("CT_1", now=69.9) == "A"
    assert table.lookup("CT_1", now=70) is None
    # A drained archive keeps its modality; a halted one loses it.
    assert balancer.pick([a, b], "MR_2", now=1) == "B"
    drained = [a, Candidate("B", 0, admin=AdminState.DRAIN)]
    assert balancer.pick(drained, "MR_2", now=2) == "B"
    halted = [a, Candidate("B", 100, admin=AdminState.HALT)]
    assert balancer.pick(halted, "MR_2", now=3) == "A"


def test_calling_ae_with_source_hash_hashes_the_title() -> None:
    servers = [Candidate(k, 100) for k in "ABCD"]
    first = Balancer(make_scheduler("sh"), TitleStickyTable(60)).pick(servers, "CT_1", 0)
    again = Balancer(make_scheduler("sh"), TitleStickyTable(60)).pick(servers, "CT_1", 0)
    assert first == again is not None


def test_dicom_counters_sum_over_workers_and_survive_a_replacement() -> None:
    row = {
        "associations": 3,
        "assoc_active": 1,
        "assoc_rejected": 1,
        "assoc_aborted": 1,
        "pdata_pdus": 40,
        "assoc_seconds": 1.25,
    }
    summed = CounterSum()
    worker = {"PACS": {"Arch1": row, "ae:CT_1": row}}
    summed.retire(worker)  # replaced: totals kept, active not
    total = summed.sum([worker])[("PACS", "Arch1")].values
    assert total["associations"] == 6 and total["pdata_pdus"] == 80
    assert total["assoc_active"] == 1
    assert total["assoc_seconds"] == pytest.approx(2.5)
    assert summed.sum([worker])[("PACS", "ae:CT_1")].values["assoc_rejected"] == 2
