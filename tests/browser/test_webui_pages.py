"""Every page of the WebUI in headless Chromium, as a new user walks them (issue 15's trial).

A real `pacslb run` on 127.10.11.0/24 with real peers: an HTTP real server pair behind an
l7-http VIP and a DICOM archive (dcmtk storescp) behind an l7-tcp VIP with a dicom-echo check.
The walk: the System Overview (a state word beside each colour, only the buttons that change
something, a confirmation after Drain and Online), a service page (each VIP's and real server's
interface, the AE-title fields that appear when the check becomes dicom-echo, a confirmation
after Save, the System Overview tab while editing), the configuration (dates, no empty ruleset
box), the paged log and the reports (legends whole, whole-number axes, throughput in and out).
Screenshots of each page go to tests/browser/artifacts/ (gitignored) for a person to look at."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, TIMEOUT_MS, row, shot
from tests.peers.procs import free_port, http_peer, running

playwright = pytest.importorskip("playwright.sync_api")
STORESCP = Path("/usr/bin/storescp")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not STORESCP.exists(), reason="dcmtk is not installed"),
]
NET = "127.10.11"
WEB_HOST, PASSWORD = f"{NET}.8", "browser pages password"


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A running pacslb; yields the WebUI's base URL and the l7-http VIP's URL."""
    web_peers = [(f"{NET}.21", free_port(f"{NET}.21")), (f"{NET}.22", free_port(f"{NET}.22"))]
    archive = free_port("0.0.0.0")  # storescp listens on every address
    web, web_vip, pacs_vip = free_port(WEB_HOST), free_port(f"{NET}.30"), free_port(f"{NET}.31")
    config = tmp_path / "pacslb.yaml"
    config.write_text(
        f"""version: 1
node:
  webui: {{listen: "{WEB_HOST}:{web}", sample_interval: 1}}
virtual_services:
  - label: Radiology_Web
    vip: {NET}.30
    ports: [{web_vip}]
    mode: l7-http
    health_check: {{type: http, path: /ok, expect: OK, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
      - {{label: Radiology_WebSrv1, address: {web_peers[0][0]}, port: {web_peers[0][1]}}}
      - {{label: Radiology_WebSrv2, address: {web_peers[1][0]}, port: {web_peers[1][1]}}}
  - label: Radiology_DICOM
    vip: {NET}.31
    ports: [{pacs_vip}]
    mode: l7-tcp
    health_check: {{type: connect, interval: 1, timeout: 0.8, rise: 1}}
    real_servers:
      - {{label: Radiology_Archive1, address: {NET}.23, port: {archive}}}
"""
    )
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "pacslb.cli"]
    subprocess.run(
        [*cli, "passwd", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    with ExitStack() as stack:
        for host, port in web_peers:
            stack.enter_context(http_peer(host, port, "/ok=200:OK", "/=200:hello"))
        env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise
        storescp = [str(STORESCP), "-aet", "ARCHIVE", "-od", str(tmp_path), str(archive)]
        stack.enter_context(running(storescp, f"{NET}.23", archive, env=env))
        argv = [*cli, "run", str(config), "--state-dir", str(state)]
        stack.enter_context(running(argv, WEB_HOST, web, log=tmp_path / "run.log"))
        yield f"https://{WEB_HOST}:{web}", f"http://{NET}.30:{web_vip}/"


def state_word(page: Any, server: str, word: str) -> None:
    page.wait_for_function(
        "([s, w]) => document.querySelector(`tr.rip[data-server='${s}'] .state`)"
        "?.textContent.trim() === w",
        arg=[server, word],
        timeout=TIMEOUT_MS,
    )


def visible_buttons(page: Any, server: str) -> list[str]:
    buttons = row(page, server).locator("form.admin-form button:visible")
    return sorted(t.strip() for t in buttons.all_inner_texts())


def traffic(url: str, requests: int) -> None:
    """A few requests through the VIP, so the graphs have something to draw (bounded)."""
    for _ in range(requests):
        with urllib.request.urlopen(url, timeout=5) as answer:
            answer.read()


def test_every_page_in_chromium(lb: tuple[str, str], tmp_path: Path) -> None:
    base, vip_url = lb
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = browser.new_context(
                ignore_https_errors=True, base_url=base, viewport={"width": 1280, "height": 800}
            )
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto("/login")
            assert context.request.get(f"{base}/favicon.ico").ok
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#overview")

            # System Overview: a word beside each colour; only the buttons that change
            # something; a confirmation after each action.
            for server in ("Radiology_WebSrv1", "Radiology_WebSrv2", "Radiology_Archive1"):
                state_word(page, server, "up")
            assert visible_buttons(page, "Radiology_WebSrv1") == ["Drain", "Halt"]
            row(page, "Radiology_WebSrv1").locator("button.btn-drain").click()
            state_word(page, "Radiology_WebSrv1", "drain")
            assert "Radiology_WebSrv1 of Radiology_Web is draining" in page.inner_text("#notice")
            page.wait_for_function(
                "() => document.querySelector(\"tr.rip[data-server='Radiology_WebSrv1'] "
                'form[data-action=drain]").hidden'
            )
            assert visible_buttons(page, "Radiology_WebSrv1") == ["Halt", "Online"]
            vip_word = 'tbody[data-service="Radiology_Web"] tr.vip .state'
            assert page.inner_text(vip_word) == "up"  # a drain is the operator's, not a fault
            shot(page, "pages-overview-drain.png", tmp_path)
            row(page, "Radiology_WebSrv1").locator("button.btn-online").click()
            state_word(page, "Radiology_WebSrv1", "up")
            assert "is online" in page.inner_text("#notice")

            # The DICOM service: the interfaces; the AE-title fields appear with dicom-echo.
            page.click('a[href="/services/Radiology_DICOM"]')
            assert page.get_attribute('nav a[href="/"]', "aria-current") == "page"
            assert "on lo" in page.inner_text("#vip-interface")
            assert page.inner_text("#real-servers td.interface").startswith("on lo")
            assert not page.is_visible("#f-health_check\\.called_ae")
            page.select_option("#f-health_check\\.type", "dicom-echo")
            assert page.is_visible("#f-health_check\\.called_ae")
            assert not page.is_visible("#f-health_check\\.path")
            page.fill("#f-health_check\\.called_ae", "ARCHIVE")
            page.fill("#f-health_check\\.calling_ae", "PACSLB_CHECK")
            shot(page, "pages-service-dicom-echo.png", tmp_path)
            page.click("#save")
            page.wait_for_selector("#notice:not([hidden])")
            assert "Saved Radiology_DICOM: revision" in page.inner_text("#notice")
            assert page.input_value("#f-health_check\\.called_ae") == "ARCHIVE"
            shot(page, "pages-service-saved.png", tmp_path)
            page.goto("/")
            state_word(page, "Radiology_Archive1", "up")  # the C-ECHO is answered

            page.goto("/config")
            assert "rendered ruleset" not in page.content()  # no Layer 4 service here
            applied = page.inner_text("table td.ts")
            assert applied.endswith(" UTC") and applied[:2] == "20", applied
            shot(page, "pages-config.png", tmp_path)

            page.goto("/logs")
            assert "newest first" in page.inner_text("#log-pages")
            shot(page, "pages-logs.png", tmp_path)

            traffic(vip_url, 20)
            time.sleep(2.5)  # two more samples (sample_interval 1 s) to draw a rate from
            traffic(vip_url, 20)
            time.sleep(1.5)
            page.goto("/reports")
            page.wait_for_selector("svg.chart")
            titles = page.locator("svg.chart > title").all_text_contents()
            assert "Radiology_Web: throughput in and out" in titles
            legends = page.locator("details svg.chart text.legend").all_text_contents()
            assert "Radiology_WebSrv2 out" in legends  # whole, not cut to 22 characters
            page.locator("details").first.evaluate("d => d.open = true")
            shot(page, "pages-reports.png", tmp_path)
        finally:
            browser.close()
