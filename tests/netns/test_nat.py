"""l4-nat and l4-snat end to end: clients on 198.18.1.0/24, real servers on 198.18.2.0/24 behind
the LB. NAT: the LB is the servers' gateway and they see the client's own address; SNAT: the
servers have no route back and see the LB's address."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.netns.conftest import Pacslb
from tests.netns.topology import Client, Topology, named_servers, two_arm

VIP = "198.18.1.100"
Start = Callable[..., Pacslb]


def service(mode: str = "l4-nat", **kw: Any) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "label": "Web",
        "vip": VIP,
        "ports": [80],
        "mode": mode,
        "scheduler": "wrr",
        "health_check": {
            "type": "connect",
            "port": 8080,
            "interval": 0.5,
            "timeout": 0.5,
            "rise": 1,
            "fall": 1,
        },
        "real_servers": [
            {"label": "rs1", "address": "198.18.2.11", "port": 8080},
            {"label": "rs2", "address": "198.18.2.12", "port": 8080},
        ],
    }
    svc.update(kw)
    return {"version": 1, "virtual_services": [svc]}


@pytest.fixture(scope="module")
def nat() -> Iterator[Topology]:
    with two_arm(servers=2, gateway=True) as t:
        named_servers(t, [8080])
        yield t


@pytest.fixture
def fresh(nat: Topology) -> Iterator[Topology]:
    yield nat
    nat.hosts["lb"].run("nft", "delete", "table", "ip", "pacslb", check=False)
    nat.hosts["lb"].run("conntrack", "-F", check=False)
    nat.hosts["lb"].run("ip", "addr", "del", f"{VIP}/32", "dev", "eth0", check=False)


def test_nat_translates_the_port_keeps_the_client_address_and_splits_by_weight(
    fresh: Topology, pacslb_in: Start
) -> None:
    cfg = service()
    cfg["virtual_services"][0]["real_servers"][0]["weight"] = 300
    run = pacslb_in(fresh.hosts["lb"], cfg)
    c = Client(fresh.hosts["client"], VIP, 80)
    names = Counter(c.once(40))
    assert abs(names["rs1"] - 30) <= 1 and abs(names["rs2"] - 10) <= 1, names
    assert c.peer() == "198.18.1.10"  # the real server sees the real client
    assert c.bulk(5_000_000) == 5_000_000
    run.wait_for(
        "flow counters",
        lambda: sum(run.connections("Web", rs, "total") for rs in ("rs1", "rs2")) == 42,
    )
    assert run.connections("Web", "rs1", "total") in (30, 31, 32, 33)
    # Both directions cross the LB in NAT, and it counts both: the 5 MB went server -> client.
    run.wait_for(
        "reply bytes",
        lambda: sum(run.connections("Web", rs, "bytes_out") for rs in ("rs1", "rs2")) > 5_000_000,
    )
    assert run.connections("Web", "rs1", "packets_in") > 0


def test_nat_persistence_drain_restart_and_halt(fresh: Topology, pacslb_in: Start) -> None:
    run = pacslb_in(fresh.hosts["lb"], service(persistence={"type": "source-ip", "timeout": 600}))
    c = Client(fresh.hosts["client"], VIP, 80)
    held = c.open(4)
    assert len(set(held)) == 1, held  # one client, one server
    mine = held[0]
    other = "rs2" if mine == "rs1" else "rs1"
    run.wait_for("active flows", lambda: run.connections("Web", mine) == 4)

    # Drained: its persistent client and connections stay; nobody new is sent there.
    run.cli("drain", "Web", mine)
    assert c.ping() == ["ok"] * 4
    assert set(c.once(3)) == {mine}  # persistence keeps the known client on its server

    run.stop()
    assert c.ping() == ["ok"] * 4  # conntrack keeps forwarding without pacslb
    run.start()
    assert c.ping() == ["ok"] * 4
    assert run.server("Web", mine)["admin"] == "drain"

    # Halted: its flows are cut, and the client is scheduled anew despite persistence.
    run.cli("halt", "Web", mine)
    assert set(c.ping()) <= {"reset", "closed", "timeout"}, c.ping()
    assert set(c.once(3)) == {other}


def test_nat_idle_timeout_fits_dicom(fresh: Topology, pacslb_in: Start) -> None:
    pacslb_in(fresh.hosts["lb"], service(timeouts={"idle": 1800}))
    c = Client(fresh.hosts["client"], VIP, 80)
    c.open(1)
    entries = fresh.hosts["lb"].run("conntrack", "-L", "-p", "tcp", "--orig-dst", VIP)
    seconds = [int(f) for f in entries.split() if f.isdigit()]
    # The entry's remaining lifetime is the service's idle timeout (30 min), not 5 days.
    assert any(1700 < s <= 1800 for s in seconds), entries
    c.close()


def test_snat_needs_no_change_on_the_real_servers(pacslb_in: Start) -> None:
    with two_arm(servers=2, gateway=False) as t:
        named_servers(t, [8080])
        run = pacslb_in(t.hosts["lb"], service("l4-snat"))
        c = Client(t.hosts["client"], VIP, 80)
        assert Counter(c.once(10)) == {"rs1": 5, "rs2": 5}
        assert c.peer() == "198.18.2.1"  # the servers answer the LB, which answers the client
        run.wait_for("counters", lambda: run.connections("Web", "rs1", "total") >= 5)


def test_ipv6_nat_translates_and_halts(pacslb_in: Start) -> None:
    from tests.netns.topology import add_ipv6, v6

    vip6 = v6("198.18.1.100")
    with two_arm(servers=2, gateway=False) as t:
        add_ipv6(t, gateway=v6("198.18.2.1"))
        named_servers(t, [8080])
        cfg = service(
            vip=vip6,
            real_servers=[
                {"label": "rs1", "address": v6("198.18.2.11"), "port": 8080},
                {"label": "rs2", "address": v6("198.18.2.12"), "port": 8080},
            ],
        )
        run = pacslb_in(t.hosts["lb"], cfg)
        c = Client(t.hosts["client"], vip6, 80)
        assert Counter(c.once(6)) == {"rs1": 3, "rs2": 3}
        assert c.peer() == v6("198.18.1.10")  # NAT keeps the client's own address
        held = c.open(2)
        run.cli("halt", "Web", held[0])
        assert Counter(zip(held, c.ping(), strict=True))[(held[1], "ok")] == 1
