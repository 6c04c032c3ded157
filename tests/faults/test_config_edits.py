"""The config file and the revisions never disagree silently (issue 15, items 1 and 2).

A real `pacslb run`; the operator's file is a profile with comments, flow-style lists and
explicit defaults. Fault: the operator edits the running file by hand (and `pacslb reload`
refuses the edit); the next API change must not overwrite it. An API change is written into
the file's own text; a Save that changes nothing makes no revision."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.faults.control_run import Pacslb
from tests.peers.procs import free_port

pytestmark = pytest.mark.timeout(120)

WEB_HOST = "127.10.9.1"
VIP = "127.10.9.10"


def profile(web_port: int, vip_port: int) -> str:
    return f"""# Radiology web viewer: written by hand, kept by pacslb (issue 15)
version: 1
node:
  webui: {{listen: "{WEB_HOST}:{web_port}"}}  # loopback only in tests
virtual_services:
  # The viewer; both servers sit in rack A
  - label: Viewer
    vip: {VIP}
    ports: [{vip_port}]   # the one port the viewer uses
    mode: l7-tcp
    scheduler: wlc
    health_check: {{type: none}}
    real_servers:
      - {{label: Srv1, address: 127.10.9.2, port: 18081, weight: 100}}  # first
      - {{label: Srv2, address: 127.10.9.3, port: 18082, weight: 100}}  # second
"""


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[tuple[Pacslb, str]]:
    config = tmp_path / "pacslb.yaml"
    web_port = free_port(WEB_HOST)
    text = profile(web_port, free_port(VIP))
    config.write_text(text)
    with ExitStack() as stack:
        run = Pacslb(config, tmp_path / "state", (WEB_HOST, web_port), tmp_path / "run.log")
        run.start(stack)
        yield run, text
        run.stop()


def form_fields(html: str, form_id: str) -> dict[str, str]:
    """What a browser would send for the form `form_id` as the page shows it."""

    class Form(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.inside, self.select, self.fields = False, "", {}

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = {k: v or "" for k, v in attrs}
            if tag == "form":
                self.inside = a.get("id") == form_id
            elif self.inside and tag == "input" and "name" in a:
                self.fields[a["name"]] = a.get("value", "")
            elif self.inside and tag == "select":
                self.select = a["name"]
            elif self.inside and tag == "option" and "selected" in a:
                self.fields[self.select] = a["value"]

        def handle_endtag(self, tag: str) -> None:
            if tag == "form":
                self.inside = False

    parser = Form()
    parser.feed(html)
    fields: dict[str, str] = parser.fields
    return fields


def revisions(run: Pacslb) -> list[int]:
    r = run.api("GET", "/config/revisions")
    assert r.status_code == 200, r.text
    return [rev["number"] for rev in r.json()]


NEW_SERVER = {"label": "Srv3", "address": "127.10.9.4", "port": 18083}


def test_a_hand_edit_is_never_overwritten_by_an_api_change(lb: tuple[Pacslb, str]) -> None:
    run, original = lb
    # The operator adds a server by hand, with a mistake; reload refuses it (as it should).
    edited = original.replace(
        "  # second\n", "  # second\n      - {label: Srv4, address: 127.10.9.5, prot: 18084}\n"
    )
    run.config.write_text(edited)
    out = run.cli("reload", check=False)
    assert out.returncode != 0 and "prot" in out.stderr, out.stderr

    r = run.api("POST", "/virtual_services/Viewer/real_servers", NEW_SERVER)
    assert r.status_code == 409, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert str(run.config) in detail and "edited by hand since revision 1" in detail, detail
    assert "pacslb reload" in detail and "pacslb config show 1" in detail, detail
    assert run.config.read_text() == edited  # the hand edit is still there
    assert revisions(run) == [1]
    assert any("change refused" in m and "edited by hand" in m for m in run.events("config"))

    # The operator fixes the edit and reloads it: now the API change goes in beside it.
    run.config.write_text(edited.replace("prot:", "port:"))
    assert run.cli("reload").returncode == 0
    r = run.api("POST", "/virtual_services/Viewer/real_servers", NEW_SERVER)
    assert r.status_code == 201, r.text
    assert revisions(run) == [1, 2, 3]
    text = run.config.read_text()
    assert "{label: Srv4, address: 127.10.9.5, port: 18084}" in text
    assert "{label: Srv3, address: 127.10.9.4, port: 18083}" in text
    assert run.api("GET", "/config/revisions/3").text == text  # the revision is the file


def test_the_discard_command_of_the_refusal_restores_the_file(
    lb: tuple[Pacslb, str], tmp_path: Path
) -> None:
    """The 409 says how to discard a hand edit: run as given, from any directory, it puts the
    running revision back. (It once read `config show N > FILE` without the state directory:
    show failed, and the shell had already emptied the file.)"""
    run, original = lb
    run.config.write_text(original.replace("weight: 100}", "weight: 90}"))
    r = run.api("POST", "/virtual_services/Viewer/real_servers", NEW_SERVER)
    assert r.status_code == 409, r.text
    command = r.json()["detail"].split("discard it (", 1)[1].split("), then", 1)[0]
    assert command.startswith("pacslb config show 1 --state-dir "), command
    cli = f"{shlex.quote(sys.executable)} -m pacslb.cli"
    done = subprocess.run(
        ["bash", "-c", cli + command.removeprefix("pacslb")], cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0
    assert run.config.read_text() == original
    r = run.api("POST", "/virtual_services/Viewer/real_servers", NEW_SERVER)
    assert r.status_code == 201, r.text


def test_an_api_change_keeps_the_files_comments_and_spelling(lb: tuple[Pacslb, str]) -> None:
    run, original = lb
    body = run.api("GET", "/virtual_services/Viewer/real_servers/Srv2").json()
    r = run.api("PUT", "/virtual_services/Viewer/real_servers/Srv2", {**body, "weight": 50})
    assert r.status_code == 200 and r.json()["revision"] == 2, r.text
    text = run.config.read_text()
    assert text == original.replace("weight: 100}  # second", "weight: 50}   # second")
    assert run.api("GET", "/config/revisions/2").text == text
    diff = run.api("GET", "/config/diff?a=1&b=2").text
    changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    assert len(changed) == 2, diff  # one line out, one line in


def test_a_save_that_changes_nothing_makes_no_revision(lb: tuple[Pacslb, str]) -> None:
    run, original = lb
    service = run.api("GET", "/virtual_services/Viewer").json()
    r = run.api("PUT", "/virtual_services/Viewer", service)
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is False and r.json()["changed"] is False
    assert "nothing changed" in r.json()["detail"]
    # The WebUI's Save, pressed with the form as it was shown.
    assert run.client is not None
    form = form_fields(run.client.get("/services/Viewer").text, "service-form")
    assert form["csrf_token"] and form["scheduler"] == "wlc", form
    r = run.client.post("/services/Viewer", data=form)
    assert r.status_code == 303, r.text
    assert revisions(run) == [1]
    assert run.config.read_text() == original
    assert run.cli_status()["revision"] == 1


def test_a_file_with_windows_line_endings_takes_api_changes(tmp_path: Path) -> None:
    """The operator's editor saves CRLF. The file read as the running revision, line endings
    aside, so an API change goes in (it was refused as a hand edit for ever, reload or not),
    and the file keeps its CRLF lines."""
    host, vip = "127.10.17.1", "127.10.17.10"
    config = tmp_path / "pacslb.yaml"
    web_port = free_port(host)
    text = profile(web_port, free_port(vip)).replace("127.10.9.", "127.10.17.")  # own block
    config.write_bytes(text.replace("\n", "\r\n").encode())
    with ExitStack() as stack:
        run = Pacslb(config, tmp_path / "state", (host, web_port), tmp_path / "run.log")
        run.start(stack)
        assert run.cli("reload").returncode == 0  # the file is the running config
        server = {"label": "Srv3", "address": "127.10.17.4", "port": 18083}
        r = run.api("POST", "/virtual_services/Viewer/real_servers", server)
        assert r.status_code == 201, r.text
        raw = config.read_bytes()
        assert raw.count(b"\r\n") == raw.count(b"\n"), raw
        assert raw.decode().replace("\r\n", "\n") == run.api("GET", "/config/revisions/2").text
        assert "# first\r\n" in raw.decode()  # the operator's comments are still there
        run.stop()
