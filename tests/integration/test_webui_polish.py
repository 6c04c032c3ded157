"""The WebUI as a new user met it (issue 15's trial), checked in the HTML it serves.

The ControlProcess and its web app through Starlette's TestClient (tests/webapp.py); addresses
in 127.10.11.0/24. Each test names the item of the trial it covers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tests.webapp import headers, login, web_client

from pacslb.control.app import ControlProcess
from pacslb.engines.kernel import KernelEngine

CONFIG = """version: 1
node:
  webui: {listen: "127.10.11.9:9443"}
virtual_services:
  - label: Web
    vip: 127.10.11.30
    ports: [8080]
    mode: l7-http
    health_check: {type: none}
    real_servers:
      - {label: Srv1, address: 127.10.11.11, port: 18081}
      - {label: Srv2, address: 127.10.11.12, port: 18082}
  - label: DICOM
    vip: 127.10.11.31
    ports: [4000]
    mode: l7-tcp
    health_check: {type: dicom-echo, called_ae: ARCHIVE, interval: 30, timeout: 2}
    real_servers:
      - {label: Pacs1, address: 127.10.11.13, port: 14000}
"""
DATE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def csrf_of(client: TestClient) -> str:
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert token is not None
    return token[1]


def row(html: str, server: str) -> str:
    found = re.search(rf'<tr class="rip" data-server="{server}">.*?</tr>', html, re.S)
    assert found is not None, server
    return found[0]


def visible_actions(html: str, server: str) -> set[str]:
    forms = re.findall(r'<form [^>]*data-action="(\w+)"([^>]*)>', row(html, server))
    return {action for action, rest in forms if "hidden" not in rest}


class NoTables:
    """The nftables runner of a host where pacslb left no tables (the kernel engine's own
    code runs; only nft itself is not asked, as in tests/unit/engines)."""

    def run(self, script: str) -> str:
        raise AssertionError(f"no nftables script expected without Layer 4 services: {script}")

    def json(self, command: str) -> Any:
        return {"nftables": []}


def add_kernel_engine(client: TestClient, process: ControlProcess, state: Path) -> None:
    process.engines.append(KernelEngine(state, nft_runner=NoTables()))  # type: ignore[arg-type]
    portal: Any = client.portal
    portal.call(process.publish, True)  # forced: the new engine takes the current Plan


def test_a_state_word_stands_beside_each_colour(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, _):
        login(client)
        html = client.get("/").text
        words = re.findall(r'<span class="([^"]+)" data-role="colour-text">([^<]*)</span>', html)
        assert len(words) == 5  # 2 VIPs, 3 real servers
        assert all(cls == "state" for cls, _ in words), words  # shown, not screen-reader only
        assert ("state", "up") in words and ("state", "not checked") in words  # Pacs1: unchecked


def test_buttons_match_the_admin_state(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, _):
        h = headers(login(client))
        url = "/api/v1/virtual_services/Web/real_servers"
        assert client.post(f"{url}/Srv1/drain", headers=h).status_code == 200
        assert client.post(f"{url}/Srv2/halt", headers=h).status_code == 200
        html = client.get("/").text
        assert visible_actions(html, "Srv1") == {"halt", "online"}  # no Drain on a drained one
        assert visible_actions(html, "Srv2") == {"drain", "online"}
        assert visible_actions(html, "Pacs1") == {"drain", "halt"}


def test_a_confirmation_after_save_drain_halt_online(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, process):
        login(client)
        csrf = csrf_of(client)
        assert 'id="notice" hidden' in client.get("/").text  # nothing done yet, nothing said
        for action, said in (
            ("drain", "Srv1 of Web is draining"),
            ("halt", "Srv1 of Web is halted"),
            ("online", "Srv1 of Web is online"),
        ):
            form = {"csrf_token": csrf, "service": "Web", "server": "Srv1", "action": action}
            page = client.post("/admin-state", data=form)
            assert page.status_code == 200 and said in page.text, action
        form = {
            "csrf_token": csrf,
            "label": "Web",
            "vip": "127.10.11.30",
            "ports": "8080",
            "mode": "l7-http",
            "persistence.type": "none",
            "health_check.type": "none",
        }
        page = client.post("/services/Web", data={**form, "scheduler": "rr"})
        assert f"Saved Web: revision {process.revision} is in force." in page.text
        server = {"csrf_token": csrf, "label": "Srv2", "address": "127.10.11.12", "weight": "7"}
        page = client.post("/services/Web/servers/Srv2", data=server)
        assert "Saved Srv2 of Web: revision" in page.text
        # A made-up notice in a link says nothing: only the fixed sentences exist.
        assert 'id="notice" hidden' in client.get("/?done=<b>hacked</b>").text


def test_the_navigation_tab_while_editing(tmp_path: Path) -> None:
    current = re.compile(r'<a href="([^"]+)" aria-current="page">')
    with web_client(tmp_path, CONFIG) as (client, _):
        login(client)
        for url in ("/services/Web", "/services/Web/servers/Srv1", "/services/Web/servers/new"):
            assert current.findall(client.get(url).text) == ["/"], url  # System Overview
        assert current.findall(client.get("/services/new").text) == ["/services/new"]


def test_times_are_dates(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, process):
        h = headers(login(client))
        add_kernel_engine(client, process, tmp_path / "state")
        engines = client.get("/config").text
        applied = re.search(r'<td class="ts">([^<]*)</td>', engines)
        assert applied is not None and re.fullmatch(DATE, applied[1]), applied
        assert client.post("/api/v1/tokens", json={"name": "ci"}, headers=h).status_code == 201
        assert re.search(
            rf"<td>ci</td><td>readonly</td><td>{DATE}</td>", client.get("/tokens").text
        )
        assert re.search(rf'<td class="ts">{DATE}</td>', client.get("/logs").text)
        assert re.search(rf"<td>{DATE}</td>", client.get("/revisions").text)


def test_no_empty_ruleset_box_without_layer4_services(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, process):
        login(client)
        add_kernel_engine(client, process, tmp_path / "state")
        page = client.get("/config").text
        assert "rendered ruleset" not in page and 'class="code ruleset"' not in page
        assert "<td>kernel</td>" in page  # the engine itself is still listed


def test_a_favicon(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, _):
        icon = client.get("/favicon.ico")  # before any login: browsers ask for it first
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert icon.text.startswith("<svg")
        assert '<link rel="icon" href="/favicon.ico"' in client.get("/login").text
        login(client)
        assert '<link rel="icon" href="/favicon.ico"' in client.get("/").text


def test_ae_title_fields_when_the_check_is_dicom_echo(tmp_path: Path) -> None:
    field = re.compile(r'<div data-check="dicom-echo"( hidden)?>\s*<div class="field">')
    with web_client(tmp_path, CONFIG) as (client, process):
        login(client)
        csrf = csrf_of(client)
        page = client.get("/services/DICOM").text
        shown = field.search(page)
        assert shown is not None and shown[1] is None  # there and not hidden
        assert re.search(r'id="f-health_check.called_ae"[^>]*value="ARCHIVE"', page)
        assert 'id="f-health_check.calling_ae"' in page
        hidden = field.search(client.get("/services/Web").text)
        assert hidden is not None and hidden[1] == " hidden"  # an http service: not shown
        form = {
            "csrf_token": csrf,
            "label": "DICOM",
            "vip": "127.10.11.31",
            "ports": "4000",
            "mode": "l7-tcp",
            "persistence.type": "none",
            "health_check.type": "dicom-echo",
            "health_check.called_ae": "1234",
            "health_check.calling_ae": "LB_CHECK",
            "health_check.interval": "30",
            "health_check.timeout": "2",
        }
        r = client.post("/services/DICOM", data=form, follow_redirects=False)
        assert r.status_code == 303, r.text
        check: Any = process.config.service("DICOM").health_check  # type: ignore[union-attr]
        assert (check.called_ae, check.calling_ae) == ("1234", "LB_CHECK")  # text, not 1234


def test_the_log_is_paged(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, process):
        login(client)
        for i in range(250):
            process._record("webui", f"marker {i:03d}")
        first = client.get("/logs?kind=webui").text
        assert first.count("marker ") == 100 and "marker 249" in first  # newest first
        older = re.search(r'<a href="([^"]+)" rel="next" id="log-older">', first)
        assert older is not None and "Events 1–100 of 250" in first
        second = client.get(older[1].replace("&amp;", "&")).text
        assert "marker 149" in second and "marker 150" not in second
        assert 'id="log-newer"' in second
        last = client.get("/logs?kind=webui&page=3").text
        assert last.count("marker ") == 50 and "marker 000" in last
        assert 'id="log-older"' not in last


def test_each_vip_and_real_server_interface_on_the_service_page(tmp_path: Path) -> None:
    with web_client(tmp_path, CONFIG) as (client, _):
        login(client)
        page = client.get("/services/Web").text
        vip = re.search(r'<p id="vip-interface">([^<]*)</p>', page)
        assert vip is not None and "127.10.11.30: on lo" in vip[1]  # loopback: this host's own
        cells = re.findall(r'<td class="interface">([^<]*)</td>', page)
        assert len(cells) == 2 and all(c.startswith("on lo") for c in cells), cells
