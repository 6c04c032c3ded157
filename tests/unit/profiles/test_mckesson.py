"""The McKesson profile: the guide's five services in three variants, always valid."""

from __future__ import annotations

import pytest

from pacslb.config import (
    CallingAEPersistence,
    CookiePersistence,
    DicomEchoCheck,
    HttpCheck,
    Mode,
    SourceIPPersistence,
)
from pacslb.core.validate import load_text
from pacslb.profiles import mckesson


@pytest.mark.parametrize("variant", mckesson.VARIANTS)
def test_every_variant_renders_a_valid_config(variant: str) -> None:
    data, examples = mckesson.build(variant)
    text = mckesson.render(data, variant, examples)
    config = load_text(text, variant)
    assert [vs.label for vs in config.virtual_services] == [s.label for s in mckesson.SERVICES]
    assert "EXAMPLES" in text and examples == list(mckesson.SERVICE_KEYS)


def test_dr_variant_matches_the_guide() -> None:
    data, examples = mckesson.build("dr")
    config = load_text(mckesson.render(data, "dr", examples))
    by_label = {vs.label: vs for vs in config.virtual_services}
    dicom = by_label["McK-Radiology_DICOM"]
    assert dicom.ports == [4000, 5000] and dicom.mode is Mode.L4_DR
    assert isinstance(dicom.persistence, SourceIPPersistence) and dicom.persistence.timeout == 3600
    assert dicom.health_check.type == "connect" and dicom.health_check.port == 5000
    web = by_label["McK-Radiology_Web"]
    assert web.persistence.type == "none"
    assert isinstance(web.health_check, HttpCheck)
    assert (web.health_check.path, web.health_check.expect) == ("/wpp/srvpacs.asp", "srvPACS OK")
    manager = by_label["McK-RadiologyManager"]
    assert isinstance(manager.persistence, SourceIPPersistence)
    assert manager.persistence.timeout == 300
    assert isinstance(manager.health_check, HttpCheck)
    assert manager.health_check.path == "/cis/index.html" and manager.health_check.expect == "OK"
    crv = by_label["McK-ClinicalReferenceViewer"]
    assert isinstance(crv.health_check, HttpCheck)
    assert crv.health_check.path == "/McKessonEmiCRV/Ping.aspx"
    cardiology = by_label["McK-Cardiology"]
    assert cardiology.ports == [80, 443]
    assert isinstance(cardiology.persistence, SourceIPPersistence)
    assert cardiology.persistence.timeout == 14400
    assert cardiology.health_check.port == 80
    assert all(vs.scheduler == "wlc" for vs in config.virtual_services)


def test_nat_l7_variant_follows_section_12() -> None:
    data, _ = mckesson.build("nat-l7")
    modes = {vs["label"]: vs["mode"] for vs in data["virtual_services"]}
    assert modes == {
        "McK-Radiology_DICOM": "l4-nat",
        "McK-Radiology_Web": "l4-nat",
        "McK-RadiologyManager": "l7-http",
        "McK-ClinicalReferenceViewer": "l7-http",
        "McK-Cardiology": "l4-nat",
    }
    config = load_text(mckesson.render(data, "nat-l7", []))
    manager = config.service("McK-RadiologyManager")
    assert manager is not None and isinstance(manager.persistence, CookiePersistence)


def test_proxy_variant_uses_only_layer_7() -> None:
    data, _ = mckesson.build("proxy")
    assert {vs["mode"] for vs in data["virtual_services"]} == {"l7-tcp", "l7-http"}


def test_dicom_echo_option() -> None:
    data, _ = mckesson.build("dr", dicom_check="echo", called_ae="MCK_ARCHIVE")
    config = load_text(mckesson.render(data, "dr", [], "echo"))
    check = config.virtual_services[0].health_check
    assert isinstance(check, DicomEchoCheck)
    assert (check.called_ae, check.port, check.calling_ae) == ("MCK_ARCHIVE", 5000, "PACSLB_CHECK")


def test_addresses_from_options_replace_the_examples() -> None:
    data, examples = mckesson.build(
        "proxy",
        vips={"dicom": "127.0.0.30"},
        rips={"dicom": ["127.0.1.1", "127.0.1.2", "127.0.1.3"]},
    )
    dicom = data["virtual_services"][0]
    assert dicom["vip"] == "127.0.0.30"
    assert [rs["address"] for rs in dicom["real_servers"]] == [
        "127.0.1.1",
        "127.0.1.2",
        "127.0.1.3",
    ]
    assert "dicom" not in examples and "web" in examples


def test_bad_options_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="unknown service 'pacs'"):
        mckesson.build("dr", vips={"pacs": "10.0.0.1"})
    with pytest.raises(ValueError, match="unknown variant"):
        mckesson.build("tunnel")


@pytest.mark.parametrize("variant", mckesson.VARIANTS)
def test_l7_dicom_option_for_the_dicom_service(variant: str) -> None:
    data, _ = mckesson.build(variant, dicom_mode="l7-dicom", called_ae="MCK_ARCHIVE")
    text = mckesson.render(data, variant, [])
    config = load_text(text)
    dicom = config.virtual_services[0]
    assert dicom.mode is Mode.L7_DICOM and dicom.ports == [4000, 5000]
    assert isinstance(dicom.persistence, CallingAEPersistence)
    assert dicom.persistence.timeout == 3600
    assert isinstance(dicom.health_check, DicomEchoCheck)
    assert (dicom.health_check.port, dicom.health_check.called_ae) == (5000, "MCK_ARCHIVE")
    assert "DICOM service in l7-dicom" in text.splitlines()[0]
    # The other four services keep the variant's modes.
    plain, _ = mckesson.build(variant)
    assert [vs["mode"] for vs in data["virtual_services"][1:]] == [
        vs["mode"] for vs in plain["virtual_services"][1:]
    ]


def test_unknown_dicom_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown DICOM mode 'l7-smtp'"):
        mckesson.build("proxy", dicom_mode="l7-smtp")
