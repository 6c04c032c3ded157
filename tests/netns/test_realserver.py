"""The commands `pacslb realserver --os linux` prints solve the ARP problem: pasted into real
servers that were left untouched, Direct Routing through `pacslb run` then works."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.netns.conftest import Pacslb
from tests.netns.test_doctor import apply_printed, pacslb
from tests.netns.topology import Client, Host, named_servers, one_arm

VIP = "198.18.0.100"


def test_printed_linux_commands_make_direct_routing_work(
    pacslb_in: Callable[[Host, dict[str, Any]], Pacslb],
) -> None:
    with one_arm(servers=2, vip=VIP, dr=False) as topo:
        lb = topo.hosts["lb"]
        printed = pacslb(lb, "realserver", "--vip", VIP, "--os", "linux", "--interface", "eth0")
        assert printed.returncode == 0, printed.stderr
        for name in ("rs1", "rs2"):
            apply_printed(topo.hosts[name], printed.stdout)
            assert topo.hosts[name].run("sysctl", "-n", "net.ipv4.conf.all.arp_ignore") == "1\n"
            assert f"{VIP}/32" in topo.hosts[name].run("ip", "-o", "addr", "show", "dev", "lo")
        named_servers(topo, [80])
        config = {
            "version": 1,
            "virtual_services": [
                {
                    "label": "web",
                    "vip": VIP,
                    "ports": [80],
                    "mode": "l4-dr",
                    "scheduler": "rr",
                    "health_check": {"type": "connect", "interval": 1, "timeout": 1, "rise": 1},
                    "real_servers": [
                        {"label": "rs1", "address": "198.18.0.11"},
                        {"label": "rs2", "address": "198.18.0.12"},
                    ],
                }
            ],
        }
        run = pacslb_in(lb, config)
        run.wait_for(
            "both real servers up",
            lambda: all(run.server("web", rs)["health"] == "up" for rs in ("rs1", "rs2")),
        )
        client = Client(topo.hosts["client"], VIP, 80)
        names = client.once(10)
        assert set(names) == {"rs1", "rs2"}, names
        # The client learned the LB's MAC for the VIP (no real server answered its ARP), and
        # the LB counted the flows it handed on.
        neigh = json.loads(topo.hosts["client"].run("ip", "-j", "neigh", "show", VIP))
        assert [n["lladdr"] for n in neigh] == [lb.mac()]
        run.wait_for(
            "the flows counted",
            lambda: (
                sum(run.server("web", rs)["connections"]["total"] for rs in ("rs1", "rs2")) >= 10
            ),
        )
