"""The conntrackd supervisor's handling of its child: what the daemon prints goes to a file in
the state dir (not a pipe held in memory for its whole life), the event names its last line,
and a closed supervisor (a reload replaces it) stops listening to role changes.

A shell script stands in for conntrackd here (a real process that prints and exits); the real
daemon runs in tests/netns/test_ha_sync.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pacslb import config as c
from pacslb.control.conntrackd import ConntrackdSupervisor
from pacslb.core.ha_role import HaState, Role

NAT = {
    "label": "Nat",
    "vip": "198.18.1.100",
    "ports": [4000],
    "mode": "l4-nat",
    "real_servers": [{"label": "a", "address": "198.18.2.11"}],
}


def config() -> c.Config:
    ha = {
        "enabled": True,
        "address": "127.10.12.7",
        "interface": "lo",
        "peers": ["127.10.12.8"],
        "secret": "s" * 20,
        "sync_port": 32450,
    }
    return c.Config.model_validate({"version": 1, "node": {"ha": ha}, "virtual_services": [NAT]})


def test_the_daemons_output_goes_to_a_file_and_a_closed_supervisor_stops_listening(
    tmp_path: Path,
) -> None:
    daemon = tmp_path / "fake-conntrackd"
    daemon.write_text(
        "#!/bin/sh\n"
        "i=0; while [ $i -lt 2000 ]; do echo 'chatter line of a long-lived daemon' >&2;"
        " i=$((i+1)); done\n"
        "echo 'ERROR: cannot bind the sync socket' >&2\nsleep 0.2\nexit 1\n"
    )
    daemon.chmod(0o755)
    ha = HaState(Role.PASSIVE)
    notes: list[str] = []

    async def main() -> ConntrackdSupervisor:
        supervisor = ConntrackdSupervisor(config(), tmp_path, ha, notes.append)
        supervisor._binary = str(daemon)
        await supervisor.start()
        assert ha.listeners == 1
        for _ in range(100):  # bounded: 5 s
            if supervisor.restarts >= 1:
                break
            await asyncio.sleep(0.05)
        await supervisor.close()
        return supervisor

    supervisor = asyncio.run(main())
    assert supervisor.restarts >= 1
    exited = [n for n in notes if n.startswith("conntrackd exited")]
    assert exited and "ERROR: cannot bind the sync socket" in exited[0], notes
    output = supervisor.files.output.read_text()
    assert output.count("chatter line") >= 2000 and "cannot bind" in output
    assert ha.listeners == 0  # the role change of a later reload reaches no closed supervisor
