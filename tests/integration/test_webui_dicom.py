"""The WebUI on an l7-dicom service (a new user's trial): the service form offers every mode
and persistence of the config model, and a Save keeps every setting the form does not show.

The ControlProcess and its web app through Starlette's TestClient (tests/webapp.py); addresses
in 127.10.11.0/24. A form is submitted as a browser would: every field the page holds, with
the value it shows (the selected option of a select, the first when none is selected)."""

from __future__ import annotations

import datetime
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tests.webapp import login, web_client

from pacslb.config import Mode
from pacslb.control.app import ControlProcess
from pacslb.core.certs import self_signed
from pacslb.core.validate import dump_data

CONFIG = """version: 1
node:
  webui: {listen: "127.10.11.9:9443"}
virtual_services:
  - label: McK-Radiology_DICOM
    vip: 127.10.11.40
    ports: [104, 2762]
    mode: l7-dicom
    source: client
    persistence: {type: calling-ae, timeout: 7200}
    health_check: {type: dicom-echo, called_ae: ARCHIVE, interval: 30, timeout: 2}
    tls: {certificates: [{certificate: CERT, key: KEY}]}
    timeouts: {connect: 4.0, idle: 1800.0}
    dicom:
      routes:
        - {called_ae: ARCHIVE_A, real_servers: [Pacs1]}
        - {called_ae: ARCHIVE_B, real_servers: [Pacs2]}
      unknown_called_ae: any
      max_request: 65536
    real_servers:
      - {label: Pacs1, address: 127.10.11.13, port: 14000, ae_title: PACS_ONE, reencrypt: true}
      - {label: Pacs2, address: 127.10.11.14, port: 14000, weight: 50}
"""
SERVICE = "McK-Radiology_DICOM"


def dicom_config(tmp_path: Path) -> str:
    cert, key = self_signed("lb.test", datetime.datetime.now(datetime.UTC), ["lb.test"])
    (tmp_path / "lb.crt").write_bytes(cert)
    (tmp_path / "lb.key").write_bytes(key)
    return CONFIG.replace("CERT", str(tmp_path / "lb.crt")).replace("KEY", str(tmp_path / "lb.key"))


class FormReader(HTMLParser):
    """The fields one form (by id) submits: inputs' values, each select's selected option
    (or its first), as a browser sends them; also each select's options."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id, self.inside = form_id, False
        self.fields: dict[str, str] = {}
        self.options: dict[str, list[str]] = {}
        self.select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        elif not self.inside:
            return
        elif tag == "input" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self.select = a["name"]
            self.options[self.select] = []
        elif tag == "option" and self.select is not None:
            options = self.options[self.select]
            options.append(a["value"])
            if "selected" in a or len(options) == 1:  # the selected one, else the first
                self.fields[self.select] = a["value"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = None


def form_on(client: TestClient, url: str, form_id: str) -> FormReader:
    page = client.get(url)
    assert page.status_code == 200, page.text
    reader = FormReader(form_id)
    reader.feed(page.text)
    assert reader.fields, f"no form {form_id} on {url}"
    return reader


def service_data(process: ControlProcess) -> dict[str, Any]:
    data: dict[str, Any] = dump_data(process.config)["virtual_services"][0]
    return data


def test_the_form_offers_every_mode_and_persistence(tmp_path: Path) -> None:
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, _):
        login(client)
        for url in ("/services/new", f"/services/{SERVICE}"):
            form = form_on(client, url, "service-form")
            assert set(form.options["mode"]) == {m.value for m in Mode}, url
            assert set(form.options["persistence.type"]) == {
                "none",
                "source-ip",
                "http-cookie",
                "calling-ae",
            }, url
        form = form_on(client, f"/services/{SERVICE}", "service-form")
        assert form.fields["mode"] == "l7-dicom"
        assert form.fields["persistence.type"] == "calling-ae"
        assert form.fields["persistence.timeout"] == "7200"


def test_a_save_without_change_keeps_every_setting(tmp_path: Path) -> None:
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, process):
        login(client)
        before, revision = service_data(process), process.revision
        form = form_on(client, f"/services/{SERVICE}", "service-form")
        r = client.post(f"/services/{SERVICE}", data=form.fields, follow_redirects=False)
        assert r.status_code == 303, r.text
        assert "done=unchanged" in r.headers["location"]
        assert process.revision == revision and service_data(process) == before
        for server in ("Pacs1", "Pacs2"):
            form = form_on(client, f"/services/{SERVICE}/servers/{server}", "server-form")
            url = f"/services/{SERVICE}/servers/{server}"
            r = client.post(url, data=form.fields, follow_redirects=False)
            assert r.status_code == 303 and "done=unchanged" in r.headers["location"], r.text
        assert process.revision == revision and service_data(process) == before


def test_a_save_changes_only_the_field_changed(tmp_path: Path) -> None:
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, process):
        login(client)
        before = service_data(process)
        form = form_on(client, f"/services/{SERVICE}", "service-form")
        r = client.post(
            f"/services/{SERVICE}",
            data={**form.fields, "scheduler": "rr"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        assert service_data(process) == {**before, "scheduler": "rr"}
        before = service_data(process)
        form = form_on(client, f"/services/{SERVICE}/servers/Pacs1", "server-form")
        assert form.fields["ae_title"] == "PACS_ONE"
        url = f"/services/{SERVICE}/servers/Pacs1"
        r = client.post(url, data={**form.fields, "weight": "7"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        after = service_data(process)
        pacs1 = {**before["real_servers"][0], "weight": 7}
        assert after == {**before, "real_servers": [pacs1, before["real_servers"][1]]}


def test_an_ae_title_on_the_server_form(tmp_path: Path) -> None:
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, process):
        login(client)
        url = f"/services/{SERVICE}/servers/Pacs2"
        form = form_on(client, url, "server-form")
        assert form.fields["ae_title"] == ""
        page = client.post(url, data={**form.fields, "ae_title": "A" * 17})
        assert page.status_code == 422
        error = re.search(
            r'<p class="error" id="e-ae_title" data-field="ae_title">([^<]*)<', page.text
        )
        assert error is not None and "16" in error[1], page.text
        r = client.post(url, data={**form.fields, "ae_title": "PACS_TWO"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        assert process.config.virtual_services[0].real_servers[1].ae_title == "PACS_TWO"
        # a real server added to the service: the field is offered there too
        new = form_on(client, f"/services/{SERVICE}/servers/new", "server-form")
        assert "ae_title" in new.fields


def test_the_page_shows_the_dicom_settings(tmp_path: Path) -> None:
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, _):
        login(client)
        page = client.get(f"/services/{SERVICE}").text
        settings = re.search(r'<section id="dicom-settings">.*?</section>', page, re.S)
        assert settings is not None, page
        text = re.sub(r"<[^>]+>", " ", settings[0])
        text = re.sub(r"\s+", " ", text)
        assert "ARCHIVE_A Pacs1" in text and "ARCHIVE_B Pacs2" in text
        assert "Unknown called AE any" in text
        assert "Largest A-ASSOCIATE-RQ 65536 bytes" in text


def test_add_an_l7_dicom_service(tmp_path: Path) -> None:
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, process):
        login(client)
        form = form_on(client, "/services/new", "service-form")
        fields = {
            **form.fields,
            "label": "Dicom2",
            "vip": "127.10.11.41",
            "ports": "11112",
            "mode": "l7-dicom",
            "persistence.type": "calling-ae",
            "persistence.timeout": "600",
        }
        r = client.post("/services/new", data=fields, follow_redirects=False)
        assert r.status_code == 303, r.text
        svc = process.config.service("Dicom2")
        assert svc is not None and svc.mode is Mode.L7_DICOM
        assert svc.persistence.type == "calling-ae" and svc.persistence.timeout == 600


EMPTY = """version: 1
node:
  webui: {listen: "127.10.11.9:9443"}
virtual_services: []
"""


def test_no_empty_table_under_the_no_services_box(tmp_path: Path) -> None:
    table = re.compile(r'<table class="overview" id="overview"( hidden)?>')
    with web_client(tmp_path, EMPTY) as (client, _):
        login(client)
        page = client.get("/").text
        found = table.search(page)
        assert 'id="wizard-offer"' in page and found is not None and found[1] == " hidden"
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, _):
        login(client)
        found = table.search(client.get("/").text)
        assert found is not None and found[1] is None  # services: the table shows


def test_the_mode_is_one_unbreakable_word(tmp_path: Path) -> None:
    with web_client(tmp_path, dicom_config(tmp_path)) as (client, _):
        login(client)
        assert '<span class="mode">l7-dicom</span>' in client.get("/").text
        css = client.get("/static/app.css").text
        assert re.search(r"span\.mode[^{]*\{[^}]*white-space: nowrap", css)


def test_byte_counts_read_as_in_pacslb_status() -> None:
    """The DICOM figures' table (the service page's) writes bytes as `pacslb status` does."""
    from pacslb.control.status import byte_size
    from pacslb.control.webui import templates

    figures = {"assoc_active": 0, "associations": 3, "assoc_rejected": 0, "assoc_aborted": 0}
    figures |= {"pdata_pdus": 40, "bytes_in": 1_234_567, "bytes_out": 2_345, "mean_seconds": 1.0}
    macro = '{% from "_dicom.html" import dicom_table %}{{ dicom_table("t", rows) }}'
    html = templates.env.from_string(macro).render(rows=[("All", figures)])
    assert f"{byte_size(1_234_567)} / {byte_size(2_345)}" == "1.2 MB / 2.3 kB"
    assert '<td class="bytes">1.2 MB / 2.3 kB</td>' in html


def test_the_wizard_legend_claims_no_mode_the_select_may_change(tmp_path: Path) -> None:
    with web_client(tmp_path, EMPTY) as (client, _):
        login(client)
        for variant, mode in (("proxy", "l7-tcp"), ("nat-l7", "l4-nat"), ("dr", "l4-dr")):
            page = client.get(f"/wizard/addresses?variant={variant}").text
            legend = re.search(r'<fieldset id="service-dicom"><legend>([^<]*)</legend>', page)
            assert legend is not None, page
            assert "mode as chosen below" in legend[1] and mode not in legend[1], legend[1]
            assert 'name="dicom_mode"' in page  # the select that chooses it
            line = re.search(r'id="service-dicom">.*?<p class="meta">([^<]*)</p>', page, re.S)
            assert line is not None and f"{mode} (the variant" in line[1]
            assert "l7-dicom: the proxy reads the association, calling-ae" in line[1]
            # the other services' legends still say their mode
            web = re.search(r'<fieldset id="service-web"><legend>([^<]*)</legend>', page)
            assert web is not None and " · l" in web[1]


WEB = """version: 1
node:
  webui: {listen: "127.10.11.9:9443"}
virtual_services:
  - label: Web
    vip: 127.10.11.30
    ports: [8080]
    mode: l7-http
    persistence: {type: http-cookie, cookie: RADIOLOGY, max_age: 600}
    health_check:
      type: all
      interval: 10.0
      checks:
        - {type: http, path: /a, expect: OK}
        - {type: connect, port: 8443}
    passive: {consecutive_failures: 4}
    real_servers:
      - {label: Srv1, address: 127.10.11.11, port: 18081}
"""


def test_a_save_keeps_a_check_and_persistence_the_form_cannot_edit(tmp_path: Path) -> None:
    """An `all` check (its sub-checks) and cookie persistence (its cookie name): a Save that
    changes another field leaves them as they were."""
    with web_client(tmp_path, WEB) as (client, process):
        login(client)
        before, revision = service_data(process), process.revision
        form = form_on(client, "/services/Web", "service-form")
        assert form.fields["health_check.type"] == "all"
        r = client.post("/services/Web", data=form.fields, follow_redirects=False)
        assert r.status_code == 303 and "done=unchanged" in r.headers["location"], r.text
        assert process.revision == revision
        r = client.post("/services/Web", data={**form.fields, "scheduler": "lc"})
        assert r.status_code == 200 and process.revision == revision + 1
        assert service_data(process) == {**before, "scheduler": "lc"}
