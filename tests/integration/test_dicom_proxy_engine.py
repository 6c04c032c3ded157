"""`pacslb run` with an l7-dicom service: an association held open through the VIP lives
through a control-plane restart (`pacslb stop --keep-data-plane`, then `pacslb run` adopts the
worker), and the worker's DICOM counters come out of its control socket.

Peers: dcmtk storescp as the archive (checked by the dicom-echo health check), pynetdicom as
the modality holding the association (C-ECHOs on it before, during and after the restart).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from tests.integration.dicom_proxy_support import PEER, echo, storescp
from tests.integration.test_proxy_engine import _alive, answers, cli, server_status, wait
from tests.peers.procs import running

pytestmark = pytest.mark.timeout(120)

VIP = "127.10.20.13"


def worker(state: Path, cmd: str) -> Any:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(state / "proxy-0.sock"))
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        return json.loads(sock.makefile().readline())["result"]


def test_an_association_lives_through_a_control_plane_restart(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind((VIP, 0))
        vip_port = probe.getsockname()[1]
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    proxy_pid = None
    with ExitStack() as stack:
        archive = stack.enter_context(storescp(tmp_path / "rx", aet="ARCHIVE"))
        check = "{type: dicom-echo, called_ae: ARCHIVE, interval: 0.5, timeout: 0.4, rise: 1}"
        config.write_text(
            f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: 1}}}}
virtual_services:
  - label: Dicom
    vip: {VIP}
    ports: [{vip_port}]
    mode: l7-dicom
    persistence: {{type: calling-ae, timeout: 600}}
    health_check: {check}
    real_servers:
      - {{label: Arch, address: {PEER}, port: {archive}}}
"""
        )
        try:
            run = stack.enter_context(running(argv, VIP, vip_port, log=tmp_path / "run1.log"))
            wait(lambda: server_status(state, "Dicom", "Arch")["health"] == "up", 15, "health")
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(Verification)
            assoc = ae.associate(VIP, vip_port, ae_title="ARCHIVE")
            stack.callback(assoc.abort)
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            proxy_pid = worker(state, "ping")["pid"]

            assert "goes on forwarding" in cli(state, "stop", "--keep-data-plane").stdout
            assert run.wait(10) == 0
            assert assoc.send_c_echo().Status == 0  # nobody controls the worker: it relays

            with ExitStack() as again:
                again.enter_context(running(argv, log=tmp_path / "run2.log"))
                wait(lambda: answers(state), 15, "the new control process")
                assert worker(state, "ping")["pid"] == proxy_pid  # adopted, not restarted
                assert assoc.send_c_echo().Status == 0
                counters = worker(state, "counters")["Dicom"]
                assert counters["Arch"]["assoc_active"] == 1
                assoc.release()
                assert assoc.is_released
                wait(
                    lambda: worker(state, "counters")["Dicom"]["Arch"]["assoc_active"] == 0,
                    10,
                    "the association to end",
                )
                arch = worker(state, "counters")["Dicom"]["Arch"]
                assert arch["associations"] == 1 and arch["assoc_aborted"] == 0
                # three C-ECHO-RQs and their responses; A-ASSOCIATE/RELEASE are no P-DATA
                assert arch["pdata_pdus"] == 6
                assert worker(state, "counters")["Dicom"]["ae:MODALITY"]["associations"] == 1
                assert "stopped" in cli(state, "stop").stdout
            wait(lambda: not _alive(proxy_pid), 10, "the worker to stop with `pacslb stop`")
        finally:
            if proxy_pid is not None and _alive(proxy_pid):
                os.kill(proxy_pid, signal.SIGKILL)


def test_calling_ae_persistence_holds_across_two_workers(tmp_path: Path) -> None:
    """Two workers share the VIP port: every association of a modality still lands on one
    archive (the listener steers a calling-ae service's clients to one worker). Archives are
    pynetdicom SCPs that record the calling AE of each association they accept."""
    seen: dict[str, list[str]] = {"A": [], "B": []}
    scps = []
    for name in seen:
        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context(Verification)

        def accepted(event: Any, name: str = name) -> None:
            seen[name].append(event.assoc.requestor.ae_title.strip())

        scps.append(
            ae.start_server((PEER, 0), block=False, evt_handlers=[(evt.EVT_ACCEPTED, accepted)])
        )
    with socket.socket() as probe:
        probe.bind((VIP, 0))
        vip_port = probe.getsockname()[1]
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    servers = "\n".join(
        f"      - {{label: {name}, address: {PEER}, port: {scp.server_address[1]}}}"
        for name, scp in zip(seen, scps, strict=True)
    )
    config.write_text(
        f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: 2}}}}
virtual_services:
  - label: Dicom
    vip: {VIP}
    ports: [{vip_port}]
    mode: l7-dicom
    scheduler: rr
    persistence: {{type: calling-ae, timeout: 600}}
    health_check: {{type: none}}
    real_servers:
{servers}
"""
    )
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    try:
        with running(argv, VIP, vip_port, log=tmp_path / "run.log"):
            wait(lambda: answers(state), 15, "the control process")
            for _ in range(10):  # two in a row from each: round robin alone splits them
                for modality in ("CT_1", "CT_1", "MR_2", "MR_2"):
                    done = echo(VIP, vip_port, "ARCHIVE", modality)
                    assert done.returncode == 0, done.stdout + done.stderr
            cli(state, "stop")
    finally:
        for scp in scps:
            scp.shutdown()
    # Keyed by the title, not the one client address both modalities come from: round
    # robin placed them apart, and each stayed where it was first placed.
    assert all(seen.values()), seen
    for modality in ("CT_1", "MR_2"):
        where = {name for name, callers in seen.items() if modality in callers}
        assert len(where) == 1, (modality, seen)
        assert sum(callers.count(modality) for callers in seen.values()) == 20
