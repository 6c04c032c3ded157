"""One l7-http service in front of two real HTTP servers: the set-up the proxy worker faults
share (tests/faults/test_workers.py, test_worker_supervision.py, test_stuck_worker.py). Each
test module names its own addresses (HOST for the real servers, VIP); the `backends` fixture
in conftest.py starts the servers on the module's HOST."""

from __future__ import annotations

from pathlib import Path


def write_config(
    path: Path, vip: str, port: int, host: str, backends: list[int], workers: int, spare: bool
) -> None:
    servers = "\n".join(
        f"      - {{label: Srv{i}, address: {host}, port: {p}}}" for i, p in enumerate(backends, 1)
    )
    path.write_text(
        f"""version: 1
node: {{webui: {{enabled: false}}, proxy: {{workers: {workers}, spare: {str(spare).lower()}}}}}
virtual_services:
  - label: Web
    vip: {vip}
    ports: [{port}]
    mode: l7-http
    scheduler: rr
    health_check: {{type: http, path: /check, expect: OK, interval: 0.5, timeout: 0.4}}
    real_servers:
{servers}
"""
    )
