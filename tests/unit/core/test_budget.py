"""Connection budgets: a fair share of a worker's descriptors per l7 service."""

from __future__ import annotations

from pacslb.config import Mode
from pacslb.core.budget import (
    PLAIN_COST,
    SPLICE_COST,
    ServiceNeed,
    connection_budgets,
    limit_advice,
    reserve,
)

TCP = ServiceNeed("Dicom", Mode.L7_TCP, listeners=2)
HTTP = ServiceNeed("Web", Mode.L7_HTTP, listeners=1)


def test_the_default_share_splits_what_the_reserve_leaves_by_service_and_cost() -> None:
    budgets = connection_budgets(20000, [TCP, HTTP], splice=True)
    room = 20000 - reserve([TCP, HTTP])
    assert reserve([TCP, HTTP]) == 64 + 2 * 3
    assert budgets == {"Dicom": room // 2 // SPLICE_COST, "Web": room // 2 // PLAIN_COST}
    # without splice an l7-tcp connection holds two descriptors, as l7-http does
    assert connection_budgets(20000, [TCP, HTTP], splice=False)["Dicom"] == room // 2 // 2


def test_the_budgets_never_need_more_descriptors_than_the_limit() -> None:
    for limit in (256, 1024, 4096, 20000, 524288):
        needs = [TCP, HTTP, ServiceNeed("Viewer", Mode.L7_HTTP, 4)]
        budgets = connection_budgets(limit, needs, splice=True)
        used = budgets["Dicom"] * SPLICE_COST + (budgets["Web"] + budgets["Viewer"]) * PLAIN_COST
        assert used + reserve(needs) <= limit


def test_an_explicit_budget_is_taken_first_and_the_others_share_the_rest() -> None:
    web = ServiceNeed("Web", Mode.L7_HTTP, 1, max_connections=1000)
    budgets = connection_budgets(20000, [TCP, web], splice=True)
    assert budgets["Web"] == 1000
    assert budgets["Dicom"] == (20000 - reserve([TCP, web]) - 1000 * PLAIN_COST) // SPLICE_COST


def test_a_service_always_gets_at_least_one_connection() -> None:
    assert connection_budgets(16, [TCP, HTTP], splice=True) == {"Dicom": 1, "Web": 1}


def test_a_low_limit_is_explained_with_what_to_set() -> None:
    advice = limit_advice(256, [TCP, HTTP], splice=True)
    assert advice is not None
    assert "256" in advice and "LimitNOFILE=65536" in advice
    assert "Dicom 15" in advice  # (256 - 70) // 2 // 6
    assert limit_advice(524288, [TCP, HTTP], splice=True) is None
    assert limit_advice(256, [], splice=True) is None
