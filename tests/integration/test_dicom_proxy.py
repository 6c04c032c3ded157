"""l7-dicom against real peers: routing by called AE, the called AE rewrite, calling-AE
persistence, and the DICOM answers for an unknown called AE and for no server.

Archives are dcmqrscp processes that answer only their own AE title (any other called AE is
refused with called-AE-not-recognised), so an association that reached the wrong archive, or
one whose called AE was not rewritten, fails visibly. Clients are dcmtk storescu/echoscu.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.dicom_proxy_support import (
    DCMTK_ENV,
    PEER,
    DicomVip,
    ProxyLoop,
    associate_rq,
    dcmqrscp,
    echo,
    files_in,
    free_port,
    read_pdu,
    storescp,
    storescu,
    write_ct_series,
)
from tests.peers.procs import running

from pacslb.proxy.runtime import NO_SERVER

pytestmark = pytest.mark.timeout(120)

VIP = "127.10.20.10"


@pytest.fixture(scope="module")
def proxy_loop() -> Iterator[ProxyLoop]:
    loop = ProxyLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct"), count=6, size=128)


@contextlib.contextmanager
def two_archives(tmp: Path) -> Iterator[tuple[int, int]]:
    with dcmqrscp(tmp / "a", "ARCH_A") as port_a, dcmqrscp(tmp / "b", "ARCH_B") as port_b:
        yield port_a, port_b


def test_routing_by_called_ae_reaches_two_archives(
    proxy_loop: ProxyLoop, tmp_path: Path, images: list[Path]
) -> None:
    with two_archives(tmp_path) as (port_a, port_b):
        servers = [
            {"label": "A", "address": PEER, "port": port_a},
            {"label": "B", "address": PEER, "port": port_b},
        ]
        routes = [
            {"called_ae": "ARCH_A", "real_servers": ["A"]},
            {"called_ae": "ARCH_B", "real_servers": ["B"]},
        ]
        with DicomVip(proxy_loop, VIP, servers, dicom={"routes": routes}).serving() as vip:
            for _ in range(3):  # each time: the one archive that answers the title
                for called in ("ARCH_A", "ARCH_B"):
                    done = storescu(VIP, vip.port, called, "CT_1", images[0])
                    assert done.returncode == 0, done.stderr
            assert len(files_in(tmp_path / "a" / "db")) == 1  # the same image, stored once
            assert len(files_in(tmp_path / "b" / "db")) == 1
            vip.wait_idle()
            a, b = vip.stats("A"), vip.stats("B")
            assert (a["associations"], b["associations"]) == (3, 3)
            assert a["assoc_rejected"] == b["assoc_rejected"] == 0
            assert a["pdata_pdus"] > 3 * 2 and a["assoc_active"] == 0
            assert a["assoc_seconds"] > 0
            ae = vip.stats("ae:CT_1")
            assert ae["associations"] == 6 and ae["bytes_in"] > 6 * 128 * 128 * 2


def test_unknown_called_ae_is_rejected_and_reaches_no_archive(
    proxy_loop: ProxyLoop, tmp_path: Path
) -> None:
    with two_archives(tmp_path) as (port_a, port_b):
        servers = [
            {"label": "A", "address": PEER, "port": port_a},
            {"label": "B", "address": PEER, "port": port_b},
        ]
        routes = [{"called_ae": "ARCH_A", "real_servers": ["A"]}]
        with DicomVip(proxy_loop, VIP, servers, dicom={"routes": routes}).serving() as vip:
            done = echo(VIP, vip.port, "NO_SUCH_AE", "CT_1")
            assert done.returncode != 0
            text = done.stdout + done.stderr
            assert "Called AE Title Not Recognized" in text, text
            with socket.create_connection((VIP, vip.port), timeout=5) as sock:
                sock.sendall(associate_rq(b"NO_SUCH_AE"))
                # PS3.8 Table 9-21: permanent (1), service-user (1), called-AE-not-recognised (7)
                assert read_pdu(sock) == (0x03, b"\0\x01\x01\x07")
            vip.wait_idle()
            assert vip.stats(NO_SERVER)["assoc_rejected"] == 2
            assert vip.stats("A") == {} or vip.stats("A")["total"] == 0
            assert vip.stats("B") == {} or vip.stats("B")["total"] == 0


def test_unknown_called_ae_any_balances_over_all(proxy_loop: ProxyLoop, tmp_path: Path) -> None:
    with storescp(tmp_path / "rx") as port:
        servers = [{"label": "S", "address": PEER, "port": port}]
        settings = {"routes": [{"called_ae": "OTHER", "real_servers": ["S"]}]}
        settings["unknown_called_ae"] = "any"
        with DicomVip(proxy_loop, VIP, servers, dicom=settings).serving() as vip:
            done = echo(VIP, vip.port, "WHATEVER", "CT_1")
            assert done.returncode == 0, done.stderr


def test_no_server_gets_a_transient_reject(proxy_loop: ProxyLoop, tmp_path: Path) -> None:
    with storescp(tmp_path / "rx") as port:
        servers = [{"label": "S", "address": PEER, "port": port}]
        with DicomVip(proxy_loop, VIP, servers).serving() as vip:
            assert echo(VIP, vip.port, "ANY", "CT_1").returncode == 0
            vip.set_admin(S="drain")
            with socket.create_connection((VIP, vip.port), timeout=5) as sock:
                sock.sendall(associate_rq())
                # transient (2), presentation service-provider (3), temporary-congestion (1)
                assert read_pdu(sock) == (0x03, b"\0\x02\x03\x01")
            done = echo(VIP, vip.port, "ANY", "CT_1")
            assert done.returncode != 0
            assert "Transient" in done.stdout + done.stderr, done.stdout + done.stderr
            vip.wait_idle()
            assert vip.stats(NO_SERVER)["assoc_rejected"] == 2


def test_ae_title_rewrite_reaches_an_archive_checking_its_title(
    proxy_loop: ProxyLoop, tmp_path: Path, images: list[Path]
) -> None:
    with dcmqrscp(tmp_path / "n", "NODE_02") as port:
        servers = [{"label": "N", "address": PEER, "port": port, "ae_title": "NODE_02"}]
        with DicomVip(proxy_loop, VIP, servers).serving() as vip:
            done = storescu(VIP, vip.port, "VIP_AE", "CT_1", *images[:2])
            assert done.returncode == 0, done.stderr
            assert len(files_in(tmp_path / "n" / "db")) == 2
        # Without the rewrite the same archive refuses the VIP's title: the check is real.
        plain = [{"label": "N", "address": PEER, "port": port}]
        with DicomVip(proxy_loop, VIP, plain).serving() as vip:
            done = echo(VIP, vip.port, "VIP_AE", "CT_1")
            assert done.returncode != 0
            assert "Called AE Title Not Recognized" in done.stdout + done.stderr


def test_calling_ae_persistence_keeps_each_modality_on_one_archive(
    proxy_loop: ProxyLoop, tmp_path: Path
) -> None:
    with storescp(tmp_path / "x") as port_x, storescp(tmp_path / "y") as port_y:
        servers = [
            {"label": "X", "address": PEER, "port": port_x},
            {"label": "Y", "address": PEER, "port": port_y},
        ]
        persistence = {"type": "calling-ae", "timeout": 60}
        with DicomVip(
            proxy_loop, VIP, servers, persistence=persistence, scheduler="rr"
        ).serving() as vip:
            # Two in a row from each: round robin alone would split each modality's pair
            # (alternating ones would fool it: each would meet "its" archive every time).
            for i in range(10):
                for modality in ("CT_1", "CT_1", "MR_2", "MR_2"):
                    done = echo(VIP, vip.port, "ARCHIVE", modality)
                    assert done.returncode == 0, (i, done.stderr)
            vip.wait_idle()
            ct, mr = vip.stats("ae:CT_1"), vip.stats("ae:MR_2")
            assert ct["associations"] == mr["associations"] == 20
            x, y = vip.stats("X"), vip.stats("Y")
            # Round robin would alternate; persistence keeps each modality on its first
            # archive: both archives used (rr placed the two modalities apart), 20 each.
            assert sorted((x["associations"], y["associations"])) == [20, 20]
            entries = vip.loop.call(lambda: vip.runtime.balancer.sticky.entries())
            assert {e.key for e in entries} == {"CT_1", "MR_2"}
            assert len({e.server for e in entries}) == 2


def test_a_servers_own_reject_is_relayed_and_counted(proxy_loop: ProxyLoop, tmp_path: Path) -> None:
    """storescp --refuse answers every association with A-ASSOCIATE-RJ: the client gets the
    archive's own answer through the proxy, counted on that server as rejected."""
    argv = ["/usr/bin/storescp", "--refuse"]
    with contextlib.ExitStack() as stack:
        port = free_port()
        stack.enter_context(running([*argv, str(port)], PEER, port, env=DCMTK_ENV))
        servers = [{"label": "R", "address": PEER, "port": port}]
        with DicomVip(proxy_loop, VIP, servers, splice=False).serving() as vip:
            done = echo(VIP, vip.port, "ANY", "CT_1")
            assert done.returncode != 0 and "Association Rejected" in done.stdout + done.stderr
            vip.wait_idle()
            stats = vip.stats("R")
            assert stats["associations"] == 1 and stats["assoc_rejected"] == 1
            assert vip.stats("ae:CT_1")["assoc_rejected"] == 1


def test_a_retry_on_another_server_forwards_the_request_as_the_client_sent_it(
    proxy_loop: ProxyLoop, tmp_path: Path
) -> None:
    """A's connect is refused (its rewrite to NODE_A must not stick to the request); the retry
    on B, an archive answering the VIP's own title, gets the called AE the client sent."""
    with socket.socket() as dead, dcmqrscp(tmp_path / "b", "VIP_AE") as port_b:
        dead.bind((PEER, 0))  # bound, not listening: refuses connections
        servers = [
            {"label": "A", "address": PEER, "port": dead.getsockname()[1], "ae_title": "NODE_A"},
            {"label": "B", "address": PEER, "port": port_b},
        ]
        with DicomVip(proxy_loop, VIP, servers, scheduler="rr").serving() as vip:
            for _ in range(4):  # round robin: A comes first at least once
                done = echo(VIP, vip.port, "VIP_AE", "CT_1")
                assert done.returncode == 0, done.stdout + done.stderr
            assert vip.stats("A")["connect_failures"] >= 1
            assert vip.stats("B")["associations"] == 4
