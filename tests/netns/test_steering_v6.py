"""Issue 16, item 5 (l7): the client steering program reads IPv6 source addresses right.

An IPv6 listener's selector loads the source address's four words from the IPv6 header
(SKF_NET_OFF + 8), masks them to the persistence granularity and folds them (core/steering.py).
Only ::1 exists on the host's loopback, so this runs in a namespace of its own with clients on
2001:2:4::/64 and other /64s of 2001:2::/48 (the IPv6 benchmarking range): for /128, /64 and
/56 the socket the kernel picks is the one worker_index names."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import pytest

from tests.netns.topology import ROOT, Host, Topology, require_root_and_nft

SERVER = "2001:2:4::1"
CLIENTS = [f"2001:2:4::{i:x}" for i in range(0x10, 0x30)] + [
    f"2001:2:4:{i:x}::1" for i in range(1, 9)
]

PROBE = """
import json, select, socket, sys
from pacslb.core.steering import program, worker_index
from pacslb.proxy.steering import attach
server, clients = sys.argv[1], json.loads(sys.argv[2])
def listener():
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((server, 24400)); s.listen(64); s.setblocking(False)
    return s
socks = [listener() for _ in range(3)]
out = {}
for granularity in (128, 64, 56):
    attach(socks[0], program(6, 3, granularity))
    got = []
    for client in clients:
        with socket.socket(socket.AF_INET6) as conn:
            conn.bind((client, 0))
            conn.connect((server, 24400))
            ready, _, _ = select.select(socks, [], [], 2)
            ready[0].accept()[0].close()
            got.append(socks.index(ready[0]))
    out[granularity] = [got, [worker_index(c, 3, granularity) for c in clients]]
print(json.dumps(out))
"""


@pytest.fixture
def host() -> Iterator[Host]:
    require_root_and_nft()
    topo = Topology()
    try:
        topo.bridge("br0")
        lb = topo.host("lb", ("br0", "198.18.4.1/24"))
        for address in [SERVER, *CLIENTS]:
            lb.run("ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        yield lb
    finally:
        topo.close()


def test_ipv6_clients_reach_the_socket_worker_index_names(host: Host) -> None:
    env = f"PYTHONPATH={ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    out = json.loads(host.run("env", env, sys.executable, "-c", PROBE, SERVER, json.dumps(CLIENTS)))
    for granularity, (got, expected) in out.items():
        assert got == expected, f"/{granularity}"
    assert len(set(out["128"][0])) == 3  # spread over the three sockets
    assert len(set(out["64"][0][:32])) == 1  # one /64: one socket
    assert len(set(out["56"][0])) == 1  # all within one /56
