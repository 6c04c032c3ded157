"""Issue 14 item 9: sequential new clients on two equal servers land 50/50, not all on the first.

With `wlc` (the default) every client that comes after the previous one has left sees two idle
servers: a tie. IPVS keeps ties on the first server; HAProxy's leastconn puts the server that
just took a connection behind the others of equal load, so clients alternate. The proxy does
the latter, also for new clients of an http-cookie service (whose first server is then theirs
for good). Real `pacslb run`, real HTTP servers; the backends' answers name who served.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import Pacslb
from tests.netns.topology import Client, Topology, named_servers, two_arm
from tests.peers.procs import free_port, http_peer, running, wait_until

VIP = "127.10.6.1"
BACKENDS = ("127.10.6.11", "127.10.6.12")
CLIENTS = 100


def cli(state: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def get(port: int) -> tuple[bytes, bytes]:
    """One new client: a new connection, one request, closed. (head, body)"""
    with socket.create_connection((VIP, port), timeout=5) as sock:
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: pacs\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    return head, body


class Vips:
    def __init__(self, state: Path, ports: dict[str, int]) -> None:
        self.state = state
        self.ports = ports

    def status(self) -> dict[str, Any]:
        return dict(json.loads(cli(self.state, "status", "--json")))

    def totals(self, service: str) -> dict[str, int]:
        svc = next(s for s in self.status()["services"] if s["label"] == service)
        return {rs["label"]: rs["connections"]["total"] for rs in svc["real_servers"]}


@pytest.fixture(scope="module")
def vips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vips]:
    tmp = tmp_path_factory.mktemp("balance")
    backends = [free_port(host) for host in BACKENDS]
    ports = {name: free_port(VIP) for name in ("Web", "Tcp", "Cookie")}
    servers = "\n".join(
        f"      - {{label: Srv{i}, address: {host}, port: {port}}}"
        for i, (host, port) in enumerate(zip(BACKENDS, backends, strict=True), 1)
    )
    check = "{type: http, path: /check, expect: OK, interval: 0.5, timeout: 0.4, rise: 1, fall: 1}"

    def service(label: str, mode: str, extra: str = "") -> str:
        # no scheduler: the default (wlc) is what an operator gets
        return f"""  - label: {label}
    vip: {VIP}
    ports: [{ports[label]}]
    mode: {mode}
    health_check: {check}{extra}
    real_servers:
{servers}
"""

    config, state = tmp / "pacslb.yaml", tmp / "state"
    config.write_text(
        "version: 1\nnode: {webui: {enabled: false}}\nvirtual_services:\n"
        + service("Web", "l7-http")
        + service("Tcp", "l7-tcp")
        + service("Cookie", "l7-http", "\n    persistence: {type: http-cookie}")
    )
    argv = [sys.executable, "-m", "pacslb.cli", "run", str(config), "--state-dir", str(state)]
    with ExitStack() as stack:
        for i, (host, port) in enumerate(zip(BACKENDS, backends, strict=True), 1):
            stack.enter_context(http_peer(host, port, "/check=200:OK", f"/who=200:Srv{i}"))
        stack.enter_context(running(argv, VIP, ports["Web"], log=tmp / "run.log"))
        vips = Vips(state, ports)

        def all_up() -> bool:
            return all(
                rs["health"] == "up" for s in vips.status()["services"] for rs in s["real_servers"]
            )

        wait_until(all_up, 15, "every real server up", step=0.1)
        yield vips


def sequential(port: int) -> tuple[Counter[str], list[bytes]]:
    served: Counter[str] = Counter()
    heads = []
    for _ in range(CLIENTS):
        head, body = get(port)
        served[body.decode()] += 1
        heads.append(head)
    return served, heads


def assert_even(served: Counter[str]) -> None:
    assert sum(served.values()) == CLIENTS
    assert 40 <= served["Srv1"] <= 60 and 40 <= served["Srv2"] <= 60, dict(served)


@pytest.mark.parametrize("service", ["Web", "Tcp"])
def test_sequential_new_clients_spread_evenly(vips: Vips, service: str) -> None:
    before = vips.totals(service)
    served, _ = sequential(vips.ports[service])
    assert_even(served)
    # the proxy's own counters tell the same story as the backends
    after: dict[str, int] = {}

    def counted() -> bool:
        after.update(vips.totals(service))
        return sum(after.values()) - sum(before.values()) == CLIENTS

    wait_until(counted, 10, "the status totals", step=0.2)
    for label in ("Srv1", "Srv2"):
        assert after[label] - before[label] == served[label]


def test_new_cookie_clients_spread_evenly(vips: Vips) -> None:
    served, heads = sequential(vips.ports["Cookie"])
    assert_even(served)
    # each new client was given its server's cookie (so the split is for good)
    assert all(b"set-cookie: pacslb_server=" in h.lower() for h in heads)


# --- the kernel engine (root, network namespaces) ----------------------------------------

L4_VIP = "198.18.1.100"


@pytest.fixture(scope="module")
def nat() -> Iterator[Topology]:
    with two_arm(servers=2, gateway=True) as topo:
        named_servers(topo, [8080])
        yield topo


def test_sequential_new_flows_through_l4_nat_spread_evenly(nat: Topology, tmp_path: Path) -> None:
    """The kernel engine alike. A guard more than a fault: it passed before the proxy's fix
    too, because the kernel picks a slot per new flow with a round-robin counter over an
    interleaved table (core/slots.py), so sequential flows take turns already."""
    config = {
        "version": 1,
        "virtual_services": [
            {
                "label": "Web",
                "vip": L4_VIP,
                "ports": [80],
                "mode": "l4-nat",  # no scheduler: the default wlc
                "health_check": {"type": "connect", "port": 8080, "interval": 0.5, "timeout": 0.5},
                "real_servers": [
                    {"label": "rs1", "address": "198.18.2.11", "port": 8080},
                    {"label": "rs2", "address": "198.18.2.12", "port": 8080},
                ],
            }
        ],
    }
    run = Pacslb(nat.hosts["lb"], tmp_path, config)
    run.start()
    try:
        client = Client(nat.hosts["client"], L4_VIP, 80)
        served = Counter(client.once(CLIENTS))
        assert sum(served.values()) == CLIENTS, served
        assert 40 <= served["rs1"] <= 60 and 40 <= served["rs2"] <= 60, dict(served)
    finally:
        run.stop()
