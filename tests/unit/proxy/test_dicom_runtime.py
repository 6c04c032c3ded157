"""The l7-dicom parts of a service's runtime: picks limited to a route's servers, calling-ae
persistence keyed by the title, bounded calling-AE counter rows, and when a drain began."""

from __future__ import annotations

from typing import Any

from pacslb.core.plan import build_plan
from pacslb.core.state import AdminState
from pacslb.core.validate import load_data
from pacslb.proxy.runtime import CALLING_AE_ROW, MAX_CALLING_AES, ServiceRuntime


def runtime(admin: dict[str, str] | None = None, **settings: Any) -> ServiceRuntime:
    config = load_data(
        {
            "virtual_services": [
                {
                    "label": "PACS",
                    "vip": "127.10.4.40",
                    "ports": [104],
                    "mode": "l7-dicom",
                    "scheduler": "rr",
                    "health_check": {"type": "none"},
                    "real_servers": [
                        {"label": name, "address": f"127.10.4.{41 + i}"}
                        for i, name in enumerate(("A", "B", "C"))
                    ],
                    **settings,
                }
            ]
        }
    )
    states = {("PACS", k): AdminState(v) for k, v in (admin or {}).items()}
    return ServiceRuntime(build_plan(config, admin=states).services[0])


def test_a_route_limits_the_pick_and_excluded_servers_stay_out() -> None:
    rt = runtime()
    picks = {rt.pick("10.0.0.1", allowed=("B", "C")).label for _ in range(6)}  # type: ignore[union-attr]
    assert picks == {"B", "C"}
    assert rt.pick("10.0.0.1", ["B"], allowed=("B", "C")).label == "C"  # type: ignore[union-attr]
    assert rt.pick("10.0.0.1", ["B", "C"], allowed=("B", "C")) is None


def test_calling_ae_persistence_keys_the_pick_by_title() -> None:
    rt = runtime(persistence={"type": "calling-ae", "timeout": 60})
    first = rt.pick("CT_1", now=0)
    assert first is not None
    for t in range(1, 6):  # rr would move on: the title keeps its server
        rs = rt.pick("CT_1", now=t)
        assert rs is not None and rs.label == first.label
    for t in range(6):
        rt.release("CT_1", first.label, now=10 + t)
    assert rt.balancer.sticky is not None
    assert [e.key for e in rt.balancer.sticky.entries(now=20)] == ["CT_1"]


def test_a_drained_server_gets_no_new_association_even_from_a_sticky_title() -> None:
    """Issue 19: drain = no new associations, for every l7-dicom listener (plain and TLS
    pick here); the title's entry moves to the server chosen instead."""
    sticky = {"type": "calling-ae", "timeout": 600}
    rt = runtime(persistence=sticky)
    first = rt.pick("CT_1", now=0)
    assert first is not None
    rt.release("CT_1", first.label, now=1)
    drained = runtime({first.label: "drain"}, persistence=sticky).service
    rt.update(drained)
    moved = rt.pick("CT_1", now=2)
    assert moved is not None and moved.label != first.label
    assert rt.pick("CT_1", now=3).label == moved.label  # type: ignore[union-attr]


def test_calling_ae_rows_are_bounded() -> None:
    rt = runtime()
    for i in range(MAX_CALLING_AES + 50):
        rt.calling_ae_stats(f"MOD_{i}").associations += 1
    rows = [k for k in rt.stats if k.startswith(CALLING_AE_ROW)]
    assert len(rows) == MAX_CALLING_AES + 1
    assert rt.stats[CALLING_AE_ROW + "*"].associations == 50
    assert rt.calling_ae_stats("MOD_3") is rt.stats["ae:MOD_3"]  # known titles keep their row


def test_drained_since_is_kept_across_updates_and_dropped_when_online() -> None:
    rt = runtime(admin={"B": "drain"})
    since = rt.drained_since["B"]
    assert set(rt.drained_since) == {"B"}
    rt.update(runtime(admin={"B": "drain", "C": "drain"}).service)
    assert rt.drained_since["B"] == since and "C" in rt.drained_since
    rt.update(runtime().service)
    assert rt.drained_since == {}


def test_dicom_counters_appear_once_there_is_an_association() -> None:
    rt = runtime()
    stats = rt.opened("A")
    assert "associations" not in stats.as_dict()
    stats.associations += 1
    stats.assoc_seconds += 0.5
    assert stats.as_dict()["associations"] == 1 and stats.as_dict()["assoc_seconds"] == 0.5
