"""The Logs page's "Send test alert" button in headless Chromium: a real aiosmtpd relay gets the
mail and the page shows each channel's outcome at once (a webhook nobody listens on: failed,
with the reason, after one attempt). Screenshot: tests/browser/artifacts/alert-test.png."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, logged_in, shot
from tests.integration.alert_peers import BLOCK, free_port, smtp_relay
from tests.peers.procs import running, wait_until

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
HOST, RELAY, PASSWORD = f"{BLOCK}.6", f"{BLOCK}.7", "alert button password"
CLI = [sys.executable, "-m", "pacslb.cli"]


def test_send_test_alert_button_reports_each_channel(tmp_path: Path) -> None:
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    web, smtp, dead = free_port(HOST), free_port(RELAY), free_port(RELAY)
    config.write_text(
        f"""version: 1
node:
  webui: {{listen: "{HOST}:{web}"}}
  alerts:
    email: {{host: {RELAY}, port: {smtp}, security: none, sender: pacslb@lb.example,
             recipients: [pacs-team@hospital.example]}}
    webhook: {{url: "http://{RELAY}:{dead}/hook", timeout: 2}}
"""
    )
    subprocess.run(
        [*CLI, "passwd", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    argv = [*CLI, "run", str(config), "--state-dir", str(state)]
    with (
        smtp_relay(RELAY, smtp) as box,
        running(argv, HOST, web, log=tmp_path / "run.log"),
        playwright.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = logged_in(browser, f"https://{HOST}:{web}", PASSWORD)
            page.click("nav >> text=Logs")
            assert "Alerts go to: email, webhook." in page.locator("#alerts").inner_text()
            started = time.monotonic()
            page.click("#alert-test")
            page.wait_for_selector("#alert-results")
            # one attempt per channel: at once, not after the webhook's retries (2 + 4 + 8 s)
            assert time.monotonic() - started < 5, time.monotonic() - started
            rows = page.locator("#alert-results tbody tr").all_inner_texts()
            assert rows[0] == "email\tdelivered", rows
            assert rows[1].startswith("webhook\tfailed: "), rows
            assert "Connection refused" in rows[1], rows
            shot(page, "alert-test.png", tmp_path)
            wait_until(lambda: box.mails, 5, "the test mail")
            assert "TEST" in box.subjects()[0]
            # The outcome is in the log too, under its own kind.
            page.goto("/logs?kind=alert")
            text = page.locator("table.events").first.inner_text()
            assert "email: delivered" in text and "webhook: not delivered" in text, text
        finally:
            browser.close()
