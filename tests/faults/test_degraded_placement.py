"""A placement problem accepted with `pacslb run --degraded` stays in status until a config
applied later no longer has it (issue 15's review, item 2).

As in test_readiness.py, the l4-dr service cannot be placed because its real server is an
address of this host (127.10.18.31): doctor.placement names it (dr-route), and the kernel engine
refuses the Plan before any nftables transaction, so the host is not touched."""

from __future__ import annotations

from pathlib import Path

from tests.faults.test_readiness import CLI, cli, status, wait_started
from tests.peers.procs import free_port, http_peer, running, wait_port

HOST = "127.10.18.1"
DICOM = """  - label: Dicom
    vip: 127.10.18.30
    ports: [4000]
    mode: l4-dr
    health_check: {type: none}
    real_servers:
      - {label: DicomSrv1, address: 127.10.18.31}
"""
WEB = """  - label: Web
    vip: 127.10.18.40
    ports: [{vip_port}]
    mode: l7-tcp
    health_check: {{type: connect, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
      - {{label: WebSrv1, address: {host}, port: {peer}}}
"""


def write(path: Path, vip_port: int, peer: int, *, dicom: bool) -> None:
    web = WEB.format(vip_port=vip_port, host=HOST, peer=peer)
    path.write_text(
        "version: 1\nnode: {webui: {enabled: false}}\nvirtual_services:\n"
        + (DICOM if dicom else "")
        + web
    )


def test_placement_problems_stay_degraded_until_a_reload_finds_none(tmp_path: Path) -> None:
    config, state, log = tmp_path / "pacslb.yaml", tmp_path / "state", tmp_path / "run.log"
    vip_port, peer = free_port("127.10.18.40"), free_port(HOST)
    write(config, vip_port, peer, dicom=True)
    argv = [*CLI, "run", str(config), "--state-dir", str(state), "--degraded"]
    with http_peer(HOST, peer, "/ok=200:OK"), running(argv, log=log) as proc:
        now = wait_started(proc, state, log)
        (placement,) = now["degraded"]  # before: [] (only a start-up event said it)
        assert placement.startswith("cannot be placed on this host: Dicom/DicomSrv1 (127.10.18.31)")
        wait_port("127.10.18.40", vip_port, timeout=10)  # what can run runs
        assert "DEGRADED" in cli(state, "status", check=True).stdout

        # A reload of the same file checks again and finds the same problem: still listed.
        assert cli(state, "reload").returncode == 0
        assert status(state)["degraded"] == [placement]

        # The operator takes the service out: nothing left that cannot be placed.
        write(config, vip_port, peer, dicom=False)
        assert cli(state, "reload").returncode == 0
        now = status(state)
        assert now["degraded"] == [] and now["ready"] is True, now
        events = cli(state, "events", "--kind", "config", check=True).stdout
        assert "every service can be placed on this host again" in events, events
