"""`pacslb run`'s start-up decisions: the last good revision, and the placement check."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacslb import config as c
from pacslb.control import doctor
from pacslb.control.startup import blocking, last_good, state_dir_of
from pacslb.control.store import ConfigStore, read_config
from pacslb.engines.host import Route
from pacslb.errors import ConfigError

GOOD = """version: 1
node: {{state_dir: {state}}}
virtual_services:
  - label: Web
    vip: 127.10.10.40
    ports: [8080]
    mode: l7-tcp
    real_servers:
      - {{label: Srv1, address: 127.10.10.2, port: {port}}}
"""
BROKEN = GOOD.replace("mode: l7-tcp", "mode: l7-tcp\n    schedular: wlc")


def broken_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    return caught.value


def test_the_newest_good_revision_runs_and_the_file_is_named(tmp_path: Path) -> None:
    state, path = tmp_path / "state", tmp_path / "pacslb.yaml"
    store = ConfigStore(state)
    store.save(GOOD.format(state=state, port=1), "first")
    store.save(GOOD.format(state=state, port=2), "second")
    path.write_text(BROKEN.format(state=state, port=3))
    error = broken_error(path)

    assert state_dir_of(path) == state  # read from the broken file all the same
    found = last_good(path, state, error)
    assert found is not None
    text, config, broken = found
    assert broken.revision == 2 and config.virtual_services[0].real_servers[0].port == 2
    assert text == store.text(2)
    assert len(broken.problems) == 1 and "schedular" in broken.problems[0]
    assert f"{path} has 1 problem " in broken.reason() and "revision 2" in broken.reason()


def test_a_revision_no_longer_valid_here_is_passed_over(tmp_path: Path) -> None:
    state, path = tmp_path / "state", tmp_path / "pacslb.yaml"
    store = ConfigStore(state)
    store.save(GOOD.format(state=state, port=1), "first")
    script = tmp_path / "web.pem"
    script.write_text("x")
    check = f"    health_check: {{type: external, command: {script}}}\n"
    with_script = GOOD.format(state=state, port=2).replace(
        "    real_servers:", check + "    real_servers:"
    )
    store.save(with_script, "second", base_dir=tmp_path)
    script.unlink()  # the script it names is gone: it would not validate now
    path.write_text(BROKEN.format(state=state, port=3))
    found = last_good(path, state, broken_error(path))
    assert found is not None and found[2].revision == 1


def test_no_revision_no_fallback(tmp_path: Path) -> None:
    path = tmp_path / "pacslb.yaml"
    path.write_text(BROKEN.format(state=tmp_path / "state", port=3))
    assert last_good(path, tmp_path / "state", broken_error(path)) is None


def test_state_dir_of_a_file_that_does_not_parse_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "pacslb.yaml"
    path.write_text("virtual_services: [\n")
    assert state_dir_of(path) == c.Node.model_fields["state_dir"].default


class Routes:
    """A host whose routing table answers from a dict (address -> Route)."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    def route(self, address: str) -> Route:
        return self.routes[address]


def dr_config() -> c.Config:
    return c.Config.model_validate(
        {
            "virtual_services": [
                {
                    "label": "DICOM",
                    "vip": "198.18.0.100",
                    "ports": [4000],
                    "mode": "l4-dr",
                    "real_servers": [
                        {"label": "near", "address": "198.18.0.11"},
                        {"label": "far", "address": "198.19.5.5"},
                        {"label": "me", "address": "198.18.0.1"},
                    ],
                }
            ]
        }
    )


def test_placement_blocks_on_dr_servers_off_the_segment_only() -> None:
    host = Routes(
        {
            "198.18.0.11": Route("eth1", None, False),
            "198.19.5.5": Route("eth0", "198.18.0.254", False),
            "198.18.0.1": Route("lo", None, True),
        }
    )
    found = blocking(doctor.placement(dr_config(), host))  # type: ignore[arg-type]
    subjects = {f.subject for f in found if f.check == "dr-route"}
    assert subjects == {"DICOM/far (198.19.5.5)", "DICOM/me (198.18.0.1)"}


def test_placement_asks_nothing_of_a_proxy_only_config() -> None:
    config = c.Config.model_validate(
        {
            "virtual_services": [
                {
                    "label": "Web",
                    "vip": "127.10.10.40",
                    "ports": [80],
                    "mode": "l7-http",
                    "real_servers": [{"label": "a", "address": "127.10.10.2"}],
                }
            ]
        }
    )
    assert doctor.placement(config, Routes({})) == []  # type: ignore[arg-type]
