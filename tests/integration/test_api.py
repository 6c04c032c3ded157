"""The REST API and WebUI routes through an ASGI client (no socket): auth, CSRF, roles, changes.

The control process is the real one (its config store, event log, health checker); it just has
no data-plane engine, except where a test brings a small one to see engine bookkeeping."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from tests.webapp import PASSWORD, READONLY_PASSWORD, headers, login, web_client

from pacslb.control.app import ControlProcess
from pacslb.control.store import read_config
from pacslb.core.plan import Plan, ServerKey
from pacslb.core.validate import parse_yaml
from pacslb.engines.base import Counters
from pacslb.errors import EngineError

NEW_SERVICE: dict[str, Any] = {
    "label": "Viewer",
    "vip": "127.0.0.32",
    "ports": [8443],
    "mode": "l7-tcp",
    "health_check": {"type": "none"},
    "real_servers": [{"label": "V1", "address": "127.0.0.1", "port": 18443}],
}


def test_requests_without_session_or_token_are_refused(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, _):
        for method, url in (
            ("GET", "/api/v1/status"),
            ("GET", "/api/v1/config"),
            ("POST", "/api/v1/virtual_services/Web/real_servers/Srv1/drain"),
            ("PUT", "/api/v1/config"),
            ("GET", "/metrics"),
        ):
            assert client.request(method, url).status_code == 401, url
        r = client.get("/api/v1/status", headers={"Authorization": "Bearer pacslb_0000_nope"})
        assert r.status_code == 401
        page = client.get("/", follow_redirects=False)  # a browser is sent to the login page
        assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_wrong_or_missing_csrf_token_changes_nothing(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        csrf = login(client)
        url = "/api/v1/virtual_services/Web/real_servers/Srv1/halt"
        assert client.post(url).status_code == 403
        assert client.post(url, headers=headers("0" * 64)).status_code == 403
        r = client.post("/admin-state", data={"service": "Web", "server": "Srv1", "action": "halt"})
        assert r.status_code == 403
        assert process.admin.all() == {}
        assert client.post(url, headers=headers(csrf)).json()["state"] == "halt"


def test_login_sets_a_strict_secure_cookie_and_logout_ends_it(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, _):
        r = client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
        cookie = r.headers["set-cookie"].lower()
        for part in ("pacslb_session=", "secure", "httponly", "samesite=strict", "max-age=600"):
            assert part in cookie
        csrf = r.json()["csrf_token"]
        assert client.get("/api/v1/session").json()["user"] == "admin"
        assert client.delete("/api/v1/session", headers=headers(csrf)).status_code == 200
        assert client.get("/api/v1/status").status_code == 401


def test_login_rate_limit(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, _):
        for _ in range(5):
            r = client.post("/api/v1/session", json={"username": "admin", "password": "wrong!!!"})
            assert r.status_code == 401
        r = client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_front_door_limits_a_login_body_and_checks_credentials_not_just_their_presence(
    tmp_path: Path,
) -> None:
    with web_client(tmp_path) as (client, _):
        r = client.post("/api/v1/session", json={"username": "admin", "password": "x" * 20_000})
        assert r.status_code == 413 and "login" in r.json()["detail"]
        client.cookies.set("pacslb_session", "forged")
        r = client.put("/api/v1/config", json={})
        assert r.status_code == 401
        r = client.put("/api/v1/config", headers={"Authorization": "Bearer pacslb_0000_nope"})
        assert r.status_code == 401


def test_login_events_held_back_by_the_throttle_are_counted_later(tmp_path: Path) -> None:
    from pacslb.core.auth import Throttle

    with web_client(tmp_path) as (client, process):
        client.app.state.security._throttle = Throttle(limit=1, window=3)  # type: ignore[attr-defined]
        for user in ("admin", "nobody", "admin"):
            r = client.post("/api/v1/session", json={"username": user, "password": "wrong!!!"})
            assert r.status_code == 401

        def auth_events() -> list[str]:
            return [e.message for e in process.events.query("auth", None, None, 50)]

        deadline = time.monotonic() + 15
        while not (summary := [m for m in auth_events() if "more failed or refused" in m]):
            assert time.monotonic() < deadline, auth_events()
            time.sleep(0.05)
        recorded = sum("failed login as" in m for m in auth_events())
        assert recorded + int(summary[0].split()[0]) == 3, auth_events()


def test_readonly_user_and_token_may_look_but_not_change(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        admin_csrf = login(client)
        token = client.post(
            "/api/v1/tokens",
            json={"name": "grafana", "role": "readonly"},
            headers=headers(admin_csrf),
        ).json()["token"]
        client.cookies.clear()
        csrf = login(client, "viewer", READONLY_PASSWORD)
        bearer = {"Authorization": f"Bearer {token}"}
        for auth in (headers(csrf), bearer):
            if "Authorization" in auth:
                client.cookies.clear()
            assert client.get("/api/v1/status", headers=auth).status_code == 200
            assert client.get("/metrics", headers=auth).status_code == 200
            for method, url, body in (
                ("POST", "/api/v1/virtual_services/Web/real_servers/Srv1/drain", None),
                ("POST", "/api/v1/virtual_services", NEW_SERVICE),
                ("DELETE", "/api/v1/virtual_services/Web", None),
                (
                    "PUT",
                    "/api/v1/virtual_services/Web/real_servers/Srv1",
                    {"label": "Srv1", "address": "127.0.0.1"},
                ),
                ("POST", "/api/v1/config/rollback/1", None),
                ("POST", "/api/v1/engines/apply", None),
                ("POST", "/api/v1/tokens", {"name": "x"}),
            ):
                r = client.request(method, url, json=body, headers=auth)
                assert r.status_code == 403, (method, url, r.text)
        assert process.revision == 1 and process.admin.all() == {}


def test_create_update_delete_services_and_servers(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        r = client.post("/api/v1/virtual_services", json=NEW_SERVICE, headers=h)
        assert r.status_code == 201 and r.json()["revision"] == 2
        assert client.get("/api/v1/virtual_services/Viewer").json()["vip"] == "127.0.0.32"
        assert (
            client.post("/api/v1/virtual_services", json=NEW_SERVICE, headers=h).status_code == 409
        )

        server = {"label": "V2", "address": "127.0.0.1", "port": 18444, "weight": 50}
        url = "/api/v1/virtual_services/Viewer/real_servers"
        assert client.post(url, json=server, headers=h).status_code == 201
        r = client.put(f"{url}/V2", json={**server, "weight": 7}, headers=h)
        assert r.status_code == 200
        assert client.get(f"{url}/V2").json()["weight"] == 7
        assert [rs["label"] for rs in client.get(url).json()] == ["V1", "V2"]
        assert client.delete(f"{url}/V1", headers=h).status_code == 200
        assert client.get(f"{url}/V1").status_code == 404

        changed = {**NEW_SERVICE, "ports": [8444], "real_servers": []}
        assert client.put("/api/v1/virtual_services/Viewer", json=changed, headers=h).json()[
            "applied"
        ]
        assert process.config.service("Viewer").ports == [8444]  # type: ignore[union-attr]
        assert client.delete("/api/v1/virtual_services/Viewer", headers=h).status_code == 200
        assert process.config.service("Viewer") is None

        # Every change is a revision, and the file on disk holds the last (a restart keeps it).
        revs = client.get("/api/v1/config/revisions").json()
        assert [r["number"] for r in revs] == list(range(1, 8))
        assert [r["author"] for r in revs[1:]] == ["admin"] * 6
        _, on_disk = read_config(process.config_path)
        assert on_disk == process.config
        events = client.get("/api/v1/events", params={"kind": "config"}).json()
        assert "delete virtual service Viewer" in events[-1]["message"]


def test_a_rejected_change_changes_nothing(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        before = process.config_path.read_text()
        clash = {**NEW_SERVICE, "vip": "127.0.0.30", "ports": [8080], "mode": "l4-dr"}
        r = client.post("/api/v1/virtual_services", json=clash, headers=h)
        assert r.status_code == 422
        paths = {p["path"] for p in r.json()["problems"]}
        assert "virtual_services[2].real_servers[0].port" in paths  # DR cannot translate ports
        assert "virtual_services[2].ports" in paths  # 127.0.0.30:8080 is Web's
        bad = {**NEW_SERVICE, "vip": "127.0.0.999", "ports": [0]}
        r = client.post("/api/v1/virtual_services", json=bad, headers=h)
        assert r.status_code == 422
        assert {p["path"] for p in r.json()["problems"]} == {"vip", "ports[0]"}
        assert process.revision == 1 and len(process.store.revisions()) == 1
        assert process.config_path.read_text() == before


def test_dry_run_and_validate_change_nothing(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        r = client.post("/api/v1/virtual_services?dry_run=true", json=NEW_SERVICE, headers=h)
        assert r.status_code == 200 and r.json() == {
            "valid": True,
            "problems": [],
            "applied": False,
        }
        assert process.config.service("Viewer") is None
        mistakes = Path(__file__).parents[1] / "unit/data/ten-mistakes.yaml"
        data = parse_yaml(mistakes.read_text())
        r = client.post("/api/v1/config/validate", json=data, headers=h)
        assert r.status_code == 200 and r.json()["valid"] is False
        problems = r.json()["problems"]
        assert len(problems) == 11  # ten mistakes; a VIP:port clash is told to both services
        assert any(p["path"] == "node.statedir" for p in problems)
        assert {p["where"] for p in problems} >= {
            "node.statedir",
            "McK-RadiologyManager › Mgr1 › weight",
        }
        assert len(process.store.revisions()) == 1


def test_revisions_diff_and_rollback(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        h = headers(login(client))
        client.post("/api/v1/virtual_services", json=NEW_SERVICE, headers=h)
        diff = client.get("/api/v1/config/diff", params={"a": 1, "b": 2}).text
        assert "+  - label: Viewer" in diff
        assert "label: Viewer" in client.get("/api/v1/config/revisions/2").text
        r = client.post("/api/v1/config/rollback/1", headers=h)
        assert r.status_code == 200 and r.json()["revision"] == 3
        assert process.config.service("Viewer") is None
        assert client.get("/api/v1/config/text").text == process.config_path.read_text()
        assert client.post("/api/v1/config/rollback/99", headers=h).status_code == 404


def test_admin_state_and_status(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, _process):
        h = headers(login(client))
        url = "/api/v1/virtual_services/Web/real_servers/Srv2"
        assert client.post(f"{url}/drain", headers=h).json()["previous"] == "online"
        status = client.get("/api/v1/status").json()
        (srv2,) = [rs for rs in status["services"][0]["real_servers"] if rs["label"] == "Srv2"]
        assert srv2["admin"] == "drain" and srv2["effective_weight"] == 0
        assert srv2["last_check"]["reason"] == "none: always up"
        assert client.post(f"{url}/online", headers=h).json()["state"] == "online"
        assert client.post(f"{url}/dance", headers=h).status_code == 422
        r = client.post("/api/v1/virtual_services/Web/real_servers/Nope/drain", headers=h)
        assert r.status_code == 404
        admin = client.get("/api/v1/events", params={"kind": "admin", "server": "Srv2"}).json()
        assert [e["message"] for e in admin] == [
            "online -> drain by admin",
            "drain -> online by admin",
        ]


class KernelLike:
    """An engine that fails when told to and renders a ruleset, as the kernel engine will."""

    name = "kernel"

    def __init__(self) -> None:
        self.fail = False
        self.applied = 0
        self.count = Counters(
            active=3,
            total=40,
            bytes_in=1000,
            bytes_out=5000,
            requests=40,
            responses={"2xx": 38, "5xx": 2},
        )

    async def apply(self, plan: Plan) -> None:
        if self.fail:
            raise EngineError("nft: Operation not permitted")
        self.applied += 1

    def counters(self) -> dict[ServerKey, Counters]:
        return {("Web", "Srv1"): self.count}

    def ruleset_text(self) -> str:
        return "table inet pacslb {\n}\n"

    async def close(self, keep_running: bool = False) -> None:
        pass


def test_engine_reapply_records_and_metrics(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        engine = KernelLike()
        process.engines.append(engine)  # type: ignore[arg-type]
        h = headers(login(client))
        assert client.post("/api/v1/engines/apply", headers=h).json()[0]["error"] is None
        assert engine.applied == 1 and client.post("/api/v1/engines/apply", headers=h)
        assert engine.applied == 2  # forced: applied although nothing changed
        engine.fail = True
        (record,) = client.post("/api/v1/engines/apply", headers=h).json()
        assert record["error"] == "nft: Operation not permitted" and record["applied_at"]
        assert "table inet pacslb" in client.get("/config").text

        text = client.get("/metrics").text
        assert 'pacslb_real_server_active_connections{server="Srv1",service="Web"} 3.0' in text
        assert 'pacslb_real_server_bytes_out_total{server="Srv1",service="Web"} 5000.0' in text
        assert 'pacslb_real_server_requests_total{server="Srv1",service="Web"} 40.0' in text
        assert (
            'pacslb_real_server_responses_total{class="5xx",server="Srv1",service="Web"} 2.0'
            in text
        )
        assert 'pacslb_real_server_connect_failures_total{server="Srv1",service="Web"} 0.0' in text
        assert 'pacslb_engine_failing{engine="kernel"} 1.0' in text
        assert 'pacslb_engine_last_error_info{engine="kernel",error="nft: Operation' in text
        assert (
            'pacslb_real_server_admin_state{server="Srv2",service="Web",state="online"} 1.0' in text
        )
        assert "pacslb_config_revision 1.0" in text


def test_reports_draw_the_sampled_counters(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        engine = KernelLike()
        process.engines.append(engine)  # type: ignore[arg-type]
        login(client)
        sampler = client.app.state.sampler  # type: ignore[attr-defined]
        now = time.time()
        sampler.sample(now - 20)
        engine.count = Counters(active=5, total=100, bytes_in=11_000, bytes_out=55_000)
        sampler.sample(now - 10)
        page = client.get("/reports").text
        # Per VIP, for the VIP and for its servers: open connections, new ones, throughput.
        assert page.count("<svg") == 12
        web = page[page.index('data-service="Web"') : page.index('data-service="DICOM"')]
        assert "Web: throughput in and out" in web and "<polyline" in web
        assert "Web: open connections</title><desc>Web: latest 5<" in web
        assert "Web: latest 6/s" in web  # 60 new connections in 10 s
        assert "Web in: latest 1.0kB/s, Web out: latest 5.0kB/s" in web  # 10 kB and 50 kB
        assert "<svg" in client.get("/reports?span=day").text


def test_tokens_create_use_revoke(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, _process):
        h = headers(login(client))
        created = client.post("/api/v1/tokens", json={"name": "ci", "role": "admin"}, headers=h)
        assert created.status_code == 201
        token, tid = created.json()["token"], created.json()["id"]
        assert [t["id"] for t in client.get("/api/v1/tokens").json()] == [tid]
        assert "token" not in client.get("/api/v1/tokens").json()[0]
        client.cookies.clear()
        bearer = {"Authorization": f"Bearer {token}"}
        url = "/api/v1/virtual_services/Web/real_servers/Srv1/drain"
        assert client.post(url, headers=bearer).status_code == 200  # no CSRF with a token
        assert client.delete(f"/api/v1/tokens/{tid}", headers=bearer).status_code == 200
        assert client.get("/api/v1/status", headers=bearer).status_code == 401


def test_webui_forms_login_and_inline_errors(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        page = client.get("/login")
        login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]  # type: ignore[index]
        form = {"username": "admin", "password": PASSWORD, "next": "/logs"}
        assert client.post("/login", data=form).status_code == 403  # no login CSRF token
        client.cookies.clear()
        page = client.get("/login")
        login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]  # type: ignore[index]
        r = client.post("/login", data={**form, "csrf_token": login_csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/logs"
        overview = client.get("/")
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', overview.text)[1]  # type: ignore[index]
        assert overview.text.count('class="rip"') == 3 and "h-up" in overview.text

        bad = {
            "csrf_token": csrf,
            "label": "Viewer",
            "vip": "127.0.0.999",
            "ports": "8443",
            "mode": "l7-tcp",
            "persistence.type": "none",
            "health_check.type": "http",
            "health_check.path": "no-slash",
        }
        r = client.post("/services/new", data=bad)
        assert r.status_code == 422
        assert re.search(r'id="e-vip"[^>]*>[^<]*not a valid IPv4', r.text)
        assert 'id="e-health_check.path"' in r.text
        assert process.config.service("Viewer") is None
        r = client.post(
            "/services/new",
            data={**bad, "vip": "127.0.0.32", "health_check.path": "/ok"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        svc = process.config.service("Viewer")
        assert svc is not None and svc.health_check.path == "/ok"  # type: ignore[union-attr]
        r = client.post(
            "/services/Viewer/servers/new",
            data={"csrf_token": csrf, "label": "V1", "address": "127.0.0.1", "port": "70000"},
        )
        assert r.status_code == 422 and 'id="e-port"' in r.text
        r = client.post(
            "/services/Viewer/servers/new",
            data={"csrf_token": csrf, "label": "V1", "address": "127.0.0.1", "port": "18443"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert process.config.service("Viewer").real_servers[0].port == 18443  # type: ignore[union-attr]
        for url in ("/config", "/revisions?a=1&b=3", "/logs?kind=config", "/reports?span=day"):
            assert client.get(url).status_code == 200, url
        assert client.get("/tokens").status_code == 200
        r = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert client.get("/api/v1/status").status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/ok/../x"])
def test_login_never_redirects_off_site(tmp_path: Path, target: str) -> None:
    from pacslb.control.webui import _safe_next

    assert _safe_next(target) in ("/", "/ok/../x")
    assert not _safe_next(target).startswith("//")


def test_process_is_real(tmp_path: Path) -> None:
    with web_client(tmp_path) as (_, process):
        assert isinstance(process, ControlProcess) and process.ready
