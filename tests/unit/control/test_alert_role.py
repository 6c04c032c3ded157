"""The control process tells its alert service each HA role (control/app.py wiring): in a pair
only the node holding the floating addresses speaks for the servers (core/alerts.py Intake)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pacslb.control.app import ControlProcess
from pacslb.control.store import read_config
from pacslb.core.ha_role import Role

CONFIG = """version: 1
node:
  webui: {enabled: false}
  ha: {enabled: %s, interface: eth0, peers: [198.18.0.2], secret: "a shared secret, 16+"}
"""


def test_the_alert_service_follows_the_nodes_role(tmp_path: Path) -> None:
    path = tmp_path / "pacslb.yaml"

    async def main() -> list[bool]:
        seen = []
        for enabled in ("false", "true"):  # standalone, then a pair's node starting
            path.write_text(CONFIG % enabled)
            text, config = read_config(path)
            process = ControlProcess(path, config, text, (), tmp_path / enabled)
            seen.append(process.alerts.intake.speaks_for_servers)
        for role in (Role.PASSIVE, Role.ACTIVE, Role.FAULT, Role.STANDALONE):
            process.ha.set(role)  # as the keepalived supervisor sets it
            seen.append(process.alerts.intake.speaks_for_servers)
        return seen

    assert asyncio.run(main()) == [True, False, False, True, False, True]
