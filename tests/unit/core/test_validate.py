"""Validation: every problem at once, each with its path and a plain message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacslb import config as c
from pacslb.core.validate import (
    flow_style,
    format_path,
    ha_problems,
    load_data,
    load_text,
    parse_yaml,
)
from pacslb.errors import ConfigError

DATA = Path(__file__).parent.parent / "data"


def svc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "label": "Web",
        "vip": "127.0.0.30",
        "ports": [80],
        "mode": "l7-http",
        "real_servers": [{"label": "Srv1", "address": "127.0.1.1"}],
    }
    base.update(overrides)
    return base


def problems(*services: dict[str, Any], **root: Any) -> dict[str, str]:
    """path -> message of every problem found (fails if the config is valid)."""
    with pytest.raises(ConfigError) as info:
        load_data({"version": 1, **root, "virtual_services": list(services)})
    return {p.path: p.message for p in info.value.problems}


def test_a_valid_config_loads() -> None:
    config = load_data({"version": 1, "virtual_services": [svc()]})
    assert config.virtual_services[0].label == "Web"


def test_ten_mistakes_give_ten_messages_with_paths() -> None:
    with pytest.raises(ConfigError) as info:
        load_text((DATA / "ten-mistakes.yaml").read_text(), "ten-mistakes.yaml")
    found = {p.path: p.message for p in info.value.problems}
    # ten mistakes, eleven messages: the VIP:port clash is told to both services
    assert len(info.value.problems) == 11, str(info.value)
    expected = {
        "node.statedir": "did you mean 'state_dir'",
        "virtual_services[0].vip": "'192.168.85.300' is not a valid IPv4 or IPv6 address",
        "virtual_services[0].health_check.port": "several ports (4000, 5000)",
        "virtual_services[0].real_servers[0].port": (
            "l4-dr cannot translate ports (VIP ports 4000, 5000, real server port 104)"
        ),
        "virtual_services[0].real_servers[1].label": "'Srv1' is already the label of real server 1",
        "virtual_services[1].persistence.type": "http-cookie needs mode l7-http, not l4-nat",
        "virtual_services[1].health_check.timeout": "longer than the interval",
        "virtual_services[1].real_servers[0].weight": "must be 65535 or less (got 70000)",
        "virtual_services[1].ports": "already used by the virtual service McK-Cardiology",
        "virtual_services[2].ports": "already used by the virtual service McK-RadiologyManager",
        "virtual_services[2].health_check.called_ae": "DICOM allows at most 16",
    }
    for path, text in expected.items():
        assert text in found[path], (path, found.get(path))
    assert str(info.value).startswith("ten-mistakes.yaml: 11 problems")


def test_dr_refuses_port_translation_with_the_example_message() -> None:
    found = problems(
        svc(mode="l4-dr", real_servers=[{"label": "A", "address": "10.0.0.1", "port": 8080}])
    )
    assert found["virtual_services[0].real_servers[0].port"].startswith(
        "l4-dr cannot translate ports (VIP port 80, real server port 8080)"
    )


def test_dr_allows_the_same_port_and_nat_allows_translation() -> None:
    rs = [{"label": "A", "address": "10.0.0.1", "port": 80}]
    load_data({"virtual_services": [svc(mode="l4-dr", real_servers=rs)]})
    rs = [{"label": "A", "address": "10.0.0.1", "port": 8080}]
    load_data({"virtual_services": [svc(mode="l4-nat", real_servers=rs)]})


def test_cookie_persistence_only_in_l7_http() -> None:
    found = problems(svc(mode="l7-tcp", persistence={"type": "http-cookie"}))
    assert "http-cookie needs mode l7-http" in found["virtual_services[0].persistence.type"]
    load_data({"virtual_services": [svc(persistence={"type": "http-cookie"})]})


def test_a_connection_budget_only_in_l7_modes() -> None:
    found = problems(svc(mode="l4-nat", max_connections=100))
    assert "needs an l7 mode" in found["virtual_services[0].max_connections"]
    config = load_data({"virtual_services": [svc(max_connections=100)]})
    assert config.virtual_services[0].max_connections == 100


def test_one_vip_port_for_one_service_but_other_protocols_and_ports_are_fine() -> None:
    found = problems(svc(), svc(label="Other", ports=[80, 443]))
    assert "already used by the virtual service Web " in found["virtual_services[1].ports"]
    load_data({"virtual_services": [svc(), svc(label="Other", ports=[443])]})
    load_data(
        {
            "virtual_services": [
                svc(mode="l4-nat"),
                svc(label="Udp", mode="l4-nat", protocol="udp"),
            ]
        }
    )


def test_a_wildcard_proxy_listener_clashes_with_a_specific_vip() -> None:
    found = problems(svc(), svc(label="Any", vip="0.0.0.0"))
    assert "already used" in found["virtual_services[1].ports"]
    # Either order, the first earlier clash named; other families and ports are fine.
    found = problems(
        svc(label="Any", vip="0.0.0.0", ports=[80, 443], health_check={"type": "none"}),
        svc(label="V6", vip="::1"),
        svc(label="B", vip="127.0.0.31", ports=[443]),
        svc(label="C", vip="127.0.0.31", ports=[8080, 443], health_check={"type": "none"}),
    )
    # each clash is told on both of its services, naming the other
    assert set(found) == {f"virtual_services[{i}].ports" for i in (0, 2, 3)}
    assert (
        "443/tcp is already used by the virtual service Any " in found["virtual_services[3].ports"]
    )


def test_services_are_checked_against_each_other_in_one_pass() -> None:
    # 20,000 services on one VIP: comparing every pair took minutes (the API validates what a
    # readonly caller sends); with an index it is a matter of seconds.
    many = [svc(label=f"S{i}", ports=[i + 1], real_servers=[]) for i in range(20_000)]
    found = problems(*many, svc(label="Late", ports=[20_000]))
    assert found == {
        "virtual_services[20000].ports": "127.0.0.30 port 20000/tcp is already used by "
        "the virtual service S19999 (VIP 127.0.0.30, ports 20000)",
        "virtual_services[19999].ports": "127.0.0.30 port 20000/tcp is already used by "
        "the virtual service Late (VIP 127.0.0.30, ports 20000)",
    }


def test_labels_are_unique() -> None:
    found = problems(svc(), svc(ports=[8080]))
    assert found["virtual_services[1].label"] == (
        "'Web' is already the label of virtual service 1 (VIP 127.0.0.30): labels must be unique"
    )
    dup = [{"label": "A", "address": "10.0.0.1"}, {"label": "A", "address": "10.0.0.2"}]
    found = problems(svc(real_servers=dup))
    message = found["virtual_services[0].real_servers[1].label"]
    assert "already the label of real server 1" in message


def test_the_same_real_server_twice_is_refused() -> None:
    dup = [{"label": "A", "address": "10.0.0.1"}, {"label": "B", "address": "10.0.0.1"}]
    found = problems(svc(real_servers=dup))
    assert (
        "already in this service as real server A"
        in (found["virtual_services[0].real_servers[1].address"])
    )


def test_check_port_needed_with_several_ports() -> None:
    found = problems(svc(mode="l7-tcp", ports=[4000, 5000]))
    assert "say which port" in found["virtual_services[0].health_check.port"]
    # a check port, or real servers that each name a port, settle it
    load_data(
        {
            "virtual_services": [
                svc(
                    mode="l7-tcp",
                    ports=[4000, 5000],
                    health_check={"type": "connect", "port": 5000},
                )
            ]
        }
    )
    rs = [{"label": "A", "address": "10.0.0.1", "port": 104}]
    load_data({"virtual_services": [svc(mode="l7-tcp", ports=[4000, 5000], real_servers=rs)]})
    load_data(
        {
            "virtual_services": [
                svc(mode="l7-tcp", ports=[4000, 5000], health_check={"type": "none"})
            ]
        }
    )


def test_check_port_is_needed_by_each_check_of_an_all_check() -> None:
    check = {
        "type": "all",
        "checks": [{"type": "connect", "port": 4000}, {"type": "http", "path": "/"}],
    }
    found = problems(svc(mode="l7-tcp", ports=[4000, 5000], health_check=check))
    assert "http check" in found["virtual_services[0].health_check.checks[1].port"]


def test_tls_files_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "vip.pem"
    cert.write_text("not checked here")
    tls = {"certificates": [{"certificate": str(cert), "key": str(tmp_path / "missing.key")}]}
    with pytest.raises(ConfigError) as info:
        load_data({"virtual_services": [svc(tls=tls)]}, file_exists=Path.is_file)
    (problem,) = info.value.problems
    assert problem.path == "virtual_services[0].tls.certificates[0].key"
    assert "no such file" in problem.message


def test_tls_and_reencrypt_need_l7_http() -> None:
    tls = {"certificates": [{"certificate": "/x.pem"}], "ports": [443]}
    rs = [{"label": "A", "address": "10.0.0.1", "reencrypt": True}]
    found = problems(svc(mode="l7-tcp", tls=tls, real_servers=rs))
    assert "TLS termination needs mode l7-http" in found["virtual_services[0].tls"]
    assert "not one of the VIP's ports" in found["virtual_services[0].tls.ports"]
    assert "re-encryption needs" in found["virtual_services[0].real_servers[0].reencrypt"]


def test_l7_dicom_may_terminate_tls() -> None:
    # DICOM TLS (PS3.15 Annex B, port 2762): the proxy reads the RQ from the decrypted stream.
    tls = {"certificates": [{"certificate": "/x.pem"}], "ports": [2762]}
    config = load_data(
        {"version": 1, "virtual_services": [svc(mode="l7-dicom", ports=[2762], tls=tls)]}
    )
    assert config.virtual_services[0].tls is not None
    # Re-encryption to the archive too, when every port is TLS (the TLS relay carries it)...
    rs = [{"label": "A", "address": "10.0.0.1", "reencrypt": True}]
    data = svc(mode="l7-dicom", ports=[2762], tls=tls, real_servers=rs)
    assert load_data({"version": 1, "virtual_services": [data]}).virtual_services[0].tls
    # ...but not when a plaintext port would relay with splice.
    tls_one = {"certificates": [{"certificate": "/x.pem"}], "ports": [2762]}
    found = problems(svc(mode="l7-dicom", ports=[104, 2762], tls=tls_one, real_servers=rs))
    assert "TLS on every port" in found["virtual_services[0].real_servers[0].reencrypt"]


def test_kernel_modes_cannot_mix_families_or_use_udp_in_l7() -> None:
    rs = [{"label": "A", "address": "2001:db8::5"}]
    found = problems(
        svc(mode="l4-nat", real_servers=rs), svc(label="U", ports=[81], protocol="udp")
    )
    assert "cannot mix IPv4 and IPv6" in found["virtual_services[0].real_servers[0].address"]
    assert "udp needs a layer 4 mode" in found["virtual_services[1].protocol"]
    load_data({"virtual_services": [svc(mode="l7-tcp", real_servers=rs)]})  # a proxy can


def test_connection_thresholds() -> None:
    rs = [
        {"label": "A", "address": "10.0.0.1", "min_connections": 5},
        {"label": "B", "address": "10.0.0.2", "min_connections": 50, "max_connections": 10},
    ]
    found = problems(svc(real_servers=rs))
    assert "needs max_connections" in found["virtual_services[0].real_servers[0].min_connections"]
    assert "above max_connections" in found["virtual_services[0].real_servers[1].min_connections"]


def test_duplicate_ports_in_one_service() -> None:
    assert "listed twice" in problems(svc(ports="80,80"))["virtual_services[0].ports"]


def test_an_enabled_ha_node_needs_interface_peer_and_secret() -> None:
    found = problems(svc(), node={"ha": {"enabled": True}})
    assert "interface" in found["node.ha.interface"]
    assert "peer" in found["node.ha.peers"]
    assert "secret" in found["node.ha.secret"]
    ok = {"enabled": True, "interface": "eth0", "peer": "10.0.0.3", "secret": "s" * 16}
    ha = c.HASettings.model_validate(ok)
    assert [str(p) for p in ha.peers] == ["10.0.0.3"]  # `peer:` is one of `peers:`
    assert ha_problems(ha) == []


def test_ha_peer_cannot_be_this_node() -> None:
    ha = {"enabled": True, "interface": "eth0", "secret": "s" * 16}
    found = problems(svc(), node={"ha": {**ha, "address": "10.0.0.2", "peers": ["10.0.0.2"]}})
    assert "own address" in found["node.ha.peers"]


def test_ha_address_and_peers_speak_one_family() -> None:
    ha = {"enabled": True, "interface": "eth0", "secret": "s" * 16}
    found = problems(svc(), node={"ha": {**ha, "address": "10.0.0.2", "peers": ["2001:db8::3"]}})
    assert "all IPv4 or all IPv6" in found["node.ha.peers"]


def test_unknown_check_type_lists_the_choices() -> None:
    found = problems(svc(health_check={"type": "ping"}))
    message = found["virtual_services[0].health_check"]
    assert "'ping'" in message and "dicom-echo" in message


def test_a_broken_service_still_gets_its_rules_checked() -> None:
    rs = [{"label": "A", "address": "10.0.0.1", "port": 8080, "weight": -1}]
    found = problems(svc(vip="nope", mode="l4-dr", real_servers=rs))
    assert "virtual_services[0].vip" in found
    assert "virtual_services[0].real_servers[0].weight" in found
    assert "l4-dr cannot translate" in found["virtual_services[0].real_servers[0].port"]


def test_a_bad_check_does_not_add_derived_noise() -> None:
    found = problems(svc(mode="l7-tcp", ports=[4000, 5000], health_check={"port": 5000}))
    assert found == {"virtual_services[0].health_check": "a 'type' is required here"}


def test_missing_required_settings_are_named() -> None:
    found = problems({"label": "X", "ports": [80]})
    assert found["virtual_services[0].vip"] == "required setting is missing"
    assert found["virtual_services[0].mode"] == "required setting is missing"


def test_yaml_errors_name_the_line_and_duplicate_keys_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("version: 1\nvirtual_services: [\n", "x.yaml")
    assert info.value.problems[0].line == 3
    assert str(info.value.problems[0]).startswith("line 3: column 1: ")
    text = "virtual_services:\n- label: a\n  label: b\n"
    with pytest.raises(ConfigError, match="duplicate key 'label'"):
        parse_yaml(text)


def test_non_mapping_and_empty_configs() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_data([1, 2])
    assert load_data(None).virtual_services == []
    # A file with no settings at all is refused: an emptied file must not stop every service.
    for text in ("", "\n", "# only a comment\n"):
        with pytest.raises(ConfigError, match="holds no settings"):
            load_text(text, "pacslb.yaml")
    assert load_text("virtual_services: []\n").virtual_services == []


def test_format_path() -> None:
    assert format_path(["virtual_services", 2, "real_servers", 0, "port"]) == (
        "virtual_services[2].real_servers[0].port"
    )


def test_dump_text_round_trips_the_profiles() -> None:
    from pacslb.core.validate import dump_text
    from pacslb.profiles import mckesson

    for variant in ("dr", "nat-l7", "proxy"):
        data, examples = mckesson.build(variant, {}, {})
        config = load_text(mckesson.render(data, variant, examples))
        text = dump_text(config)
        assert load_text(text) == config
        assert "ports: [4000, 5000]" in text


# --- issue 15 item 5: messages an operator can act on -------------------------------------

RADIOLOGY = """\
version: 1
virtual_services:
  - label: McK-Radiology_Web
    vip: 192.168.85.40
    ports: [80]
    mode: l7-http
    schedular: wlc
    health_check: {type: http, path: cis/index.html}
    real_servers:
      - {label: McK-Radiology_Srv1, address: 192.168.85.200, weight: -1}
      - label: McK-Radiology_Srv2
        address: 192.168.85.201
        min_connections: 1.5
  - label: McK-Radiology_DICOM
    vip: 192.168.85.40
    ports: [104, 80]
    mode: l4-nat
  - label: McK-Cardiology
    vip: 192.168.85.50
    ports: [104]
    mode: l4-natt
"""


def located_problems(text: str) -> list[Any]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "pacslb.yaml")
    return list(info.value.problems)


def by_where(text: str) -> dict[str, Any]:
    return {p.where: p for p in located_problems(text)}


def test_problems_are_named_by_label_with_the_machine_path_kept_beside() -> None:
    found = by_where(RADIOLOGY)
    check = found["McK-Radiology_Web › health_check.path"]
    assert check.path == "virtual_services[0].health_check.path"
    weight = found["McK-Radiology_Web › McK-Radiology_Srv1 › weight"]
    assert weight.path == "virtual_services[0].real_servers[0].weight"
    assert weight.to_json() == {
        "path": "virtual_services[0].real_servers[0].weight",
        "where": "McK-Radiology_Web › McK-Radiology_Srv1 › weight",
        "line": 10,
        "message": weight.message,
    }


def test_problems_give_the_line_of_the_file() -> None:
    found = by_where(RADIOLOGY)
    assert found["McK-Radiology_Web › schedular"].line == 7
    assert found["McK-Radiology_Web › health_check.path"].line == 8
    assert found["McK-Radiology_Web › McK-Radiology_Srv2 › min_connections"].line == 13
    assert found["McK-Cardiology › mode"].line == 21
    text = str(found["McK-Radiology_Web › health_check.path"])
    assert text.startswith("McK-Radiology_Web › health_check.path (line 8): ")


def test_pydantic_wording_is_translated_into_what_is_wanted() -> None:
    found = by_where(RADIOLOGY)
    messages = "\n".join(p.message for p in found.values())
    for jargon in ("should match pattern", "Input should be", "greater than or equal", "^/"):
        assert jargon not in messages
    assert found["McK-Radiology_Web › health_check.path"].message.startswith(
        "must start with / and contain no spaces"
    )
    assert found["McK-Radiology_Web › McK-Radiology_Srv1 › weight"].message == (
        "must be 0 or more (got -1)"
    )
    srv2 = found["McK-Radiology_Web › McK-Radiology_Srv2 › min_connections"]
    assert srv2.message == "must be a whole number (got 1.5)"
    label = problems(svc(real_servers=[{"label": "Srv 1", "address": "10.0.0.1"}]))
    assert label["virtual_services[0].real_servers[0].label"].startswith(
        "must be 1-64 letters, digits"
    )
    assert problems(svc(ports=[0]))["virtual_services[0].ports[0]"] == "must be 1 or more (got 0)"


def test_an_unknown_key_in_a_service_gets_the_services_keys_and_a_close_match() -> None:
    message = by_where(RADIOLOGY)["McK-Radiology_Web › schedular"].message
    assert "did you mean 'scheduler'?" in message
    assert "allowed here: dicom, fallback, health_check, label, max_connections, mode" in message
    assert "virtual_services" not in message


def test_did_you_mean_at_every_level() -> None:
    found = by_where(RADIOLOGY)
    assert "did you mean 'l4-nat'?" in found["McK-Cardiology › mode"].message
    check = problems(svc(health_check={"type": "dicom-echoo"}))["virtual_services[0].health_check"]
    assert "did you mean 'dicom-echo'?" in check
    rs = [{"label": "A", "address": "10.0.0.1", "wieght": 5}]
    found_rs = problems(svc(real_servers=rs))["virtual_services[0].real_servers[0].wieght"]
    assert "did you mean 'weight'?" in found_rs
    assert "allowed here: address, ae_title, label" in found_rs
    timeouts = problems(svc(timeouts={"idel": 5}))["virtual_services[0].timeouts.idel"]
    assert "did you mean 'idle'?" in timeouts
    # a setting written at the wrong level (indented wrongly) is told where it belongs
    with pytest.raises(ConfigError) as info:
        load_data({"scheduler": "wlc"})
    assert "'scheduler' is a setting of a virtual service, not here" in (
        info.value.problems[0].message
    )
    rs = [{"label": "A", "address": "10.0.0.1", "interval": 5}]
    found_rs = problems(svc(real_servers=rs))["virtual_services[0].real_servers[0].interval"]
    assert "'interval' is a setting of a health check, not here" in found_rs


def test_a_vip_port_clash_names_the_other_service_on_each_side() -> None:
    found = by_where(RADIOLOGY)
    web = found["McK-Radiology_Web › ports"].message
    dicom = found["McK-Radiology_DICOM › ports"].message
    assert "already used by the virtual service McK-Radiology_DICOM" in web
    assert "already used by the virtual service McK-Radiology_Web" in dicom


def test_an_entry_without_a_usable_label_is_named_by_its_position() -> None:
    text = "virtual_services:\n  - {vip: 10.0.0.1, ports: [80], mode: l7-tcp}\n"
    (problem,) = located_problems(text)
    assert problem.where == "virtual service 1 › label" and problem.line == 2
    dup = [{"label": "A", "address": "10.0.0.1"}, {"label": "A", "address": "10.0.0.2"}]
    found = {p.where: p.message for p in located_problems_of(svc(real_servers=dup))}
    assert (
        "'A' is already the label of real server 1 (10.0.0.1)"
        in (found["Web › A (real server 2) › label"])
    )


def located_problems_of(*services: dict[str, Any]) -> list[Any]:
    with pytest.raises(ConfigError) as info:
        load_data({"virtual_services": list(services)})
    return list(info.value.problems)


def test_flow_style_is_for_short_collections_of_plain_values() -> None:
    assert flow_style([4000, 5000]) and flow_style({"type": "none"})
    assert not flow_style([{"label": "Srv1"}]) and not flow_style({"x": [1]})
    assert not flow_style({"label": "x" * 80})
