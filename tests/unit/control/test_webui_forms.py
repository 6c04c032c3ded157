"""WebUI form handling: form fields -> config data, validator paths -> form fields."""

from __future__ import annotations

from pacslb.control.webui import field_errors, server_from_form, service_from_form
from pacslb.errors import Problem


def test_problems_map_to_fields_and_the_rest_is_listed() -> None:
    problems = (
        Problem("virtual_services[2].vip", "'1.2.3.999' is not a valid address"),
        Problem("virtual_services[2].ports[1]", "must be at most 65535"),
        Problem("virtual_services[2].health_check.path", "absolute path"),
        Problem("virtual_services[2].real_servers[0].port", "l4-dr cannot translate ports"),
        Problem("virtual_services[0].ports", "127.0.0.30 port 80/tcp is already used"),
        Problem("virtual_services[12].vip", "not this service"),
    )
    known = {"vip", "ports", "health_check.path", "label"}
    fields, other = field_errors(problems, "virtual_services[2]", known)
    assert fields == {
        "vip": "'1.2.3.999' is not a valid address",
        "ports": "must be at most 65535",
        "health_check.path": "absolute path",
    }
    assert other == [
        "virtual_services[2].real_servers[0].port: l4-dr cannot translate ports",
        "virtual_services[0].ports: 127.0.0.30 port 80/tcp is already used",
        "virtual_services[12].vip: not this service",
    ]


def test_service_form_keeps_what_the_form_does_not_show() -> None:
    old = {
        "label": "Web",
        "vip": "127.0.0.30",
        "ports": [80],
        "mode": "l7-http",
        "timeouts": {"idle": 60},
        "health_check": {"type": "http", "path": "/a", "expect_status": [200]},
        "real_servers": [{"label": "S1", "address": "127.0.0.1"}],
    }
    form = {
        "label": "Web",
        "vip": "127.0.0.30",
        "ports": "80,443",
        "mode": "l7-http",
        "scheduler": "wrr",
        "persistence.type": "source-ip",
        "persistence.timeout": "300",
        "health_check.type": "http",
        "health_check.path": "/b",
        "health_check.interval": "2.5",
        "health_check.rise": "",
    }
    new = service_from_form(old, form)
    assert new["ports"] == "80,443" and new["scheduler"] == "wrr"
    assert new["persistence"] == {"type": "source-ip", "timeout": 300}
    assert new["health_check"] == {
        "type": "http",
        "path": "/b",
        "expect_status": [200],
        "interval": 2.5,
    }
    assert new["timeouts"] == {"idle": 60} and new["real_servers"] == old["real_servers"]
    changed = service_from_form(old, {**form, "health_check.type": "connect"})
    assert changed["health_check"] == {"type": "connect", "interval": 2.5}  # http's fields gone


def test_server_form_numbers_and_empty_fields() -> None:
    rs = server_from_form(
        {"label": "S1", "address": "127.0.0.1", "port": 8080, "weight": 5},
        {"label": "S1", "address": "127.0.0.2", "port": "", "weight": "50"},
    )
    assert rs == {"label": "S1", "address": "127.0.0.2", "weight": 50}


def test_dicom_echo_form_keeps_ae_titles_as_text_and_drops_http_fields() -> None:
    old = {"label": "PACS", "health_check": {"type": "http", "path": "/a", "expect": "OK"}}
    form = {
        "health_check.type": "dicom-echo",
        "health_check.path": "/ignored",
        "health_check.called_ae": " 1234 ",
        "health_check.calling_ae": "LB_CHECK",
        "health_check.interval": "10",
    }
    check = service_from_form(old, form)["health_check"]
    assert check == {
        "type": "dicom-echo",
        "called_ae": "1234",
        "calling_ae": "LB_CHECK",
        "interval": 10,
    }
    back = service_from_form({"health_check": check}, {**form, "health_check.type": "http"})
    assert back["health_check"] == {"type": "http", "path": "/ignored", "interval": 10}


def test_a_service_is_amber_only_for_servers_down_not_for_the_operators_choices() -> None:
    from pacslb.control.webui import service_colour

    def rs(health: str, admin: str = "online") -> dict[str, str]:
        return {"health": health, "admin": admin}

    assert service_colour([rs("up"), rs("up", "drain")]) == "up"
    assert service_colour([rs("up"), rs("up", "halt")]) == "up"
    assert service_colour([rs("up"), rs("down")]) == "partial"
    assert service_colour([rs("up"), rs("unknown")]) == "partial"
    assert service_colour([rs("up", "drain"), rs("down")]) == "down"  # nothing takes new clients
    assert service_colour([rs("up", "halt"), rs("up", "halt")]) == "down"
    assert service_colour([]) == "down"
