"""The l7-dicom figures as status, `pacslb status` and /metrics lay them out (pure: counters in,
JSON, text and Prometheus exposition out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from pacslb.control.metrics import _dicom
from pacslb.control.status import dicom_server_text, dicom_summary, dicom_text
from pacslb.engines.base import Counters
from pacslb.proxy.runtime import NO_SERVER


def service() -> dict[str, Any]:
    counters = {
        ("Archive", "Node1"): Counters(
            active=1, associations=5, assoc_active=1, pdata_pdus=400, assoc_seconds=8.0,
            bytes_in=3_000_000, bytes_out=20_000,
        ),
        ("Archive", "Node2"): Counters(associations=2, assoc_aborted=1, assoc_seconds=1.0),
        ("Archive", NO_SERVER): Counters(assoc_rejected=3, assoc_aborted=1),
        ("Archive", "ae:CT1"): Counters(associations=4, assoc_active=1, assoc_rejected=2),
        ("Archive", "ae:MR1"): Counters(associations=3, assoc_seconds=3.0),
        ("Other", "ae:CT1"): Counters(associations=9),  # another service's row
    }  # fmt: skip
    servers: list[dict[str, Any]] = [{"label": "Node1"}, {"label": "Node2"}]
    svc: dict[str, Any] = {"label": "Archive", "real_servers": servers}
    svc["dicom"] = dicom_summary("Archive", servers, counters)
    return svc


def test_summary_per_server_calling_ae_and_refusals() -> None:
    svc = service()
    dicom = svc["dicom"]
    total = dicom["total"]
    assert (total["associations"], total["assoc_active"]) == (7, 1)
    # the proxy's own refusals count in the service's totals, and apart
    assert (total["assoc_rejected"], total["assoc_aborted"]) == (3, 2)
    assert dicom["no_server"] == {"rejected": 3, "aborted": 1}
    assert total["mean_seconds"] == 1.5  # 9 s over the 6 associations that ended
    assert [ae["calling_ae"] for ae in dicom["calling_aes"]] == ["CT1", "MR1"]
    assert dicom["calling_aes"][0]["mean_seconds"] == 0.0
    node1, node2 = svc["real_servers"]
    assert node1["dicom"]["mean_seconds"] == 2.0 and node2["dicom"]["assoc_aborted"] == 1
    fresh = dicom_summary("New", [{"label": "A"}], {})
    assert fresh["total"]["mean_seconds"] is None and fresh["calling_aes"] == []


def test_status_text_lines() -> None:
    svc = service()
    lines = dicom_text(svc)
    assert lines[0] == (
        "  associations: 7 opened, 1 active, 3 rejected (3 before any server), 2 aborted; "
        "400 P-DATA PDUs, 3.0 MB, mean 1.5 s"
    )
    assert (
        lines[1].startswith("    calling AE CT1 ") and "4 opened, 1 active, 2 rejected" in lines[1]
    )
    node1, node2 = svc["real_servers"]
    assert dicom_server_text(node1) == " holds 1 assoc (5 opened, 0 aborted)"
    assert dicom_server_text(node2) == " no assoc (2 opened, 1 aborted)"
    assert dicom_text({"label": "Web"}) == [] and dicom_server_text({"label": "W1"}) == ""


class Families(Collector):
    def __init__(self, services: list[dict[str, Any]]) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        return _dicom(self.services)


def test_metrics_families() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families([service(), {"label": "Web", "real_servers": []}]))
    text = generate_latest(registry).decode()
    assert 'pacslb_dicom_associations_total{server="Node1",service="Archive"} 5.0' in text
    assert 'pacslb_dicom_associations_active{server="Node1",service="Archive"} 1.0' in text
    assert 'pacslb_dicom_association_seconds_total{server="Node2",service="Archive"} 1.0' in text
    rejected = "pacslb_dicom_calling_ae_associations_rejected_total"
    assert rejected + '{calling_ae="CT1",service="Archive"} 2.0' in text
    assert 'pacslb_dicom_refused_total{answer="aborted",service="Archive"} 1.0' in text
    assert 'service="Web"' not in text  # not an l7-dicom service: no DICOM families
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families([{"label": "Web", "real_servers": []}]))
    assert "pacslb_dicom" not in generate_latest(registry).decode()
