"""l4-nat real servers must send their replies to clients back through the load balancer:
`pacslb doctor` in the LB's namespace names the server whose default gateway is another router
and the one with no default route, and after `pacslb realserver --config`'s commands (the LB as
gateway) it finds nothing wrong with them. Namespaces h8-*, addresses in 198.18.0.0/15."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.netns.test_doctor import apply_printed, pacslb
from tests.netns.topology import Topology, require_root_and_nft

VIP = "198.18.1.100"


class _Topology(Topology):
    """The shared topology builder under this test's own namespace names (h8-*)."""

    def __init__(self) -> None:
        self.tag = f"h8-nat{os.getpid() % 100000}"
        self.switch = f"{self.tag}-sw"
        self.hosts = {}
        self._namespaces = []
        self._ns(self.switch)


@contextlib.contextmanager
def nat_with_wrong_gateways() -> Iterator[Topology]:
    """two_arm()'s shape: clients on 198.18.1.0/24, real servers on 198.18.2.0/24 behind the LB
    (198.18.2.1). rs1 routes back through the LB; rs2's default gateway is another router on
    its segment (198.18.2.254, which has no way back); rs3 has no default route at all."""
    require_root_and_nft()
    topo = _Topology()
    try:
        topo.bridge("br0")
        topo.bridge("br1")
        topo.host("client", ("br0", "198.18.1.10/24"))
        topo.host("lb", ("br0", "198.18.1.2/24"), ("br1", "198.18.2.1/24"))
        topo.host("router", ("br1", "198.18.2.254/24"))
        for i, gateway in ((1, "198.18.2.1"), (2, "198.18.2.254"), (3, None)):
            rs = topo.host(f"rs{i}", ("br1", f"198.18.2.{10 + i}/24"))
            if gateway:
                rs.run("ip", "route", "add", "default", "via", gateway)
        yield topo
    finally:
        topo.close()


def nat_config(path: Path) -> Path:
    config: dict[str, Any] = {
        "version": 1,
        "virtual_services": [
            {
                "label": "Web",
                "vip": VIP,
                "ports": [80],
                "mode": "l4-nat",
                "real_servers": [
                    {"label": f"rs{i}", "address": f"198.18.2.{10 + i}", "port": 8080}
                    for i in (1, 2, 3)
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def nat_findings(lb: Any, config: Path) -> dict[str, str]:
    done = pacslb(lb, "doctor", "--json", str(config))
    report = json.loads(done.stdout)
    return {f["subject"]: f["level"] for f in report["findings"] if f["check"] == "nat-route"}


def test_doctor_names_the_nat_real_server_whose_route_back_bypasses_the_lb(
    tmp_path: Path,
) -> None:
    with nat_with_wrong_gateways() as topo:
        lb = topo.hosts["lb"]
        config = nat_config(tmp_path / "nat.yaml")
        assert nat_findings(lb, config) == {
            "Web/rs1 (198.18.2.11)": "ok",
            "Web/rs2 (198.18.2.12)": "problem",
            "Web/rs3 (198.18.2.13)": "problem",
        }
        table = pacslb(lb, "doctor", str(config))
        assert table.returncode == 1
        assert "Web/rs2 (198.18.2.12)" in table.stdout
        assert "its default gateway is not the load balancer" in table.stdout
        assert "fix: on rs2: make 198.18.2.1 its default gateway" in table.stdout

        # What `pacslb realserver --config` prints on the LB names the LB's own address on the
        # servers' segment as their gateway; pasted on rs2 and rs3, the route back is right.
        printed = pacslb(lb, "realserver", "--config", str(config), "--os", "linux")
        assert printed.returncode == 0, printed.stderr
        assert "ip route replace default via 198.18.2.1 dev eth0" in printed.stdout
        for name in ("rs2", "rs3"):
            apply_printed(topo.hosts[name], printed.stdout)
        assert set(nat_findings(lb, config).values()) == {"ok"}
