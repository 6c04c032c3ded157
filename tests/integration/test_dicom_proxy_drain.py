"""l7-dicom drain and halt, association-aware, against dcmtk storescu/storescp.

Drain: a 500-image C-STORE in flight on a server that is drained finishes, every image
byte-identical at the archive, while new associations go to the other server. The drain cap
(dicom.drain_limit) and halt end an association with A-ABORT at a PDU boundary, which storescu
reports as an abort (not a reset).
"""

from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.dicom_proxy_support import (
    DCMTK_ENV,
    PEER,
    STORESCU,
    DicomVip,
    ProxyLoop,
    associate_rq,
    echo,
    read_pdu,
    storescp,
    write_ct_series,
)
from tests.peers.procs import stop, wait_until

from pacslb.core.plan import build_plan
from pacslb.core.validate import load_data
from pacslb.proxy import notices

pytestmark = pytest.mark.timeout(180)

VIP = "127.10.20.12"


@pytest.fixture(scope="module")
def proxy_loop() -> Iterator[ProxyLoop]:
    loop = ProxyLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """500 CT images, 256×256 (128 KiB each: 64 MB in all)."""
    return write_ct_series(tmp_path_factory.mktemp("study"), count=500, size=256)


def dataset(data: bytes) -> bytes:
    """A Part-10 file's data set: what follows the preamble, DICM and the meta group
    (PS3.10 §7.1: the meta group starts with its group length, Explicit VR LE)."""
    assert data[128:132] == b"DICM"
    group, element, vr, _, length = struct.unpack_from("<HH2sHI", data, 132)
    assert (group, element, vr) == (2, 0, b"UL")
    return data[132 + 12 + length :]


def digests(paths: list[Path]) -> set[str]:
    return {hashlib.sha256(dataset(p.read_bytes())).hexdigest() for p in paths}


def start_store(vip: DicomVip, study: list[Path], calling: str = "CT_1") -> subprocess.Popen[str]:
    argv = [STORESCU, "-aet", calling, "-aec", "ARCHIVE", VIP, str(vip.port)]
    argv += [str(p) for p in study]
    return subprocess.Popen(
        argv, env=DCMTK_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def placed_on(vip: DicomVip) -> str:
    """The server the (one) running association is on, once it is relaying P-DATA."""
    found: list[str] = []

    def relaying() -> bool:
        for label in ("X", "Y"):
            stats = vip.stats(label)
            if stats.get("assoc_active") and stats.get("pdata_pdus", 0) > 20:
                found.append(label)
                return True
        return False

    wait_until(relaying, 20, "the C-STORE to start")
    return found[0]


def test_drain_lets_a_500_image_store_finish_while_new_ones_go_elsewhere(
    proxy_loop: ProxyLoop, tmp_path: Path, study: list[Path]
) -> None:
    with storescp(tmp_path / "x") as port_x, storescp(tmp_path / "y") as port_y:
        servers = [
            {"label": "X", "address": PEER, "port": port_x},
            {"label": "Y", "address": PEER, "port": port_y},
        ]
        with DicomVip(proxy_loop, VIP, servers).serving() as vip:
            proc = start_store(vip, study)
            try:
                busy = placed_on(vip)
                other = "Y" if busy == "X" else "X"
                vip.set_admin(**{busy: "drain"})
                for _ in range(5):  # new associations meanwhile: all on the other server
                    done = echo(VIP, vip.port, "ARCHIVE", "WS_2")
                    assert done.returncode == 0, done.stdout + done.stderr
                assert vip.stats(other)["associations"] == 5
                assert vip.stats(busy)["assoc_active"] == 1, "the store was still running"
                out, _ = proc.communicate(timeout=120)
            finally:
                stop(proc)  # type: ignore[arg-type]
            assert proc.returncode == 0, out
            received = sorted((tmp_path / busy.lower()).iterdir())
            assert len(received) == 500
            assert digests(received) == digests(study)  # byte-identical data sets
            vip.wait_idle()
            stats = vip.stats(busy)
            assert stats["associations"] == 1 and stats["assoc_aborted"] == 0
            assert stats["pdata_pdus"] >= 500 * 2  # a command and at least one data PDU each


def storescu_reports_abort(out: str) -> bool:
    # dcmtk: "Peer aborted Association (or never connected)" (DUL_PEERABORTEDASSOCIATION)
    return "Peer aborted Association" in out or "Association Aborted" in out


@pytest.mark.parametrize("how", ["halt", "drain-limit", "halt-without-splice"])
def test_halt_and_drain_cap_end_an_association_with_a_abort(
    proxy_loop: ProxyLoop, tmp_path: Path, study: list[Path], how: str
) -> None:
    with storescp(tmp_path / "x") as port_x:
        servers = [{"label": "X", "address": PEER, "port": port_x}]
        settings: dict[str, Any] = {"dicom": {"drain_limit": 0.2}} if how == "drain-limit" else {}
        splice = how != "halt-without-splice"  # the recv/send relay (platforms without splice)
        with DicomVip(proxy_loop, VIP, servers, splice=splice, **settings).serving() as vip:
            # The study four times over (2,000 C-STOREs): still running when the cap, checked
            # each second, is reached.
            vip.loop.call(notices._last.clear)  # (the same key in the other case)
            proc = start_store(vip, study * 4)
            try:
                placed_on(vip)
                vip.set_admin(X="drain" if how == "drain-limit" else "halt")
                out, _ = proc.communicate(timeout=60)
            finally:
                stop(proc)  # type: ignore[arg-type]
            assert proc.returncode != 0
            assert storescu_reports_abort(out), out
            assert "Connection reset" not in out, out
            vip.wait_idle()
            stats = vip.stats("X")
            assert stats["assoc_aborted"] == 1 and stats["assoc_active"] == 0
            events = [str(n["message"]) for n in vip.loop.call(notices.take)]
            # The event says which cut it was, not a list of what it might have been.
            why = {"drain-limit": "drain limit of 0.2 s reached"}.get(
                how, "the real server was halted"
            )
            assert f"association ended with A-ABORT: {why}" in events, events
            # The archive kept whole images only: storescp wrote what it got complete.
            received = sorted((tmp_path / "x").iterdir())
            assert received
            assert digests(received) <= digests(study)


@pytest.mark.parametrize("how", ["removed", "idle"])
def test_the_a_abort_event_says_why_the_association_was_cut(
    proxy_loop: ProxyLoop, tmp_path: Path, how: str
) -> None:
    """A removed server and an idle association are each named as such in the event."""
    with storescp(tmp_path / "x") as port_x:
        servers = [{"label": "X", "address": PEER, "port": port_x}]
        idle = {"timeouts": {"idle": 1}} if how == "idle" else {}
        with DicomVip(proxy_loop, VIP, servers, **idle).serving() as vip:
            vip.loop.call(notices._last.clear)
            with socket.create_connection((VIP, vip.port), timeout=5) as client:
                client.sendall(associate_rq(b"PACS1"))
                answer = read_pdu(client)
                assert answer is not None and answer[0] == 0x02, answer  # A-ASSOCIATE-AC
                if how == "removed":
                    others = [{"label": "Z", "address": PEER, "port": port_x}]
                    data = {**vip.data["virtual_services"][0], "real_servers": others}
                    plan = build_plan(load_data({"version": 1, "virtual_services": [data]}))
                    vip.loop.call(vip.runtime.update, plan.services[0])
                cut = read_pdu(client, timeout=10)
                assert cut is not None and cut[0] == 0x07, cut  # A-ABORT
            vip.wait_idle()
            events = [str(n["message"]) for n in vip.loop.call(notices.take)]
            why = "the real server was removed" if how == "removed" else "idle for 1 s"
            assert f"association ended with A-ABORT: {why}" in events, events


def test_a_drained_server_takes_no_new_association_from_a_sticky_modality(
    proxy_loop: ProxyLoop, tmp_path: Path
) -> None:
    """Issue 19 item 4: drain = no new associations. A modality whose calling-ae entry names
    the drained archive goes elsewhere (else its associations keep landing there, the drain
    never ends, and the drain cap aborts an association that began a moment before it)."""
    with storescp(tmp_path / "x") as port_x, storescp(tmp_path / "y") as port_y:
        servers = [
            {"label": "X", "address": PEER, "port": port_x},
            {"label": "Y", "address": PEER, "port": port_y},
        ]
        sticky = {"type": "calling-ae", "timeout": 600}
        with DicomVip(proxy_loop, VIP, servers, persistence=sticky).serving() as vip:
            done = echo(VIP, vip.port, "ARCHIVE", "CT_1")
            assert done.returncode == 0, done.stdout + done.stderr
            first = "X" if vip.stats("X").get("associations") else "Y"
            other = "Y" if first == "X" else "X"
            vip.set_admin(**{first: "drain"})
            for _ in range(3):
                done = echo(VIP, vip.port, "ARCHIVE", "CT_1")
                assert done.returncode == 0, done.stdout + done.stderr
            assert vip.stats(first)["associations"] == 1
            assert vip.stats(other)["associations"] == 3
            vip.set_admin(**{first: "online"})  # the modality now sticks to the other one
            done = echo(VIP, vip.port, "ARCHIVE", "CT_1")
            assert done.returncode == 0, done.stdout + done.stderr
            assert vip.stats(other)["associations"] == 4
