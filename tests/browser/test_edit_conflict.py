"""The edit-conflict message in headless Chromium (issue 15, item 1).

A real `pacslb run`; while an operator has a real server's form open in the WebUI, someone
edits the config file by hand. Save must not overwrite that edit: the page says the file was
edited by hand since the running revision and what to do (reload it or discard it), the file
keeps the edit, and after `pacslb reload` the same Save goes through beside it. Screenshot:
tests/browser/artifacts/edit-conflict.png."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, logged_in, shot
from tests.peers.procs import free_port, running

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.timeout(120),
]
WEB_HOST, VIP, PASSWORD = "127.10.9.20", "127.10.9.21", "edit conflict password"


def config_text(web: int, vip_port: int) -> str:
    return f"""# Radiology viewer (the operator's comments stay)
version: 1
node:
  webui: {{listen: "{WEB_HOST}:{web}"}}
virtual_services:
  - label: Viewer
    vip: {VIP}
    ports: [{vip_port}]
    mode: l7-tcp
    health_check: {{type: none}}
    real_servers:
      - {{label: Srv1, address: 127.10.9.22, port: 18081, weight: 100}}
"""


def test_save_after_a_hand_edit_shows_the_conflict(tmp_path: Path) -> None:
    web = free_port(WEB_HOST)
    config, state = tmp_path / "pacslb.yaml", tmp_path / "state"
    original = config_text(web, free_port(VIP))
    config.write_text(original)
    cli = [sys.executable, "-m", "pacslb.cli"]
    subprocess.run(
        [*cli, "passwd", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    with playwright.sync_playwright() as p, ExitStack() as stack:
        argv = [*cli, "run", str(config), "--state-dir", str(state)]
        stack.enter_context(running(argv, WEB_HOST, web, log=tmp_path / "run.log"))
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        stack.callback(browser.close)
        page = logged_in(browser, f"https://{WEB_HOST}:{web}", PASSWORD)

        page.goto("/services/Viewer/servers/Srv1")
        page.fill("#f-weight", "50")
        # Meanwhile, by hand: a second server, not reloaded yet.
        hand_edit = original + "      - {label: Srv2, address: 127.10.9.23, port: 18082}\n"
        config.write_text(hand_edit)
        page.click("#save")
        box = page.wait_for_selector("#edit-conflict")
        message = box.inner_text()
        assert "edited by hand since revision 1" in message, message
        assert str(config) in message and "pacslb reload" in message, message
        assert page.input_value("#f-weight") == "50"  # the operator's input is still there
        shot(page, "edit-conflict.png", tmp_path)
        assert config.read_text() == hand_edit

        reload = [*cli, "reload", "--state-dir", str(state)]
        subprocess.run(reload, check=True, timeout=30, capture_output=True)
        page.click("#save")
        page.wait_for_url("**/services/Viewer?done=saved*")
        text = config.read_text()
        assert "{label: Srv1, address: 127.10.9.22, port: 18081, weight: 50}" in text, text
        assert "{label: Srv2, address: 127.10.9.23, port: 18082}" in text, text
        assert text.startswith("# Radiology viewer (the operator's comments stay)\n"), text
