"""The WebUI in headless Chromium (Debian's, driven by Playwright; no browser download).

A real `pacslb run` on loopback with real HTTP real servers: log in, see every VIP and real
server green, hold a connection through a VIP and watch Drain and Halt change the server's colour
and connection count live, add a VIP with a mistake and read the message on its field, view the
graphs, log out. Screenshots of the System Overview go to tests/browser/artifacts/."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, TIMEOUT_MS, row, shot
from tests.peers.procs import free_port, http_peer, running

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
WEB_HOST, PASSWORD = "127.0.0.8", "browser test password"


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A running pacslb: VIP Web (l7-http, two servers) and VIP Pacs (l7-tcp, one server)."""
    peers = [free_port() for _ in range(3)]
    web, web_vip, pacs_vip = free_port(WEB_HOST), free_port("127.0.0.30"), free_port("127.0.0.31")
    config = tmp_path / "pacslb.yaml"
    check = "{type: http, path: /ok, expect: OK, interval: 0.5, timeout: 0.4, rise: 1}"
    config.write_text(
        f"""version: 1
node:
  webui: {{listen: "{WEB_HOST}:{web}", sample_interval: 1}}
virtual_services:
  - label: Web
    vip: 127.0.0.30
    ports: [{web_vip}]
    mode: l7-http
    health_check: {check}
    real_servers:
      - {{label: WebSrv1, address: 127.0.0.1, port: {peers[0]}}}
      - {{label: WebSrv2, address: 127.0.0.1, port: {peers[1]}}}
  - label: Pacs
    vip: 127.0.0.31
    ports: [{pacs_vip}]
    mode: l7-tcp
    health_check: {{type: connect, interval: 0.5, timeout: 0.4, rise: 1}}
    real_servers:
      - {{label: PacsSrv1, address: 127.0.0.1, port: {peers[2]}}}
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
        for port in peers:
            stack.enter_context(http_peer("127.0.0.1", port, "/ok=200:OK"))
        argv = [*cli, "run", str(config), "--state-dir", str(state)]
        stack.enter_context(running(argv, WEB_HOST, web, log=tmp_path / "run.log"))
        yield f"https://{WEB_HOST}:{web}", pacs_vip


def wait_colour(page: Any, server: str, colour: str) -> None:
    page.wait_for_function(
        "([s, c]) => document.querySelector(`tr.rip[data-server='${s}'] .dot`)"
        "?.classList.contains('h-' + c)",
        arg=[server, colour],
        timeout=TIMEOUT_MS,
    )


def wait_conns(page: Any, server: str, count: int) -> None:
    page.wait_for_function(
        "([s, n]) => document.querySelector(`tr.rip[data-server='${s}'] [data-role=conns]`)"
        "?.textContent.trim() === String(n)",
        arg=[server, count],
        timeout=TIMEOUT_MS,
    )


def test_webui_in_chromium(lb: tuple[str, int], tmp_path: Path) -> None:
    base, pacs_port = lb
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = browser.new_context(ignore_https_errors=True, base_url=base)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)

            page.goto("/")  # no session: the login page
            assert "/login" in page.url
            page.fill("#password", "wrong password")
            page.click("button[type=submit]")
            assert "wrong user name or password" in page.inner_text("#login-error")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#overview")

            for server in ("WebSrv1", "WebSrv2", "PacsSrv1"):
                wait_colour(page, server, "up")
            page.wait_for_function(
                "() => [...document.querySelectorAll('tr.vip')]"
                ".every(r => r.querySelector('.dot').classList.contains('h-up'))"
            )
            assert page.locator("tr.vip").count() == 2
            shot(page, "overview-green.png", tmp_path)

            # A DICOM-like long connection through the l7-tcp VIP: 1 open on PacsSrv1.
            with socket.create_connection(("127.0.0.31", pacs_port), timeout=5) as held:
                wait_conns(page, "PacsSrv1", 1)
                row(page, "PacsSrv1").locator("button.btn-drain").click()
                wait_colour(page, "PacsSrv1", "drain")
                wait_conns(page, "PacsSrv1", 1)  # drain never cuts a live connection
                shot(page, "overview-drain.png", tmp_path)
                row(page, "PacsSrv1").locator("button.btn-halt").click()
                wait_colour(page, "PacsSrv1", "halt")
                wait_conns(page, "PacsSrv1", 0)  # halt closes it
                held.settimeout(5)
                with contextlib.suppress(ConnectionResetError):  # l7-tcp halt resets on purpose
                    assert held.recv(1) == b""
            row(page, "PacsSrv1").locator("button.btn-online").click()
            wait_colour(page, "PacsSrv1", "up")

            # Add a VIP with a mistake: the message stands on the field, nothing is applied.
            page.click("text=Add Virtual Service")
            page.fill("#f-label", "Viewer")
            page.fill("#f-vip", "127.0.0.999")
            page.fill("#f-ports", str(free_port("127.0.0.32")))
            page.select_option("#f-mode", "l7-tcp")
            page.click("#save")
            message = page.inner_text("#e-vip")
            assert "not a valid IPv4 or IPv6 address" in message
            assert page.get_attribute("#f-vip", "aria-invalid") == "true"
            shot(page, "add-vip-mistake.png", tmp_path)
            page.fill("#f-vip", "127.0.0.32")
            page.click("#save")
            page.wait_for_selector('tbody.service[data-service="Viewer"]')

            page.click("text=Reports")
            page.wait_for_selector("svg.chart")
            assert page.locator("svg.chart").count() >= 6  # 2 per VIP, and its servers'
            assert "connections" in page.locator("svg.chart title").first.text_content() or ""
            shot(page, "reports.png", tmp_path)

            page.click("text=Logs")
            page.select_option("#kind", "admin")
            page.click("#log-filter button")
            assert "drain -> halt by admin" in page.inner_text("table.events")

            page.click("#logout")
            page.wait_for_selector("#password")
            page.goto("/")
            assert "/login" in page.url
        finally:
            browser.close()
