"""The first-run wizard in headless Chromium (issue 18, item 3).

A real `pacslb run` on the empty config the package installs (`pacslb profile empty`), all on
127.10.3.0/24. The System Overview offers the wizard; through its plain forms an admin sets up
the McKesson deployment's proxy variant with real servers this test starts (HTTP servers that
answer the guide's check URLs, and a pynetdicom archive on 4000 and 5000), sees the config file
and the real servers' set-up, applies, and then traffic goes through every VIP: each HTTP VIP
answers with its real server's page, dcmtk's echoscu verifies through the DICOM VIP and a CT
image sent with storescu arrives intact. A form with a bad address and a VIP:port clash shows
each message on its field and applies nothing; the Direct Routing variant's review shows the
real servers' loopback and ARP set-up. Screenshots: tests/browser/artifacts/wizard-*.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, logged_in, shot
from tests.peers.procs import free_port, http_peer, running, wait_until

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the McKesson services listen on ports 80, 443, 4000, 5000"
    ),
    pytest.mark.timeout(120),
]
NET, PASSWORD = "127.10.3", "wizard test password"
WEB_HOST = f"{NET}.2"
ECHOSCU, STORESCU = "/usr/bin/echoscu", "/usr/bin/storescu"  # dcmtk's, by full path
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise (research/dicom.md)
VIPS = {"dicom": 30, "web": 31, "manager": 40, "crv": 41, "cardiology": 50}
RIPS = {"dicom": [101], "web": [111, 112], "manager": [121], "crv": [131], "cardiology": [141]}
CHECK_PATH = {  # what the profile's health checks ask each web server, and the answer
    "web": ("/wpp/srvpacs.asp", "srvPACS OK"),
    "manager": ("/cis/index.html", "OK"),
    "crv": ("/McKessonEmiCRV/Ping.aspx", "OK"),
    "cardiology": ("/", ""),
}


@dataclass
class Node:
    base: str
    config: Path
    state: Path


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """`pacslb run` on the package's empty config, its WebUI on 127.10.3.2."""
    web = free_port(WEB_HOST)
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    cli = [sys.executable, "-m", "pacslb.cli"]
    listen = ["--webui-listen", f"{WEB_HOST}:{web}", "--state-dir", str(state)]
    subprocess.run([*cli, "profile", "empty", *listen, "-o", str(config)], check=True, timeout=30)
    subprocess.run(
        [*cli, "passwd", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    argv = [*cli, "run", str(config), "--state-dir", str(state)]
    with running(argv, WEB_HOST, web, log=tmp_path / "run.log"):
        yield Node(f"https://{WEB_HOST}:{web}", config, state)


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Archive:
    """A DICOM archive (pynetdicom) on one address, ports 4000 and 5000: answers C-ECHO and
    keeps each C-STORE's data set as received, by SOP instance UID."""

    def __init__(self, address: str) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.received: dict[str, bytes] = {}
        self.lock = threading.Lock()
        ae = AE(ae_title="ARCHIVE")
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.servers = [
            ae.start_server((address, port), block=False, evt_handlers=handlers)
            for port in (4000, 5000)
        ]

    def _store(self, event: Any) -> int:
        with self.lock:
            uid = str(event.request.AffectedSOPInstanceUID)
            self.received[uid] = event.request.DataSet.getvalue()
        return 0x0000

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()


def start_real_servers(stack: ExitStack) -> Archive:
    for key, (path, text) in CHECK_PATH.items():
        for last in RIPS[key]:
            ports = (80, 443) if key == "cardiology" else (80,)
            for port in ports:
                routes = [f"/=200:{key} real server {NET}.{last} port {port}"]
                if path != "/":
                    routes.append(f"{path}=200:{text}")
                stack.enter_context(http_peer(f"{NET}.{last}", port, *routes))
    archive = Archive(f"{NET}.{RIPS['dicom'][0]}")
    stack.callback(archive.close)
    return archive


def fill_addresses(page: Any, vips: dict[str, str], rips: dict[str, list[str]]) -> None:
    for key, vip in vips.items():
        page.fill(f"#f-vip_{key}", vip)
    for key, addresses in rips.items():
        for row, address in enumerate(addresses, start=1):
            page.fill(f"#f-rip_{key}_{row}", address)


def our_addresses() -> tuple[dict[str, str], dict[str, list[str]]]:
    vips = {key: f"{NET}.{last}" for key, last in VIPS.items()}
    rips = {key: [f"{NET}.{last}" for last in lasts] for key, lasts in RIPS.items()}
    return vips, rips


def start_wizard(page: Any, variant: str) -> None:
    """From the System Overview of a node with no service to the address form."""
    page.click("#wizard-start")
    page.check(f"#variant-{variant}")
    page.click("#wizard-next")
    page.wait_for_selector("#wizard-form")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        body: bytes = answer.read()
    return body.decode()


def answers(url: str, expected: str) -> bool:
    try:
        return expected in get(url)
    except OSError:
        return False


def test_wizard_sets_up_the_proxy_variant_that_forwards(
    node: Node, browser: Any, tmp_path: Path
) -> None:
    from bench.dicom_files import new_uid

    from tests.integration.test_tcp_proxy import dataset_part, dicom_ct

    with ExitStack() as stack:
        archive = start_real_servers(stack)
        page = logged_in(browser, node.base, PASSWORD)
        assert "No virtual services yet" in page.inner_text("#wizard-offer")
        shot(page, "wizard-offer.png", tmp_path)
        start_wizard(page, "proxy")
        vips, rips = our_addresses()
        fill_addresses(page, vips, rips)
        shot(page, "wizard-addresses.png", tmp_path)
        page.click("#wizard-review")

        yaml_text = page.inner_text("#wizard-yaml")
        for vip in vips.values():
            assert f"vip: {vip}" in yaml_text, yaml_text
        assert "mode: l7-http" in yaml_text and "mode: l7-tcp" in yaml_text, yaml_text
        assert "persistence: {type: http-cookie}" in yaml_text, yaml_text
        assert f'webui: {{listen: "{WEB_HOST}:' in yaml_text, yaml_text  # the node's own, kept
        setup = page.inner_text("#wizard-realserver")
        assert "no l4-dr, l4-nat or transparent l7 virtual service in this config" in setup, setup
        shot(page, "wizard-review.png", tmp_path)
        assert node.config.read_text().count("virtual_services: []") == 1  # not yet applied

        page.click("#wizard-apply")
        page.wait_for_url("**/?done=added*")
        notice = page.inner_text("#notice")
        assert "Added McKesson Radiology and Cardiology (proxy): revision 2 is in force" in notice
        assert page.locator("#wizard-offer").count() == 0
        assert page.locator("tbody.service").count() == 5
        applied = node.config.read_text()
        assert applied.startswith("# pacslb configuration, as the package installs")  # edited
        assert "label: McK-Cardiology" in applied and f"vip: {NET}.50" in applied, applied

        # Every VIP forwards to the real servers this test started.
        for key in ("web", "manager", "crv", "cardiology"):
            url = f"http://{vips[key]}/"
            wait_until(lambda u=url, k=key: answers(u, f"{k} real server"), 30, f"{url} answers")
        answered = {get(f"http://{vips['web']}/") for _ in range(6)}
        assert answered == {f"web real server {NET}.{n} port 80" for n in RIPS["web"]}, answered
        assert "port 443" in get(f"http://{vips['cardiology']}:443/")  # l7-tcp: bytes as sent
        echo = [ECHOSCU, "-aec", "ARCHIVE", vips["dicom"], "4000"]
        env = {**os.environ, **DCMTK_ENV}
        run = subprocess.run(echo, env=env, capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        uid = new_uid()
        image = dicom_ct(uid, "PACSLB-WIZARD", new_uid(), new_uid(), 1, os.urandom(64 * 64 * 2))
        (tmp_path / "ct.dcm").write_bytes(image)
        store = [STORESCU, "-aec", "ARCHIVE", vips["dicom"], "5000", str(tmp_path / "ct.dcm")]
        run = subprocess.run(store, env=env, capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        assert archive.received[uid] == dataset_part(image)  # arrived intact

        page.click("text=Revisions")
        newest = page.locator("table tbody tr").first.inner_text()
        assert "first-run wizard: McKesson Radiology and Cardiology, variant proxy" in newest
        page.goto("/")
        page.wait_for_selector('tr.rip[data-server="Radiology_Web_Srv2"] .dot.h-up')
        shot(page, "wizard-applied.png", tmp_path)


def test_wizard_shows_each_problem_on_its_field_and_applies_nothing(
    node: Node, browser: Any, tmp_path: Path
) -> None:
    before = node.config.read_text()
    page = logged_in(browser, node.base, PASSWORD)
    start_wizard(page, "proxy")
    vips, rips = our_addresses()
    vips["web"] = f"{NET}.999"  # not an address
    vips["crv"] = vips["manager"]  # both on port 80 of one VIP
    rips["dicom"] = [rips["dicom"][0], f"{NET}.300"]
    rips["cardiology"] = []  # no real server at all
    fill_addresses(page, vips, rips)
    page.click("#wizard-review")

    page.wait_for_selector("#wizard-form")
    assert "not a valid IPv4 or IPv6 address" in page.inner_text("#e-vip_web")
    assert page.get_attribute("#f-vip_web", "aria-invalid") == "true"
    clash = page.inner_text("#e-vip_crv")
    assert f"{NET}.40 port 80/tcp is already used by the virtual service" in clash, clash
    assert "McK-RadiologyManager" in clash and "McK-ClinicalReferenceViewer" in page.inner_text(
        "#e-vip_manager"
    )
    assert "not a valid IPv4 or IPv6 address" in page.inner_text("#e-rip_dicom_2")
    assert "at least one real server" in page.inner_text("#e-rip_cardiology_1")
    assert page.locator("p.error").count() == 5  # no other field is marked
    assert page.input_value("#f-vip_web") == f"{NET}.999"  # what was typed stays
    assert page.input_value("#f-rip_dicom_1") == rips["dicom"][0]
    shot(page, "wizard-field-errors.png", tmp_path)

    assert node.config.read_text() == before  # nothing applied
    page.goto("/revisions")
    assert page.locator("table tbody tr").count() == 1
    page.goto("/")
    page.wait_for_selector("#wizard-offer")


def test_wizard_direct_routing_review_shows_the_real_servers_setup(
    node: Node, browser: Any, tmp_path: Path
) -> None:
    page = logged_in(browser, node.base, PASSWORD)
    start_wizard(page, "dr")
    vips, rips = our_addresses()
    fill_addresses(page, vips, rips)
    page.click("#wizard-review")

    assert "mode: l4-dr" in page.inner_text("#wizard-yaml")
    setup = page.inner_text("#wizard-realserver")
    dicom_rs = f"{NET}.{RIPS['dicom'][0]}"
    assert f"# === Radiology_DICOM_Srv1 ({dicom_rs})" in setup, setup
    assert f"ip addr replace {vips['dicom']}/32 dev lo" in setup, setup
    assert "sysctl -w net.ipv4.conf.all.arp_ignore=1" in setup, setup
    web_rs = f"# === Radiology_Web_Srv2 ({NET}.{RIPS['web'][1]})"
    assert web_rs in setup and f"ip addr replace {vips['web']}/32 dev lo" in setup, setup
    page.click("details summary")
    windows = page.inner_text("#wizard-realserver-windows")
    assert f'netsh interface ipv4 add address "loopback" {vips["dicom"]} 255.255.255.255' in (
        windows
    )
    shot(page, "wizard-dr-review.png", tmp_path)

    page.click("#wizard-change")  # back to the addresses, as typed
    page.wait_for_selector("#wizard-form")
    assert page.input_value("#f-rip_web_2") == rips["web"][1]
