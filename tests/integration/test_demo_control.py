"""The demo's failure control outside a demo: `pacslb run` has no demo servers, so the API and
the WebUI say so (404) and the System Overview shows no Fail buttons; a read-only user may not
fail anything anyway (403). The demo itself: test_demo_fail.py (root) and the browser test."""

from __future__ import annotations

from pathlib import Path

from tests.webapp import READONLY_PASSWORD, headers, login, web_client


def test_a_plain_run_has_no_demo_control(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, _process):
        csrf = login(client)
        r = client.get("/api/v1/demo")
        assert r.status_code == 404 and "not a demo" in r.text, r.text
        r = client.post("/api/v1/demo/servers/Pacs1/fail", headers=headers(csrf))
        assert r.status_code == 404 and "not a demo" in r.text, r.text
        form = {"csrf_token": csrf, "server": "Pacs1", "action": "fail"}
        assert client.post("/demo", data=form, follow_redirects=False).status_code == 404
        page = client.get("/").text
        assert "demo-form" not in page and "demo-note" not in page

        client.cookies.clear()
        csrf = login(client, "viewer", READONLY_PASSWORD)
        r = client.post("/api/v1/demo/servers/Pacs1/fail", headers=headers(csrf))
        assert r.status_code == 403, r.text
