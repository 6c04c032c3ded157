"""Health survives a config edit that does not change what the check asks of the server.

A real HTTP real server on loopback, the ControlProcess driven by the WebUI's test client: the
servers are checked up, then the operator slows the checks down (interval 60 s) or edits the
threshold: every server keeps its health and its last result at once. Changing the check's path
asks the server something else: its health starts over ("not checked yet")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.procs import free_port, http_peer
from tests.webapp import web_client

from pacslb.control.app import ControlProcess

HOST, HOST2 = "127.10.11.1", "127.10.11.3"


@pytest.fixture
def peer_port() -> Iterator[int]:
    port = free_port(HOST)
    with (
        http_peer(HOST, port, "/ok=200:OK", "/other=200:OK"),
        http_peer(HOST2, port, "/ok=200:OK", "/other=200:OK"),
    ):
        yield port


def config(port: int, check: str) -> str:
    return f"""version: 1
node:
  webui: {{listen: "127.10.11.2:9443"}}
virtual_services:
  - label: Web
    vip: 127.10.11.30
    ports: [8080]
    mode: l7-http
    health_check: {check}
    real_servers:
      - {{label: Srv1, address: {HOST}, port: {port}}}
      - {{label: Srv2, address: {HOST2}, port: {port}, weight: 50}}
"""


def servers(process: ControlProcess) -> dict[str, dict[str, Any]]:
    status = process.status()
    return {rs["label"]: rs for svc in status["services"] for rs in svc["real_servers"]}


def wait_up(process: ControlProcess) -> None:
    deadline = time.monotonic() + 15
    while not all(rs["health"] == "up" for rs in servers(process).values()):
        assert time.monotonic() < deadline, servers(process)
        time.sleep(0.05)


def test_interval_edit_keeps_health_and_a_path_edit_resets_it(
    tmp_path: Path, peer_port: int
) -> None:
    fast = "{type: http, path: /ok, expect: OK, interval: 0.2, timeout: 0.2, rise: 2, fall: 2}"
    with web_client(tmp_path, config(peer_port, fast)) as (client, process):
        portal: Any = client.portal
        wait_up(process)
        before = servers(process)
        assert all(rs["last_check"] is not None for rs in before.values())

        # Slower checks, another timeout and threshold: the next probe is up to 60 s away,
        # and until then each server must still be up with its last result shown.
        slow = "{type: http, path: /ok, expect: OK, interval: 60, timeout: 2, rise: 3, fall: 1}"
        portal.call(process.apply_config, config(peer_port, slow), "slower checks", "test")
        after = servers(process)
        for label, rs in after.items():
            assert rs["health"] == "up", (label, rs)
            assert rs["last_check"] is not None, f"{label}: not checked yet after an interval edit"
            assert rs["effective_weight"] == before[label]["effective_weight"]

        # The check asks for another path: what the server said before no longer applies.
        other = "{type: http, path: /other, expect: OK, interval: 60, timeout: 2, rise: 3, fall: 1}"
        portal.call(process.apply_config, config(peer_port, other), "another path", "test")
        for label, rs in servers(process).items():
            assert rs["health"] == "unknown", (label, rs)
            assert rs["last_check"] is None, label
