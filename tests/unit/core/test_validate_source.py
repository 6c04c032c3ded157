"""The `source:` rules of core/validate.py (transparent mode and fixed source addresses)."""

from __future__ import annotations

from tests.unit.core.test_validate import problems, svc

from pacslb.core.validate import load_data


def test_source_is_for_layer7_modes_only() -> None:
    found = problems(svc(mode="l4-nat", source="client"))
    assert "source needs an l7 mode, not l4-nat" in found["virtual_services[0].source"]


def test_source_vip_needs_a_specific_vip() -> None:
    found = problems(svc(vip="0.0.0.0", source="vip"))
    assert found["virtual_services[0].source"] == "source vip needs a specific VIP, not 0.0.0.0"


def test_a_transparent_service_cannot_reach_a_server_of_the_other_family() -> None:
    servers = [
        {"label": "Srv1", "address": "127.0.1.1"},
        {"label": "Srv2", "address": "2001:2:2::11"},
    ]
    found = problems(svc(source="client", real_servers=servers))
    message = found["virtual_services[0].real_servers[1].address"]
    assert "source client" in message and "IPv4" in message and "2001:2:2::11" in message
    assert "virtual_services[0].real_servers[0].address" not in found


def test_a_fixed_source_of_the_other_family_or_unspecified_is_refused() -> None:
    found = problems(svc(source="2001:2:1::2"))
    assert "IPv6" in found["virtual_services[0].real_servers[0].address"]
    assert "use auto" in problems(svc(source="0.0.0.0"))["virtual_services[0].source"]


def test_valid_sources_load() -> None:
    for source in ("auto", "vip", "client", "127.10.1.5"):
        config = load_data({"version": 1, "virtual_services": [svc(source=source)]})
        assert config.virtual_services[0].source == source
    # A dual-stack VIP takes clients of both families: nothing to refuse up front.
    servers = [{"label": "Srv1", "address": "2001:2:2::11"}]
    load_data(
        {"version": 1, "virtual_services": [svc(vip="::", source="client", real_servers=servers)]}
    )
