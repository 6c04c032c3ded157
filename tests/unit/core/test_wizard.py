"""The first-run wizard's pure core: form fields -> the profile's services, and the
validator's problems -> the field each is about (control/wizard.py shows them)."""

from __future__ import annotations

import pytest

from pacslb.core import wizard as w
from pacslb.core.validate import load_data
from pacslb.errors import ConfigError
from pacslb.profiles import mckesson

NET = "127.10.3"
EXISTING = {  # a service the node had before the wizard ran
    "label": "Viewer",
    "vip": f"{NET}.40",
    "ports": [80],
    "mode": "l7-http",
    "real_servers": [{"label": "V1", "address": f"{NET}.200"}],
}


def fields(**changes: str) -> dict[str, str]:
    out = {}
    for n, key in enumerate(mckesson.SERVICE_KEYS):
        out[w.vip_field(key)] = f"{NET}.{30 + n}"
        out[w.rip_field(key, 1)] = f"{NET}.{100 + 10 * n}"
    return out | changes


def problems_of(data: dict[str, object]) -> tuple[object, ...]:
    with pytest.raises(ConfigError) as caught:
        load_data(data)
    return caught.value.problems


def test_the_services_are_the_profiles_with_the_typed_addresses() -> None:
    form = w.WizardForm.parse("nat-l7", fields(rip_web_3=f"{NET}.113"))
    built = w.build(form)
    assert not built.missing
    assert built.rows["web"] == [1, 3]  # row 2 left blank
    web = built.services[1]
    assert web == mckesson.service_config(
        mckesson.SERVICES[1], "nat-l7", f"{NET}.31", [f"{NET}.110", f"{NET}.113"]
    )
    config = load_data(w.config_data({"version": 1}, built.services))
    assert [vs.mode.value for vs in config.virtual_services] == [
        "l4-nat", "l4-nat", "l7-http", "l7-http", "l4-nat"
    ]  # fmt: skip
    assert w.WizardForm.parse("nat-l7", form.fields()) == form  # the review page carries it


def test_each_problem_lands_on_the_field_typed_after_the_services_there_were() -> None:
    form = w.WizardForm.parse(
        "proxy",
        fields(
            vip_manager=f"{NET}.40",  # the existing Viewer's VIP:port 80
            rip_web_1="",
            rip_web_2=f"{NET}.1O1",  # a letter O
            vip_crv="",
            called_ae="AN AE TITLE LONGER THAN 16",
            dicom_check="echo",
        ),
    )
    built = w.build(form)
    data = w.config_data({"version": 1, "virtual_services": [EXISTING]}, built.services)
    errors, other = w.field_errors(problems_of(data), built, first=1)
    assert errors["vip_manager"].startswith(f"{NET}.40 port 80/tcp is already used by the ")
    assert "Viewer" in errors["vip_manager"]
    assert errors["rip_web_2"] == f"'{NET}.1O1' is not a valid IPv4 or IPv6 address"
    assert errors["vip_crv"] == "enter the virtual service's IP address (VIP)"  # not "''"
    assert "called_ae" in errors
    assert set(errors) == {"vip_manager", "rip_web_2", "vip_crv", "called_ae"}
    # The clash is told on the Viewer too: not a wizard field, so in the list.
    assert len(other) == 1 and other[0].startswith("Viewer › ports: "), other


def test_a_service_without_real_servers_is_named_on_its_first_row() -> None:
    built = w.build(w.WizardForm.parse("dr", fields(rip_cardiology_1="")))
    assert built.missing == {"rip_cardiology_1": "enter at least one real server's IP address"}


@pytest.mark.parametrize("variant, extra", [("l4-dr", {}), ("proxy", {"dicom_check": "x"})])
def test_a_deployment_or_check_no_form_offers_is_refused(
    variant: str, extra: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        w.WizardForm.parse(variant, fields(**extra))


def test_the_dicom_service_can_be_l7_dicom_in_any_variant() -> None:
    """The profile's --dicom-mode l7-dicom, offered on the address page: the DICOM service
    becomes l7-dicom with calling-AE persistence; the others keep the variant's modes."""
    for variant in mckesson.VARIANTS:
        form = w.WizardForm.parse(variant, fields(dicom_mode="l7-dicom"))
        assert w.WizardForm.parse(variant, form.fields()) == form  # the review page carries it
        services = w.build(form).services
        dicom = services[mckesson.SERVICE_KEYS.index("dicom")]
        assert dicom["mode"] == "l7-dicom" and dicom["persistence"]["type"] == "calling-ae"
        load_data({"virtual_services": services})  # and it is a valid deployment
        plain = w.build(w.WizardForm.parse(variant, fields())).services
        assert [s["mode"] for s in services if s is not dicom] == [
            s["mode"] for s in plain if s["label"] != dicom["label"]
        ]
    with pytest.raises(ValueError, match="unknown DICOM mode 'l7-bogus'"):
        w.WizardForm.parse("dr", fields(dicom_mode="l7-bogus"))
