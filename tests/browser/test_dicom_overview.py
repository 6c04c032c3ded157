"""The System Overview's DICOM figures in headless Chromium: a real `pacslb run` with an l7-dicom
service (plaintext and DICOM TLS ports) in front of dcmtk's storescp; an association held open
through the TLS port shows on its server live (app.js), Drain turns it into "1 assoc held", the
client's A-RELEASE frees the server. Screenshot: tests/browser/artifacts/overview-dicom-drain.png.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from pacslb.core import dicom
from tests.browser.chromium import ARGS, CHROMIUM, TIMEOUT_MS, logged_in, row, shot
from tests.integration.test_dicom_metrics import VIP, Node, open_association
from tests.integration.test_dicom_tls import storescp

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not Path("/usr/bin/storescp").exists(), reason="dcmtk is not installed"),
]
PASSWORD = "browser test password"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    rx = tmp_path / "rx"
    rx.mkdir()
    with ExitStack() as stack:
        port = stack.enter_context(storescp(rx, "PACS1"))
        n = Node(tmp_path, port)
        passwd = [sys.executable, "-m", "pacslb.cli", "passwd", "--password-stdin"]
        subprocess.run(
            [*passwd, "--state-dir", str(n.state)],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            timeout=30,
        )
        n.start(stack)
        yield n


def wait_text(page: Any, selector: str, text: str) -> None:
    page.wait_for_function(
        "([s, t]) => document.querySelector(s)?.textContent.trim() === t",
        arg=[selector, text],
        timeout=TIMEOUT_MS,
    )


def test_overview_shows_the_associations_a_drained_server_holds(node: Node, tmp_path: Path) -> None:
    assoc = "tr.rip[data-server='Pacs1'] [data-role=assoc]"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = logged_in(browser, f"https://{VIP}:{node.web}", PASSWORD)
            wait_text(page, assoc, "0 assoc")
            held = open_association(node, tls=True)
            try:
                wait_text(page, assoc, "1 assoc")  # live, without a reload
                row(page, "Pacs1").locator("button.btn-drain").click()
                wait_text(page, assoc, "1 assoc held")
                vip = "tbody.service[data-service='Archive'] tr.vip [data-role=assoc]"
                wait_text(page, vip, "1 assoc · 1 opened · 0 rejected · 0 aborted")
                shot(page, "overview-dicom-drain.png", tmp_path)
                held.sendall(dicom.release_rq())
                assert held.recv(10)[:1] == b"\x06"  # A-RELEASE-RP
            finally:
                held.close()
            wait_text(page, assoc, "0 assoc held")  # the drained server is free
        finally:
            browser.close()
