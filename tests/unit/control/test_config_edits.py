"""Config changes through the web app (no sockets): a hand edit refused on every WebUI path,
a change that changes nothing, an edit in place that cannot be made (issue 15, items 1-2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.webapp import CONFIG, headers, login, web_client

from pacslb.control.startup import BrokenFile


def csrf_of(client: TestClient) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert found is not None
    return found[1]


def test_every_webui_change_refuses_to_overwrite_a_hand_edit(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        login(client)
        csrf = csrf_of(client)
        form = {"csrf_token": csrf, "weight": "5"}
        r = client.post("/services/Web/servers/Srv2", data=form, follow_redirects=False)
        assert r.status_code == 303, r.text
        edited = process.config_path.read_text() + "# a note added by hand\n"
        process.config_path.write_text(edited)
        attempts = [
            ("/services/Web/servers/Srv1", {"weight": "7"}),  # a form Save
            ("/services/Web/servers/Srv1", {"delete": "1"}),  # Delete real server
            ("/services/DICOM/delete", {}),  # Delete virtual service
            ("/revisions/1/rollback", {}),  # Roll back
        ]
        for url, form in attempts:
            r = client.post(url, data={"csrf_token": csrf, **form})
            assert r.status_code == 409, (url, r.status_code, r.text[:300])
            assert 'id="edit-conflict"' in r.text and "edited by hand since revision 2" in r.text
        assert process.config_path.read_text() == edited
        assert [rev.number for rev in process.store.revisions()] == [1, 2]


def test_a_change_to_the_same_config_makes_no_revision(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        config = client.get("/api/v1/config").json()
        r = client.put("/api/v1/config", json=config, headers=h)
        assert r.status_code == 200 and r.json()["changed"] is False, r.text
        r = client.post("/api/v1/config/rollback/1", headers=h)
        assert r.status_code == 200 and r.json()["changed"] is False, r.text
        assert [rev.number for rev in process.store.revisions()] == [1]
        assert process.config_path.read_text() == CONFIG


ANCHORED = CONFIG.replace(
    "    health_check: {type: none}\n    real_servers:\n      - {label: Srv1",
    "    health_check: &shared {type: connect, interval: 5}\n    real_servers:\n"
    "      - {label: Srv1",
).replace(
    "    health_check: {type: none}\n    real_servers:\n      - {label: Pacs1",
    "    health_check: *shared\n    real_servers:\n      - {label: Pacs1",
)


def test_an_edit_that_cannot_be_made_in_place_rewrites_the_file_and_says_so(
    tmp_path: Path,
) -> None:
    """Two services share a check through a YAML anchor: changing one would change both."""
    assert "*shared" in ANCHORED
    with web_client(tmp_path, ANCHORED.replace("ports: [4000, 5000]", "ports: [4000]")) as (
        client,
        process,
    ):
        h = headers(login(client))
        service = client.get("/api/v1/virtual_services/Web").json()
        service["health_check"]["interval"] = 9
        r = client.put("/api/v1/virtual_services/Web", json=service, headers=h)
        assert r.status_code == 200 and r.json()["revision"] == 2, r.text
        intervals = [vs.health_check.interval for vs in process.config.virtual_services]  # type: ignore[union-attr]
        assert intervals == [9, 5]
        assert process.store.text(2) == process.config_path.read_text()
        events = client.get("/api/v1/events", params={"kind": "config"}).json()
        assert any("layout could not be kept" in e["message"] for e in events)


def test_a_file_with_windows_line_endings_takes_changes_and_keeps_them(tmp_path: Path) -> None:
    """An editor on Windows saves CRLF: the file still holds the running config (as read, line
    endings aside), so a change goes in, and the file keeps its CRLF. (Compared byte for byte,
    every change was refused as a hand edit, and a reload did not help.)"""
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        process.config_path.write_bytes(CONFIG.replace("\n", "\r\n").encode())
        body = client.get("/api/v1/virtual_services/Web/real_servers/Srv2").json()
        r = client.put(
            "/api/v1/virtual_services/Web/real_servers/Srv2", json={**body, "weight": 7}, headers=h
        )
        assert r.status_code == 200 and r.json()["revision"] == 2, r.text
        raw = process.config_path.read_bytes()
        assert raw.count(b"\r\n") == raw.count(b"\n"), raw  # every line still ends in CRLF
        assert raw.decode().replace("\r\n", "\n") == process.store.text(2)
        assert "port: 18082, weight: 7}" in process.store.text(2)


def test_a_file_that_is_not_utf8_is_a_hand_edit(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        edited = CONFIG.encode() + b"# caf\xe9 (latin-1)\n"
        process.config_path.write_bytes(edited)
        body = client.get("/api/v1/virtual_services/Web/real_servers/Srv2").json()
        r = client.put(
            "/api/v1/virtual_services/Web/real_servers/Srv2", json={**body, "weight": 7}, headers=h
        )
        assert r.status_code == 409 and "edited by hand" in r.json()["detail"], r.text
        assert process.config_path.read_bytes() == edited


def test_a_server_renamed_to_a_yaml_1_1_boolean_word_is_saved_as_text(tmp_path: Path) -> None:
    """`On` is text in YAML 1.2 (ruamel.yaml writes it bare) but true in YAML 1.1 (PyYAML
    reads the file): the WebUI's rename once answered 422 `label: must be text (got True)`."""
    with web_client(tmp_path) as (client, process):
        login(client)
        form = {"csrf_token": csrf_of(client), "label": "On"}
        r = client.post("/services/Web/servers/Srv2", data=form, follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        labels = [rs.label for rs in process.config.virtual_services[0].real_servers]
        assert labels == ["Srv1", "On"]
        assert "label: 'On'" in process.config_path.read_text()


def test_an_edit_in_place_that_does_not_load_falls_back_to_a_full_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net under the edit in place: whatever it writes must load and hold the new
    config, else the file is written out whole (and an event says the layout was lost)."""
    import pacslb.control.app as app_module

    def broken_edit(text: str, old: object, new: object) -> str:  # a ruamel.yaml surprise
        return text.replace("label: Srv2", "label: On")

    monkeypatch.setattr(app_module, "edit_text", broken_edit)
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        body = client.get("/api/v1/virtual_services/Web/real_servers/Srv2").json()
        r = client.put(
            "/api/v1/virtual_services/Web/real_servers/Srv2", json={**body, "weight": 7}, headers=h
        )
        assert r.status_code == 200 and r.json()["revision"] == 2, r.text
        assert process.store.text(2) == process.config_path.read_text()
        assert process.config.virtual_services[0].real_servers[1].weight == 7
        events = client.get("/api/v1/events", params={"kind": "config"}).json()
        assert any("layout could not be kept" in e["message"] for e in events), events


def test_a_refused_change_does_not_say_the_layout_was_lost(tmp_path: Path) -> None:
    """The layout event is for a file that was rewritten: a change refused (here: the file was
    edited by hand) wrote nothing, so nothing was lost."""
    with web_client(tmp_path, ANCHORED.replace("ports: [4000, 5000]", "ports: [4000]")) as (
        client,
        process,
    ):
        h = headers(login(client))
        process.config_path.write_text(process.config_path.read_text() + "# by hand\n")
        service = client.get("/api/v1/virtual_services/Web").json()
        service["health_check"]["interval"] = 9
        r = client.put("/api/v1/virtual_services/Web", json=service, headers=h)
        assert r.status_code == 409, r.text
        events = client.get("/api/v1/events", params={"kind": "config"}).json()
        assert any("change refused" in e["message"] for e in events), events
        assert not any("layout could not be kept" in e["message"] for e in events), events


def test_nothing_changed_is_said_so_by_the_api_and_the_webui(tmp_path: Path) -> None:
    """A rollback to the revision in force and a Save of the form as shown change nothing: the
    API answers applied false, the WebUI says "nothing changed" (not "Saved ...")."""
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        r = client.post("/api/v1/config/rollback/1", headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["changed"] is False and r.json()["applied"] is False, r.text
        weight = process.config.virtual_services[0].real_servers[1].weight
        form = {"csrf_token": csrf_of(client), "weight": str(weight)}
        for url, data in [("/services/Web/servers/Srv2", form), ("/revisions/1/rollback", {})]:
            r = client.post(url, data={**form, **data}, follow_redirects=False)
            assert r.status_code == 303 and "done=unchanged" in r.headers["location"], url
            shown = client.get(r.headers["location"]).text
            assert "Nothing changed: revision 1 is in force." in shown, url
            assert "Saved" not in shown and "Rolled back" not in shown, url
        assert [rev.number for rev in process.store.revisions()] == [1]


def test_a_change_while_the_broken_file_is_in_use_names_the_broken_file(tmp_path: Path) -> None:
    """Started from the last good revision because the file is broken: a change is refused (it
    would overwrite the operator's file), and the refusal says the file is the broken one, to
    be fixed and reloaded, not "edited by hand"."""
    path = tmp_path / "pacslb.yaml"
    broken = BrokenFile(path, ("Web › ports: must be ...",), 1)
    with web_client(tmp_path, broken_file=broken) as (client, process):
        h = headers(login(client))
        path.write_text(CONFIG.replace("ports: [8080]", "ports: [80800]"))
        assert process.degraded()
        body = client.get("/api/v1/virtual_services/Web/real_servers/Srv2").json()
        r = client.put(
            "/api/v1/virtual_services/Web/real_servers/Srv2", json={**body, "weight": 7}, headers=h
        )
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "edited by hand" not in detail, detail
        assert f"the config file {path} could not be used at start" in detail, detail
        assert "revision 1, the last good one, is running" in detail, detail
        assert "fix the file and reload it (pacslb reload --state-dir" in detail, detail
        assert "discard it (pacslb config show 1 --state-dir" in detail, detail
        assert "80800" in path.read_text()
        login(client)
        form = {"csrf_token": csrf_of(client), "weight": "7"}
        r = client.post("/services/Web/servers/Srv2", data=form)
        assert r.status_code == 409 and 'id="edit-conflict"' in r.text, r.text[:500]
        assert "the last good revision is running" in r.text and "by hand" not in r.text
