"""Who may run the first-run wizard, and where it refuses (control/wizard.py), through the web
app (tests/webapp.py): admins only, with the session's CSRF token; on the passive node of an
HA pair the apply is refused whole, as every other change there. Addresses in 127.10.3.0/24.
The wizard itself, page by page in Chromium, is tests/browser/test_wizard.py."""

from __future__ import annotations

import html
import re
from pathlib import Path

from fastapi.testclient import TestClient
from tests.unit.control.test_replica_guard import paired
from tests.webapp import READONLY_PASSWORD, login, web_client

from pacslb.core import wizard as w
from pacslb.core.ha_role import Role
from pacslb.profiles import mckesson

NET = "127.10.3"
EMPTY = f"""version: 1
node:
  webui: {{listen: "{NET}.2:9443"}}
  ha: {{enabled: false, interface: eth0, peers: [198.18.0.2], secret: "a shared secret, 16+"}}
virtual_services: []
"""


def csrf_of(client: TestClient) -> str:
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert token is not None
    return token[1]


def addresses() -> dict[str, str]:
    out = {"variant": "proxy"}
    for n, key in enumerate(mckesson.SERVICE_KEYS):
        out[w.vip_field(key)] = f"{NET}.{30 + n}"
        out[w.rip_field(key, 1)] = f"{NET}.{100 + n}"
    return out


def test_only_an_admin_with_the_forms_token_runs_it(tmp_path: Path) -> None:
    with web_client(tmp_path, EMPTY) as (client, process):
        login(client, "viewer", READONLY_PASSWORD)
        overview = client.get("/").text
        assert "An admin can set up a ready deployment" in overview
        assert 'href="/wizard"' not in overview
        assert client.get("/wizard").status_code == 403
        form = addresses() | {"csrf_token": csrf_of(client)}
        assert client.post("/wizard/apply", data=form).status_code == 403

        login(client)
        assert 'href="/wizard"' in client.get("/").text
        page = client.get("/wizard")
        assert page.status_code == 200 and 'value="nat-l7"' in page.text
        refused = client.post("/wizard/apply", data=addresses())  # no CSRF token
        assert refused.status_code == 403
        empty = client.get("/wizard/addresses?variant=empty", follow_redirects=False)
        assert empty.status_code == 303 and empty.headers["location"] == "/services/new"
        assert process.revision == 1 and not process.config.virtual_services

        done = client.post(
            "/wizard/apply", data=addresses() | {"csrf_token": csrf_of(client)},
            follow_redirects=False,
        )  # fmt: skip
        assert done.status_code == 303 and done.headers["location"].startswith("/?done=added")
        assert process.revision == 2 and len(process.config.virtual_services) == 5
        assert 'id="wizard-offer"' not in client.get("/").text  # a node with services


def test_the_passive_node_of_a_pair_refuses_the_apply(tmp_path: Path) -> None:
    with web_client(tmp_path, EMPTY) as (client, process):
        process.ha.set(Role.PASSIVE)
        paired(process)
        login(client)
        notes = client.get("/wizard").text
        assert "This node refuses changes now: this node is the passive node of an HA pair" in notes
        form = addresses() | {"csrf_token": csrf_of(client)}
        review = client.post("/wizard/review", data=form)
        assert review.status_code == 200
        assert re.search(r'<button type="submit" id="wizard-apply" disabled', review.text)
        refused = client.post("/wizard/apply", data=form)  # as a script could send it
        assert refused.status_code == 409
        assert "make changes on the active node 127.10.2.9" in refused.text
        assert 'id="wizard-refused"' in refused.text
        assert process.revision == 1 and not process.config.virtual_services
        assert (tmp_path / "pacslb.yaml").read_text() == EMPTY


def test_the_review_shows_the_file_exactly_as_the_apply_writes_it(tmp_path: Path) -> None:
    """The review page's config file (ControlProcess.preview_text) is the file after the
    apply, comments and all: what the operator read is what went live."""
    commented = "# the site's own note, kept by every edit\n" + EMPTY
    with web_client(tmp_path, commented) as (client, _):
        login(client)
        form = addresses() | {"csrf_token": csrf_of(client)}
        review = client.post("/wizard/review", data=form)
        assert review.status_code == 200
        shown = re.search(r'<pre class="code" id="wizard-yaml">(.*?)</pre>', review.text, re.S)
        assert shown is not None
        done = client.post("/wizard/apply", data=form, follow_redirects=False)
        assert done.status_code == 303
        written = (tmp_path / "pacslb.yaml").read_text()
        assert html.unescape(shown[1]) == written
        assert written.startswith("# the site's own note") and "McK-Cardiology" in written


def test_the_installed_files_header_stays_true_after_the_wizard(tmp_path: Path) -> None:
    """The package's config (`pacslb profile empty`) is edited in place, its comments kept:
    its first line must not go on saying there are no virtual services."""
    from pacslb.profiles import empty

    with web_client(tmp_path, empty.render(None, "127.10.6.2:9443")) as (client, process):
        login(client)
        form = addresses() | {"csrf_token": csrf_of(client)}
        assert client.post("/wizard/apply", data=form, follow_redirects=False).status_code == 303
        assert len(process.config.virtual_services) == 5
        written = (tmp_path / "pacslb.yaml").read_text()
    assert written.startswith("# pacslb configuration"), written
    assert "no virtual services" not in written, written
