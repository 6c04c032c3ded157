"""The System Overview's red banner in headless Chromium (issue 15 item 3).

`pacslb run --degraded` on a config whose l4-dr service this host cannot place (its real
server is a loopback address: the kernel engine refuses the Plan before any nftables
transaction, so the host is not touched) and whose l7 service runs. The banner names the
engine's failure while it lasts and goes once a reload drops the service. Screenshot:
tests/browser/artifacts/overview-not-ready.png."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, logged_in, shot
from tests.peers.procs import free_port, http_peer, running, wait_until

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
HOST, PASSWORD = "127.10.10.1", "banner test password"
CLI = [sys.executable, "-m", "pacslb.cli"]
DICOM = """  - label: McK-Radiology_DICOM
    vip: 127.10.10.30
    ports: [4000]
    mode: l4-dr
    health_check: {type: none}
    real_servers:
      - {label: McK-Radiology_Srv1, address: 127.10.10.31}
"""


def write(config: Path, web: int, vip_port: int, peer: int, *, dicom: bool) -> None:
    config.write_text(
        f"""version: 1
node:
  webui: {{listen: "{HOST}:{web}"}}
virtual_services:
{DICOM if dicom else ""}  - label: McK-Radiology_Web
    vip: 127.10.10.40
    ports: [{vip_port}]
    mode: l7-http
    health_check: {{type: http, path: /ok, expect: OK, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
      - {{label: McK-Web_Srv1, address: {HOST}, port: {peer}}}
"""
    )


def test_red_banner_names_the_engine_failure_while_it_lasts(tmp_path: Path) -> None:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    web, vip_port, peer = free_port(HOST), free_port("127.10.10.40"), free_port(HOST)
    write(config, web, vip_port, peer, dicom=True)
    subprocess.run(
        [*CLI, "passwd", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    argv = [*CLI, "run", str(config), "--state-dir", str(state), "--degraded"]
    with (
        http_peer(HOST, peer, "/ok=200:OK"),
        running(argv, HOST, web, log=tmp_path / "run.log"),
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = logged_in(browser, f"https://{HOST}:{web}", PASSWORD)

            banner = page.locator("#readiness")
            banner.wait_for(state="visible")
            page.wait_for_function(
                "() => document.querySelector('#readiness')?.textContent"
                ".includes('kernel: apply failed')"
            )
            text = banner.inner_text()
            assert "Not ready" in text and "McK-Radiology_DICOM/McK-Radiology_Srv1" in text, text
            # The placement problem --degraded accepted, and the one headline, kept by app.js.
            assert "Degraded: cannot be placed on this host: McK-Radiology_DICOM" in text, text
            headline = banner.locator('[data-role="headline"]').inner_text()
            assert headline == banner.get_attribute("data-not-ready"), headline
            colour = banner.evaluate("el => getComputedStyle(el).backgroundColor")
            assert colour == "rgb(201, 42, 42)", colour  # --down: the red of a down server
            page.wait_for_selector("tr.rip[data-server='McK-Web_Srv1'] .dot.h-up")
            shot(page, "overview-not-ready.png", tmp_path)

            # The operator takes the service out: the apply succeeds, the banner goes.
            write(config, web, vip_port, peer, dicom=False)
            done = subprocess.run(
                [*CLI, "reload", "--state-dir", str(state)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            banner.wait_for(state="hidden")
            shot(page, "overview-ready-again.png", tmp_path)
        finally:
            browser.close()


def test_banner_says_the_last_good_revision_runs_when_the_file_is_broken(tmp_path: Path) -> None:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    web, vip_port, peer = free_port(HOST), free_port("127.10.10.40"), free_port(HOST)
    write(config, web, vip_port, peer, dicom=False)
    subprocess.run(
        [*CLI, "passwd", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    argv = [*CLI, "run", str(config), "--state-dir", str(state)]
    with running(argv, HOST, web, log=tmp_path / "run1.log"):
        wait_until(lambda: (state / "revisions" / "index.json").exists(), 20, "revision 1")
    config.write_text(config.read_text().replace("mode: l7-http", "mode: l7-htp"))
    with (
        http_peer(HOST, peer, "/ok=200:OK"),
        running(argv, HOST, web, log=tmp_path / "run2.log"),
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = logged_in(browser, f"https://{HOST}:{web}", PASSWORD)
            banner = page.locator("#readiness")
            banner.wait_for(state="visible")
            text = banner.inner_text()
            assert "Degraded" in text and "running revision 1, the last good one" in text, text
            headline = banner.locator('[data-role="headline"]').inner_text()
            assert headline == banner.get_attribute("data-degraded"), headline
            page.wait_for_selector("tr.rip[data-server='McK-Web_Srv1'] .dot.h-up")
            shot(page, "overview-degraded.png", tmp_path)
        finally:
            browser.close()
