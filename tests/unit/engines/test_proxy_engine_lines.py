"""The apply request the control process sends each proxy worker: the Plan encoded once, on
one line, read back by the worker as the Plan itself (issue 14 review, Plan push cost)."""

from __future__ import annotations

import json

from tests.unit.core.test_plan import config

from pacslb.core.plan import build_plan, plan_from_dict
from pacslb.engines.proxy import _apply_line


def test_the_apply_line_is_one_line_the_worker_reads_as_the_plan() -> None:
    plan = build_plan(config(), revision=7)
    line = _apply_line(plan, 3)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    request = json.loads(line)
    assert request["cmd"] == "apply"
    assert request["workers"] == 3  # the modulus of the client steering
    assert plan_from_dict(request["plan"]) == plan
