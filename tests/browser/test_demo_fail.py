"""The demo's Fail / Recover buttons on the System Overview in headless Chromium (issue 17
item 4): a click makes a demo real server fail its health check for real; the row turns red
while the page is open (app.js polls the status) and the traffic moves; Recover brings it back
to green. Screenshots: tests/browser/artifacts/demo-failing.png, demo-recovered.png.

`pacslb demo --net 127.10.6` (VIPs .30-.50, real servers .1-.10, WebUI .200) binds the guide's
ports, so this needs root (CI is root)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, logged_in, row, shot
from tests.peers.procs import running

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo binds ports 80/443/4000/5000: root"),
]
NET, HOST, PORT, PASSWORD = "127.10.6", "127.10.6.200", 26443, "demo fail test password"
CLI = [sys.executable, "-m", "pacslb.cli"]
SERVER = "Radiology_Web_Srv2"


def served_by() -> str:
    with urllib.request.urlopen(f"http://{NET}.31/whoami", timeout=5) as r:
        return str(r.headers["X-Served-By"])


def test_fail_button_turns_the_server_red_and_recover_brings_it_back(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    subprocess.run(
        [*CLI, "passwd", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    argv = [*CLI, "demo", "--state-dir", str(state), "--net", NET]
    argv += ["--webui-listen", f"{HOST}:{PORT}"]
    with (
        running(argv, HOST, PORT, log=tmp_path / "demo.log"),
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = logged_in(browser, f"https://{HOST}:{PORT}", PASSWORD)
            assert "Demo:" in page.locator(".demo-note").inner_text()
            line = row(page, SERVER)
            line.locator(".dot.h-up").wait_for()

            line.get_by_role("button", name=f"Fail {SERVER} (demo)").click()
            page.wait_for_url("**/?done=demo-fail*")
            assert f"Demo: {SERVER} now fails its health check" in page.content()
            # Red within fall x interval (2 x 2 s) and a poll of the page (2 s).
            row(page, SERVER).locator(".dot.h-down").wait_for(timeout=12000)
            check = row(page, SERVER).locator('[data-role="check"]').inner_text()
            assert "got status 503" in check, check
            assert {served_by() for _ in range(6)} == {"Radiology_Web_Srv1"}  # traffic moved
            shot(page, "demo-failing.png", tmp_path)

            row(page, SERVER).get_by_role("button", name=f"Recover {SERVER} (demo)").click()
            page.wait_for_url("**/?done=demo-recover*")
            row(page, SERVER).locator(".dot.h-up").wait_for(timeout=12000)
            assert row(page, SERVER).get_by_role("button", name=f"Fail {SERVER} (demo)").count()
            assert {served_by() for _ in range(6)} == {"Radiology_Web_Srv1", SERVER}
            shot(page, "demo-recovered.png", tmp_path)
        finally:
            browser.close()
