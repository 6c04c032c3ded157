"""Drives the WebUI's HA page in headless Chromium from inside a network namespace (the test
process, in the root namespace, cannot reach 198.18.x): run as
`ip netns exec client python ha_webui_driver.py ACTION BASE_URL PASSWORD SHOT [ARGS...]`.

ACTION: `pair PEER TOKEN` (fills and submits the pair form), `overview` (reads the System
Overview's HA line), `takeover` (presses Take over). Prints one JSON document: what the page
said. A screenshot of the page goes to SHOT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from playwright.sync_api import sync_playwright

from tests.browser.chromium import ARGS, CHROMIUM, logged_in


def main(action: str, base: str, password: str, shot: str, *rest: str) -> dict[str, str]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = logged_in(browser, base, password)
            out: dict[str, str] = {}
            if action == "overview":
                out["ha_line"] = page.inner_text("#ha-line")
            else:
                page.goto("/ha")
                if action == "pair":
                    peer, token = rest
                    page.fill("#address", peer)
                    page.fill("#token", token)
                    page.click("#pair")
                elif action == "takeover":
                    page.click("#takeover")
                page.wait_for_selector("#ha-message, #ha-error")
                for selector in ("#ha-message", "#ha-error", "#ha-peer", "#ha-replication"):
                    if page.locator(selector).count():
                        out[selector] = page.inner_text(selector)
            page.screenshot(path=shot, full_page=True)
            return out
        finally:
            browser.close()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
