"""What the browser tests share: Debian's Chromium driven by Playwright (no browser download),
its flags, screenshots for a person to look at (tests/browser/artifacts/, gitignored), and a
logged-in page."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.peers.procs import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests/browser/artifacts"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15000


def shot(page: Any, name: str, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, ARTIFACTS / name)


def row(page: Any, server: str) -> Any:
    return page.locator(f'tr.rip[data-server="{server}"]')


def logged_in(browser: Any, base_url: str, password: str) -> Any:
    """A page of a new context (the generated certificate accepted), logged in as admin, on
    the System Overview."""
    context = browser.new_context(ignore_https_errors=True, base_url=base_url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto("/")
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#overview", state="attached")  # hidden while there is no service
    return page
