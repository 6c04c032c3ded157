"""dcmtk's storescu through the demo's l7-dicom VIP, as docs/dicom.md invites: synthetic CT
images are acknowledged by the demo's archives (core/dicom_scp.py, which count and drop them);
a drain during a store lets it finish while new associations go to the other archive; a halt
during a store ends it with A-ABORT, which storescu reports, and the event says "halted". Each
demo archive has its own AE title, routed to it.

The whole demo runs in 127.10.21.0/24 (`--net`): VIPs .30-.50, real servers .1-.10, the WebUI
on .200. It binds the guide's ports, so it needs root (CI is root)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.dicom_proxy_support import associate_rq, read_pdu, write_ct_series
from tests.peers.procs import running, stop, wait_until

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the demo binds the guide's ports 80/443/4000/5000: run as root"
    ),
    pytest.mark.timeout(180),
]
NET, WEB = "127.10.21", ("127.10.21.200", 26443)
VIP = f"{NET}.30"
SERVICE = "McK-Radiology_DICOM"
CLI = [sys.executable, "-m", "pacslb.cli"]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk waits for Nagle without it
ACK = "Received Store Response (Success)"


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*CLI, *args, "--state-dir", str(state)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def dicom_of(state: Path) -> dict[str, dict[str, Any]]:
    """The DICOM service's per-server association counters, as `pacslb status --json` has them
    (the workers' counters, read once a second)."""
    done = cli(state, "status", "--json")
    assert done.returncode == 0, done.stderr
    (svc,) = [s for s in json.loads(done.stdout)["services"] if s["label"] == SERVICE]
    return {rs["label"]: rs["dicom"] for rs in svc["real_servers"]}


def storescu(study: list[Path], *options: str) -> subprocess.Popen[str]:
    argv = ["/usr/bin/storescu", "-v", "-aet", "MODALITY1", "-aec", "ANY-SCP", *options]
    argv += [VIP, "4000", *map(str, study)]
    return subprocess.Popen(
        argv, env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def echo(calling: str, called: str) -> subprocess.CompletedProcess[str]:
    argv = ["/usr/bin/echoscu", "-aet", calling, "-aec", called, VIP, "4000"]
    return subprocess.run(
        argv, env=DCMTK_ENV, capture_output=True, text=True, timeout=30, check=False
    )


def first_ack(proc: subprocess.Popen[str]) -> str:
    """storescu's output up to its first acknowledged image (dcmtk logs each line at once)."""
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if ACK in line:
            return seen
    raise AssertionError(f"storescu ended before any image was acknowledged: {seen}")


def holder(state: Path) -> str:
    """The demo archive holding the one running association."""
    found: list[str] = []

    def held() -> bool:
        found[:] = [label for label, d in dicom_of(state).items() if d["assoc_active"] == 1]
        return len(found) == 1

    wait_until(held, 10, "the store's association in the counters", step=0.1)
    return found[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """20 CT images, 256×256 (128 KiB each), as bench/dicom_files.py writes them."""
    return write_ct_series(tmp_path_factory.mktemp("study"), count=20, size=256)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "demo"
    argv = [*CLI, "demo", "--state-dir", str(state), "--net", NET]
    argv += ["--webui-listen", f"{WEB[0]}:{WEB[1]}"]
    with running(argv, WEB[0], WEB[1], log=tmp_path / "demo.log"):
        wait_until(lambda: _up(state), 20, "the DICOM servers up", step=0.2)
        yield state


def _up(state: Path) -> bool:
    done = cli(state, "status", "--json")
    services = json.loads(done.stdout)["services"] if done.returncode == 0 else []
    healths = [rs["health"] for s in services if s["label"] == SERVICE for rs in s["real_servers"]]
    return healths == ["up", "up"]


def test_storescu_through_the_demo_then_drain_and_halt_as_the_docs_say(
    demo: Path, study: list[Path]
) -> None:
    # Every image acknowledged, then a release (no "No Acceptable Presentation Contexts").
    proc = storescu(study)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert out.count(ACK) == len(study), out

    # Peers that hang or lie, straight at an archive, do not hurt it: it answers the rest.
    rq = associate_rq(b"DICOM_SRV1", b"LIAR")
    with socket.create_connection((f"{NET}.1", 4000), timeout=5) as hung:
        hung.sendall(rq + b"\x04\x00" + (60000).to_bytes(4, "big") + b"\0" * 100)  # then quiet
        with socket.create_connection((f"{NET}.1", 4000), timeout=5) as liar:
            liar.sendall(rq)
            assert (read_pdu(liar) or (0,))[0] == 0x02  # A-ASSOCIATE-AC
            liar.sendall(b"\x04\x00\x00\x00\x00\x06" + (9999).to_bytes(4, "big") + b"\x01\x03")
            assert read_pdu(liar) == (0x07, bytes([0, 0, 2, 0]))  # A-ABORT, then closed
            assert read_pdu(liar) is None
        done = echo("MODALITY1", "DICOM_SRV1")
        assert done.returncode == 0, done.stdout + done.stderr

    # AE routing: each archive has its own title, and a modality calling it gets that one.
    # The counters are the workers', read once a second: start from a reading that has
    # caught up with the associations above (two equal readings over a sample), or the echo
    # just before would be counted as one of these.
    readings = [dicom_of(demo)]

    def settled() -> bool:
        time.sleep(1.2)
        readings.append(dicom_of(demo))
        return readings[-1] == readings[-2]

    wait_until(settled, 20, "the DICOM counters to settle", step=0)
    before = readings[-1]
    for called in ("DICOM_SRV2", "DICOM_SRV2", "DICOM_SRV1"):
        done = echo("ROUTED", called)
        assert done.returncode == 0, done.stdout + done.stderr

    def routed() -> bool:
        now = dicom_of(demo)
        opened = {
            label: now[label]["associations"] - before[label]["associations"] for label in now
        }
        return opened == {"Radiology_DICOM_Srv1": 1, "Radiology_DICOM_Srv2": 2}

    wait_until(routed, 20, "each echo on the archive it called", step=0.1)  # counters: sampled

    # Drain during a store: the association it holds runs on until storescu releases it.
    proc = storescu(study, "--repeat", "3")
    try:
        seen = first_ack(proc)
        proc.send_signal(signal.SIGSTOP)  # hold the association mid-store, for as long as needed
        busy = holder(demo)
        other = next(label for label in dicom_of(demo) if label != busy)
        opened = dicom_of(demo)[other]["associations"]
        assert cli(demo, "drain", SERVICE, busy).returncode == 0
        done = echo("MODALITY1", "ANY-SCP")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(
            lambda: dicom_of(demo)[other]["associations"] > opened, 5, "the echo elsewhere", 0.1
        )
        status = cli(demo, "status").stdout
        (line,) = [line for line in status.splitlines() if line.strip().startswith(busy)]
        assert "drain" in line and "holds 1 assoc" in line, status
        proc.send_signal(signal.SIGCONT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.send_signal(signal.SIGCONT)
        stop(proc)  # type: ignore[arg-type]
    assert proc.returncode == 0, seen + rest
    assert (seen + rest).count(ACK) == 3 * len(study)
    assert dicom_of(demo)[busy]["assoc_aborted"] == 0
    assert cli(demo, "online", SERVICE, busy).returncode == 0

    # Halt during a store: A-ABORT to both sides; storescu reports an abort, not a reset.
    proc = storescu(study, "--repeat", "100000")
    try:
        first_ack(proc)
        busy = holder(demo)
        assert cli(demo, "halt", SERVICE, busy).returncode == 0
        out, _ = proc.communicate(timeout=30)
    finally:
        stop(proc)  # type: ignore[arg-type]
    assert proc.returncode != 0
    assert "Peer aborted Association" in out or "Association Aborted" in out, out[-2000:]
    said = "association ended with A-ABORT: the real server was halted"
    # The workers' notices reach the event log within a second or two.
    wait_until(lambda: said in cli(demo, "events").stdout, 10, "the abort event", step=0.2)
