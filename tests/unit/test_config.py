"""The config models: field-level parsing and refusals."""

from __future__ import annotations

import ipaddress
import os

import pytest
from pydantic import ValidationError

from pacslb import config as c


def service(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "label": "Web",
        "vip": "127.0.0.30",
        "ports": [80],
        "mode": "l7-http",
        "real_servers": [{"label": "Srv1", "address": "127.0.1.1"}],
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([4000, 5000], [4000, 5000]),
        ("4000,5000", [4000, 5000]),
        ("8000-8003", [8000, 8001, 8002, 8003]),
        (["80", "8000-8001", 443], [80, 8000, 8001, 443]),
        (104, [104]),
    ],
)
def test_ports_accept_lists_commas_and_ranges(raw: object, expected: list[int]) -> None:
    assert c.VirtualService.model_validate(service(ports=raw)).ports == expected


@pytest.mark.parametrize("raw", ["80-70", "http", "1-2000", [0], [70000], []])
def test_ports_refuse_nonsense(raw: object) -> None:
    with pytest.raises(ValidationError):
        c.VirtualService.model_validate(service(ports=raw))


def test_defaults_follow_the_design() -> None:
    vs = c.VirtualService.model_validate(service())
    assert vs.scheduler is c.SchedulerName.WLC
    assert vs.protocol == "tcp"
    assert isinstance(vs.persistence, c.NoPersistence)
    assert isinstance(vs.health_check, c.ConnectCheck)
    assert vs.timeouts.idle == 1800  # DICOM associations stay quiet for long
    rs = vs.real_servers[0]
    assert (rs.weight, rs.port, rs.max_connections) == (100, None, 0)
    assert rs.address == ipaddress.IPv4Address("127.0.1.1")


@pytest.mark.parametrize(
    ("granularity", "prefix"), [("255.255.255.0", 24), ("/16", 16), (8, 8), ("32", 32)]
)
def test_granularity_takes_netmasks_and_prefixes(granularity: object, prefix: int) -> None:
    p = c.SourceIPPersistence.model_validate({"type": "source-ip", "granularity": granularity})
    assert p.granularity == prefix


def test_granularity_refuses_a_non_mask() -> None:
    with pytest.raises(ValidationError, match="not a netmask"):
        c.SourceIPPersistence.model_validate({"type": "source-ip", "granularity": "255.0.255.0"})


@pytest.mark.parametrize("ae", ["", "   ", "A" * 17, "BAD\\AE", "TAB\tAE"])
def test_ae_titles_follow_dicom(ae: str) -> None:
    with pytest.raises(ValidationError):
        c.DicomEchoCheck.model_validate({"type": "dicom-echo", "called_ae": ae})


def test_ae_title_of_sixteen_characters_is_fine() -> None:
    check = c.DicomEchoCheck.model_validate({"type": "dicom-echo", "called_ae": "A" * 16})
    assert check.called_ae == "A" * 16
    assert check.calling_ae == "PACSLB_CHECK"


def test_unknown_keys_are_errors_at_every_level() -> None:
    for raw in (
        service(colour="blue"),
        service(real_servers=[{"label": "a", "address": "127.0.0.1", "wieght": 5}]),
        service(health_check={"type": "http", "paht": "/"}),
    ):
        with pytest.raises(ValidationError, match="Extra inputs"):
            c.VirtualService.model_validate(raw)


def test_addresses_must_be_written_as_text() -> None:
    with pytest.raises(ValidationError, match="write it as text"):
        c.RealServer.model_validate({"label": "a", "address": 5})
    with pytest.raises(ValidationError, match="not a valid IPv4 or IPv6"):
        c.RealServer.model_validate({"label": "a", "address": "10.0.0.256"})
    assert (
        c.RealServer.model_validate({"label": "a", "address": "2001:db8::7"}).address.version == 6
    )


def test_http_check_rules() -> None:
    with pytest.raises(ValidationError, match="HEAD response has no body"):
        c.HttpCheck.model_validate({"method": "HEAD", "expect": "OK"})
    with pytest.raises(ValidationError, match="regular expression"):
        c.HttpCheck.model_validate({"expect_regex": "srvPACS (OK"})
    with pytest.raises(ValidationError):
        c.HttpCheck.model_validate({"path": "no-slash"})


def test_cookie_name_must_be_a_token() -> None:
    with pytest.raises(ValidationError, match="cookie name"):
        c.CookiePersistence.model_validate({"cookie": "bad name;"})


def test_mode_properties() -> None:
    assert c.Mode.L4_DR.is_kernel and c.Mode.L4_DR.layer == 4
    assert not c.Mode.L7_HTTP.is_kernel and c.Mode.L7_TCP.layer == 7


def test_models_are_immutable() -> None:
    vs = c.VirtualService.model_validate(service())
    with pytest.raises(ValidationError):
        vs.label = "Other"  # type: ignore[misc]


def test_schema_lists_every_mode_and_check() -> None:
    text = str(c.config_json_schema())
    for word in ("l4-dr", "l4-nat", "l4-snat", "l7-tcp", "l7-http", "dicom-echo", "external"):
        assert word in text


def test_proxy_workers_default_to_two_where_two_cores_can_run_them() -> None:
    from pacslb.config import ProxySettings, default_workers

    assert [default_workers(n) for n in (None, 1, 2, 16)] == [1, 1, 2, 2]
    assert ProxySettings().workers == default_workers(os.cpu_count())
    assert ProxySettings(workers=1).workers == 1  # one worker stays a valid choice
