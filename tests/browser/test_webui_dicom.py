"""An l7-dicom service in the WebUI, in headless Chromium (a new user's trial): a real
`pacslb run` on 127.10.11.0/24 with an l7-dicom service (calling-AE persistence, routes by
called AE, a real server's AE title, source: client kept as written) in front of dcmtk's
storescp; storescu sends a CT series through it. The service page shows the DICOM settings and
byte counts as `pacslb status` writes them; Save without a change makes no revision (the
form holds the service's own mode and persistence); the Overview's Mode cell is one line even
in a narrow window. Screenshots: tests/browser/artifacts/webui-dicom-*.png."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, TIMEOUT_MS, logged_in, shot
from tests.integration.test_dicom_tls import ct_series
from tests.peers.procs import free_port, running, wait_until

playwright = pytest.importorskip("playwright.sync_api")
STORESCP, STORESCU = Path("/usr/bin/storescp"), Path("/usr/bin/storescu")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not STORESCP.exists(), reason="dcmtk is not installed"),
]
NET = "127.10.11"
WEB_HOST, VIP, ARCHIVE = f"{NET}.8", f"{NET}.40", f"{NET}.23"
PASSWORD = "browser dicom password"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise


class Node:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.state = tmp, tmp / "state"
        self.web, self.port, self.archive = free_port(WEB_HOST), free_port(VIP), free_port(ARCHIVE)
        self.config = tmp / "pacslb.yaml"
        service = {
            "label": "McK-Radiology_DICOM",
            "vip": VIP,
            "ports": [self.port],
            "mode": "l7-dicom",
            "persistence": {"type": "calling-ae", "timeout": 3600},
            "health_check": {"type": "none"},  # a probe would be an association on storescp
            "timeouts": {"connect": 4.0},
            "dicom": {
                "routes": [{"called_ae": "ARCHIVE", "real_servers": ["Pacs1"]}],
                "max_request": 65536,
            },
            "real_servers": [
                {"label": "Pacs1", "address": ARCHIVE, "port": self.archive, "ae_title": "PACS1"},
            ],
        }
        config = {
            "version": 1,
            "node": {"proxy": {"workers": 1}, "webui": {"listen": f"{WEB_HOST}:{self.web}"}},
            "virtual_services": [service],
        }
        self.config.write_text(json.dumps(config))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(self.state)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def ready(self) -> bool:
        result = self.cli("status", "--json")
        return result.returncode == 0 and bool(json.loads(result.stdout)["ready"])

    def service(self) -> dict[str, Any]:
        (svc,) = json.loads(self.cli("status", "--json").stdout)["services"]
        return svc  # type: ignore[no-any-return]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    passwd = [sys.executable, "-m", "pacslb.cli", "passwd", "--password-stdin"]
    subprocess.run(
        [*passwd, "--state-dir", str(n.state)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        timeout=30,
    )
    rx = tmp_path / "rx"
    rx.mkdir()
    with ExitStack() as stack:
        archive = [str(STORESCP), "-aet", "PACS1", "+B", "-od", str(rx), str(n.archive)]
        stack.enter_context(running(archive, ARCHIVE, n.archive, env=DCMTK_ENV))
        argv = [sys.executable, "-m", "pacslb.cli", "run", str(n.config)]
        argv += ["--state-dir", str(n.state)]
        stack.enter_context(running(argv, WEB_HOST, n.web, log=tmp_path / "run.log"))
        wait_until(n.ready, 30, "pacslb ready (the proxy listening on the VIP)")
        yield n


def test_an_l7_dicom_service_in_the_webui(node: Node, tmp_path: Path) -> None:
    ct_series(tmp_path / "ct", 12)
    files = sorted(str(p) for p in (tmp_path / "ct").iterdir())
    argv = [str(STORESCU), "-aet", "MOD_A", "-aec", "ARCHIVE", VIP, str(node.port), *files]
    sent = subprocess.run(argv, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: node.service()["dicom"]["total"]["associations"] >= 1, 10, "the figures")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = logged_in(browser, f"https://{WEB_HOST}:{node.web}", PASSWORD)
            page.set_viewport_size({"width": 900, "height": 700})  # a narrow window
            page.reload()
            shot(page, "webui-dicom-overview.png", tmp_path)
            mode = page.locator("tbody.service tr.vip span.mode")
            assert mode.inner_text() == "l7-dicom"
            lines = mode.evaluate("e => e.getClientRects().length")
            assert lines == 1, "the mode wraps"

            page.goto("/services/McK-Radiology_DICOM")
            assert page.locator("#f-mode").input_value() == "l7-dicom"
            assert page.locator("#f-persistence\\.type").input_value() == "calling-ae"
            settings = page.locator("#dicom-settings").inner_text()
            assert "ARCHIVE" in settings and "Pacs1" in settings and "65536" in settings
            cell = page.locator("#dicom-servers tr[data-row='Pacs1'] td.bytes").inner_text()
            assert re.fullmatch(r"\d+(\.\d)? (kB|MB) / \d+(\.\d)? (B|kB)", cell), cell
            page.set_viewport_size({"width": 1280, "height": 700})
            shot(page, "webui-dicom-service.png", tmp_path)

            revision = json.loads(node.cli("status", "--json").stdout)["revision"]
            page.click("#save")  # nothing changed: nothing applied
            page.wait_for_selector("#notice:not([hidden])", timeout=TIMEOUT_MS)
            assert "Nothing changed" in page.locator("#notice").inner_text()
            assert json.loads(node.cli("status", "--json").stdout)["revision"] == revision

            page.goto("/services/McK-Radiology_DICOM/servers/Pacs1")
            assert page.locator("#f-ae_title").input_value() == "PACS1"
            page.fill("#f-ae_title", "A" * 17)
            page.click("#save")
            error = page.locator("#e-ae_title").inner_text()
            assert "16" in error, error
            shot(page, "webui-dicom-server.png", tmp_path)
        finally:
            browser.close()
    text = node.config.read_text()  # the file as written: nothing of the failed save in it
    assert "A" * 17 not in text and "PACS1" in text
