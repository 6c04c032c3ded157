"""Layer 7 persistence across an HA takeover, with real keepalived: a source-IP-persistent
client of an l7-tcp service and a cookie client of an l7-http service reach the same real
server through the node that took over as through the node that failed.

Source-IP persistence is state (the proxy's sticky entries): the active node's entries reach
the passive one by state sync (control/statesync.py carrying the proxy engine's
export_sticky/import_sticky). The clients come back in the reverse order, so that a node
scheduling them afresh (wlc, ties taking turns) would not give each its server by chance.
Cookie persistence is no state at all: the cookie names the server the same way on every node.
In-flight l7 connections are lost in a takeover (as with HAProxy); new ones are what count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.ha_pair import (
    HTTP_VIP,
    Pair,
    check,
    ha_settings,
    start_pair,
    stop_all,
    wait_sole_active,
)
from tests.netns.topology import HA_GATEWAY, ha_two_arm, named_servers

CLIENTS = [f"198.18.1.{21 + i}" for i in range(6)]  # six workstations' addresses
NEWCOMERS = [f"198.18.1.{41 + i}" for i in range(4)]  # first seen after the takeover
PACS_PORT = 4000  # l7-tcp, source-IP persistence
VIEWER_PORT = 80  # l7-http, cookie persistence

# Connects from each source address to VIP:port in the client's namespace and prints the
# name each real server greets with (tests/netns/peer.py's servers say their name first).
WHO = """
import json, socket, sys
vip, port = sys.argv[1], int(sys.argv[2])
seen = {}
for source in sys.argv[3:]:
    s = socket.create_connection((vip, port), timeout=5, source_address=(source, 0))
    s.settimeout(5)
    seen[source] = s.recv(64).decode().strip()
    s.close()
print(json.dumps(seen))
"""


def config(peer: str, priority: int) -> dict[str, Any]:
    servers = [
        {"label": "rs1", "address": "198.18.2.11"},
        {"label": "rs2", "address": "198.18.2.12"},
    ]
    gateway = [{"address": f"{HA_GATEWAY}/24", "interface": "eth1"}]
    return {
        "version": 1,
        "node": {"ha": ha_settings("eth0", peer, priority, 1.0, gateway)},
        "virtual_services": [
            {
                "label": "Pacs",
                "vip": HTTP_VIP,
                "ports": [PACS_PORT],
                "mode": "l7-tcp",
                "persistence": {"type": "source-ip", "timeout": 600},
                "health_check": check(8080),
                "real_servers": [{**rs, "port": 8080} for rs in servers],
            },
            {
                "label": "Viewer",
                "vip": HTTP_VIP,
                "ports": [VIEWER_PORT],
                "mode": "l7-http",
                "persistence": {"type": "http-cookie"},
                "health_check": check(8081),
                "real_servers": [{**rs, "port": 8081} for rs in servers],
            },
        ],
    }


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with ha_two_arm(servers=2) as topo:
        client = topo.hosts["client"]
        for address in CLIENTS + NEWCOMERS:
            client.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
        named_servers(topo, [8080])
        for name in ("rs1", "rs2"):  # an HTTP server whose /who names it
            root = tmp_path / f"www-{name}"
            root.mkdir()
            (root / "who").write_text(name)
            argv = [sys.executable, "-m", "http.server", "8081", "--directory", str(root)]
            topo.hosts[name].popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        configs = {"lb1": config("198.18.1.3", 150), "lb2": config("198.18.1.2", 100)}
        links = {"lb1": ("eth0", "eth1"), "lb2": ("eth0", "eth1")}
        started = start_pair(topo, tmp_path, configs, links, (HTTP_VIP, HA_GATEWAY))
        try:
            yield started
        finally:
            stop_all(started)


def who(pair: Pair, clients: list[str]) -> dict[str, str]:
    out = pair.topo.hosts["client"].run(
        sys.executable, "-c", WHO, HTTP_VIP, str(PACS_PORT), *clients
    )
    return dict(json.loads(out))


def viewer(pair: Pair, jar: Path) -> str:
    """GET /who through the Viewer VIP with a cookie jar: the real server's name."""
    url = f"http://{HTTP_VIP}:{VIEWER_PORT}/who"
    argv = ["curl", "-sS", "--max-time", "5", "-c", str(jar), "-b", str(jar), url]
    return pair.topo.hosts["client"].run(*argv).strip()


def wait_healthy(pair: Pair, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for node in pair.nodes:
        while True:
            states = [
                rs["health"] for svc in node.run.status()["services"] for rs in svc["real_servers"]
            ]
            if states and set(states) == {"up"}:
                break
            assert time.monotonic() < deadline, f"{node.name}: servers not up: {states}"
            time.sleep(0.2)


def test_source_ip_and_cookie_clients_keep_their_servers_across_a_takeover(
    pair: Pair, tmp_path: Path
) -> None:
    active = pair.wait_one_active()
    survivor = pair.other(active)
    wait_healthy(pair)

    active.run.cli("drain", "Pacs", "rs2")
    before = who(pair, CLIENTS)
    assert set(before.values()) == {"rs1"}, before
    active.run.cli("online", "Pacs", "rs2")
    assert who(pair, CLIENTS) == before  # each keeps its server on the active node
    jars = [tmp_path / f"jar{i}" for i in range(6)]
    cookie_before = [viewer(pair, jar) for jar in jars]
    assert set(cookie_before) == {"rs1", "rs2"}, cookie_before

    # The sticky entries reach the passive node: state sync every 0.1 s, the proxy's export
    # at most 1 s old. Then the active node is lost (its links down, no goodbye).
    time.sleep(3.0)
    active.links_down()
    try:
        wait_sole_active(pair, survivor, timeout=15.0)
        after = who(pair, CLIENTS)
        newcomers = who(pair, NEWCOMERS)
        cookie_after = [viewer(pair, jar) for jar in jars]
    finally:
        active.links_up()
    print(f"\nsource-ip before {before}\nsource-ip after  {after}\nnew clients {newcomers}")
    print(f"cookie before {cookie_before}\ncookie after  {cookie_after}")
    assert set(newcomers.values()) == {"rs1", "rs2"}, newcomers  # fresh ones are spread
    assert after == before
    assert cookie_after == cookie_before
