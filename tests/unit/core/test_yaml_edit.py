"""Round-trip edits of the operator's config file (issue 15, item 2): comments, key order,
flow-style lists and explicit defaults survive; only what changed is rewritten."""

from __future__ import annotations

from typing import Any

import pytest

from pacslb import config as c
from pacslb.core.validate import dump_data, load_text
from pacslb.core.yaml_edit import EditError, edit_text, guess_indents

PROFILE = """# McKesson Radiology: the guide's example (comments are the operator's)
version: 1
node:
  webui: {listen: "0.0.0.0:9443"}  # the WebUI
virtual_services:
  # DICOM first: the modalities send here
  - label: McK-Radiology_DICOM
    vip: 192.168.85.30
    ports: [4000, 5000]   # C-STORE and C-FIND
    mode: l7-tcp
    scheduler: wlc
    persistence: {type: source-ip, timeout: 3600}
    health_check: {type: connect, port: 5000, interval: 5, timeout: 3, rise: 2, fall: 3}
    real_servers:
      - {label: McK-Radiology_Srv1, address: 192.168.85.200, weight: 100}  # rack A
      - {label: McK-Radiology_Srv2, address: 192.168.85.201, weight: 100}  # rack B
  - label: McK-RadiologyManager
    vip: 192.168.85.40
    ports: [80]
    mode: l7-http
    persistence: {type: http-cookie}
    health_check: {type: http, port: 80, method: GET, path: /cis/index.html, expect: "OK"}
    real_servers:
      - {label: McK-RadiologyMgr_Srv1, address: 10.10.0.210}
      - {label: McK-RadiologyMgr_Srv2, address: 10.10.0.211}
"""


def changed(config: c.Config, service: int, **update: Any) -> c.Config:
    services = list(config.virtual_services)
    services[service] = services[service].model_copy(update=update)
    return config.model_copy(update={"virtual_services": services})


def servers(config: c.Config, service: int) -> list[c.RealServer]:
    return list(config.virtual_services[service].real_servers)


def edit(text: str, new: c.Config) -> str:
    """The edit, checked to hold exactly `new`."""
    out = edit_text(text, load_text(text), new)
    assert dump_data(load_text(out)) == dump_data(new)
    return out


def test_no_change_gives_the_text_back_byte_for_byte() -> None:
    config = load_text(PROFILE)
    assert edit_text(PROFILE, config, config) == PROFILE


def test_a_changed_field_is_the_only_line_that_changes() -> None:
    config = load_text(PROFILE)
    rs = servers(config, 0)
    rs[1] = rs[1].model_copy(update={"weight": 50})
    out = edit(PROFILE, changed(config, 0, real_servers=rs))
    # The comment keeps its column, as ruamel.yaml keeps it.
    assert out == PROFILE.replace("weight: 100}  # rack B", "weight: 50}   # rack B")


def test_flow_lists_explicit_defaults_and_quotes_are_kept() -> None:
    config = load_text(PROFILE)
    out = edit(PROFILE, changed(config, 0, ports=[4000, 5001]))
    assert "    ports: [4000, 5001]   # C-STORE and C-FIND\n" in out
    assert "    scheduler: wlc\n" in out  # an explicit default stays
    assert "weight: 100}  # rack A" in out
    assert '{listen: "0.0.0.0:9443"}  # the WebUI' in out  # quotes and comment as written
    check = config.virtual_services[1].health_check
    assert isinstance(check, c.HttpCheck)
    out = edit(PROFILE, changed(config, 1, health_check=check.model_copy(update={"expect": "UP"})))
    assert 'path: /cis/index.html, expect: "UP"}' in out  # same quotes, same place


def test_a_changed_default_is_written_where_the_operator_wrote_it() -> None:
    config = load_text(PROFILE)
    out = edit(PROFILE, changed(config, 0, scheduler=c.SchedulerName.WRR))
    assert out == PROFILE.replace("scheduler: wlc", "scheduler: wrr")
    back = edit(out, changed(load_text(out), 0, scheduler=c.SchedulerName.WLC))
    assert back == PROFILE  # back to the default: written out, as the operator had it


def test_a_setting_the_file_left_out_goes_in_the_models_order() -> None:
    config = load_text(PROFILE)
    out = edit(PROFILE, changed(config, 1, scheduler=c.SchedulerName.LC))
    assert "    mode: l7-http\n    scheduler: lc\n    persistence: {type: http-cookie}\n" in out


def test_added_and_removed_servers_and_services() -> None:
    config = load_text(PROFILE)
    rs = servers(config, 0)
    del rs[0]
    rs.append(c.RealServer(label="McK-Radiology_Srv3", address="192.168.85.202", port=104))
    new = changed(config, 0, real_servers=rs)
    added = c.VirtualService(
        label="McK-Cardiology",
        vip="192.168.85.50",
        ports=[443],
        mode=c.Mode.L7_TCP,
        real_servers=[c.RealServer(label="Cardio1", address="10.10.0.220")],
    )
    new = new.model_copy(update={"virtual_services": [*new.virtual_services[:1], added]})
    out = edit(PROFILE, new)
    assert "McK-Radiology_Srv1" not in out and "rack A" not in out
    assert "weight: 100}  # rack B\n      - {label: McK-Radiology_Srv3, address: " in out
    assert "McK-RadiologyManager" not in out
    assert out.endswith(
        "  - label: McK-Cardiology\n"
        "    vip: 192.168.85.50\n"
        "    ports: [443]\n"
        "    mode: l7-tcp\n"
        "    persistence: {type: none}\n"  # as dump_text writes a new service
        "    health_check: {type: connect}\n"
        "    real_servers:\n"
        "      - {label: Cardio1, address: 10.10.0.220}\n"
    )
    assert out.startswith(PROFILE[: PROFILE.index("    real_servers:")])  # comments above kept


def test_a_renamed_service_keeps_its_place_and_comments() -> None:
    config = load_text(PROFILE)
    out = edit(PROFILE, changed(config, 0, label="McK-Radiology_PACS"))
    assert out == PROFILE.replace("label: McK-Radiology_DICOM", "label: McK-Radiology_PACS")


def test_a_changed_check_type_drops_the_old_kinds_settings() -> None:
    config = load_text(PROFILE)
    out = edit(PROFILE, changed(config, 1, health_check=c.ConnectCheck(port=80)))
    assert "    health_check: {type: connect, port: 80}\n" in out


def test_ports_spelled_as_text_stay_text() -> None:
    text = PROFILE.replace("ports: [4000, 5000]", 'ports: "4000-4002"')
    config = load_text(text)
    out = edit(text, changed(config, 0, ports=[4000, 4001, 4002, 4003, 5000]))
    assert 'ports: "4000-4003,5000" # C-STORE and C-FIND' in out  # the comment's column kept


def test_block_style_and_indentless_sequences_are_kept() -> None:
    text = """version: 1
virtual_services:
- label: Web
  vip: 127.0.0.30
  ports:
  - 80
  - 81
  mode: l7-http
  health_check:
    type: none
  real_servers:
  - label: Srv1   # first
    address: 127.0.0.1
"""
    assert guess_indents(text) == (2, 2, 0)
    config = load_text(text)
    rs = [*servers(config, 0), c.RealServer(label="Srv2", address="127.0.0.2")]
    out = edit(text, changed(config, 0, ports=[80, 82], real_servers=rs))
    assert out == text.replace("  - 81\n", "  - 82\n") + "  - label: Srv2\n    address: 127.0.0.2\n"


def test_text_that_is_not_the_running_config_is_refused() -> None:
    config = load_text(PROFILE)
    with pytest.raises(EditError):
        edit_text("- just a list\n", config, config)
    fewer = PROFILE[: PROFILE.index("  - label: McK-RadiologyManager")]
    with pytest.raises(EditError):
        edit_text(fewer, config, changed(config, 1, label="X"))


def test_a_deleted_entry_keeps_the_comments_that_introduce_the_next() -> None:
    text = PROFILE.replace("  # rack A\n", "  # rack A\n      # Srv2: the newer one\n").replace(
        "  - label: McK-RadiologyManager\n",
        "  # The manager, on port 80\n  - label: McK-RadiologyManager\n",
    )
    config = load_text(text)
    rs = servers(config, 0)[1:]
    out = edit(text, changed(config, 0, real_servers=rs))
    assert "      # Srv2: the newer one\n      - {label: McK-Radiology_Srv2," in out
    assert "rack A" not in out
    without = config.model_copy(update={"virtual_services": config.virtual_services[1:]})
    out = edit(text, without)
    assert "  # The manager, on port 80\n  - label: McK-RadiologyManager\n" in out
    assert "McK-Radiology_DICOM" not in out


def test_a_profile_file_is_edited_line_by_line() -> None:
    """The file `pacslb profile` (and so `make run`) writes keeps every untouched line through
    an API change: it indents nested lists as the top-level one, the one layout the editor
    keeps (a first change once re-indented all 21 real-server lines of the demo)."""
    from pacslb.profiles import mckesson

    data, examples = mckesson.build("proxy")
    text = mckesson.render(data, "proxy", examples)
    old = load_text(text)
    plain = dump_data(old)
    servers = plain["virtual_services"][2]["real_servers"]
    servers.append({"label": "Srv3", "address": "10.10.0.9"})
    edited = edit_text(text, old, c.Config.model_validate(plain))
    before, after = text.splitlines(), edited.splitlines()
    assert [line for line in after if line not in before] == [
        "      - {label: Srv3, address: 10.10.0.9}"
    ]
    assert [line for line in before if line not in after] == []


@pytest.mark.parametrize("word", ["On", "yes", "No", "Off", "null", "1_000"])
def test_words_yaml_1_1_reads_as_other_types_are_quoted(word: str) -> None:
    """ruamel.yaml writes YAML 1.2, where `On` is text; pacslb reads YAML 1.1 (PyYAML), where
    it is true. A server renamed `On`, or added as `On`, must read back as that text."""
    config = load_text(PROFILE)
    renamed = servers(config, 0)
    renamed[1] = renamed[1].model_copy(update={"label": word})
    added = [*servers(config, 1), renamed[1].model_copy(update={"address": "10.10.0.212"})]
    new = changed(changed(config, 0, real_servers=renamed), 1, real_servers=added)
    out = edit(PROFILE, new)  # checks that the text reads back as `new`
    assert out.count(f"label: '{word}'") == 2, out
