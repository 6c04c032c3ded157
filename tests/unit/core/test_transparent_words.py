"""Transparent mode (source: client) in `pacslb doctor`'s findings and `pacslb realserver`'s
gateway step (core/doctor.py, core/realserver.py): pure, no host."""

from __future__ import annotations

from typing import Any

from pacslb.core import realserver
from pacslb.core.doctor import (
    Level,
    TproxyState,
    source_address_findings,
    tproxy_findings,
    transparent_versions,
)
from pacslb.core.validate import load_data


def config(*services: dict[str, Any], **node: Any) -> Any:
    data: dict[str, Any] = {"version": 1, "virtual_services": list(services)}
    if node:
        data["node"] = node
    return load_data(data)


def service(label: str, mode: str, source: str, *addresses: str) -> dict[str, Any]:
    return {
        "label": label,
        "vip": "198.18.1.100" if "." in addresses[0] else "2001:2:1::100",
        "ports": [80 + len(label)],  # one port per service on the shared VIP
        "mode": mode,
        "source": source,
        "real_servers": [{"label": f"rs{i}", "address": a} for i, a in enumerate(addresses)],
    }


TWO = config(
    service("Archive", "l7-tcp", "client", "198.18.2.11"),
    service("Viewer", "l7-http", "client", "2001:2:2::11"),
    service("Web", "l7-http", "auto", "198.18.2.12"),
)


def test_versions_come_from_the_transparent_services_servers() -> None:
    assert transparent_versions(TWO) == {4: ["Archive"], 6: ["Viewer"]}


def test_a_missing_route_is_named_with_the_command_that_puts_it_back() -> None:
    state = TproxyState(True, {4: True, 6: True}, {4: False, 6: True})
    found = {(f.check, f.subject): f for f in tproxy_findings(transparent_versions(TWO), state)}
    route = found[("tproxy-route", "IPv4 (Archive)")]
    assert route.level is Level.PROBLEM and "local route" in route.message
    assert route.fix == "ip -4 route add local 0.0.0.0/0 dev lo table 21584"
    assert found[("tproxy-rule", "IPv4 (Archive)")].level is Level.OK
    assert found[("tproxy-route", "IPv6 (Viewer)")].level is Level.OK
    assert found[("tproxy-nft", "this host")].level is Level.OK


def test_missing_marking_and_rule_are_problems_and_unread_nftables_is_skipped() -> None:
    state = TproxyState(False, {4: False}, {4: True})
    found = {f.check: f for f in tproxy_findings({4: ["Archive"]}, state)}
    assert found["tproxy-nft"].level is Level.PROBLEM
    assert "socket transparent 1" in found["tproxy-nft"].fix
    assert found["tproxy-rule"].fix.startswith("ip -4 rule add fwmark 0x80000000/0x80000000")
    unread = tproxy_findings({4: ["Archive"]}, TproxyState(None, {4: True}, {4: True}))
    assert [f.level for f in unread if f.check == "tproxy-nft"] == [Level.SKIPPED]
    assert tproxy_findings({}, state) == []  # no transparent service: nothing to say


def test_a_fixed_source_not_on_this_host_is_a_warning_not_a_problem() -> None:
    cfg = config(service("Web", "l7-http", "198.18.2.5", "198.18.2.12"))
    [finding] = source_address_findings(cfg, {"198.18.2.1"})
    assert finding.level is Level.WARNING and "198.18.2.5" in finding.message
    assert finding.fix == "ip addr add 198.18.2.5/32 dev <interface>"
    [ok] = source_address_findings(cfg, {"198.18.2.5"})
    assert ok.level is Level.OK


def test_realserver_gives_transparent_servers_the_gateway_step() -> None:
    servers = realserver.nat_servers(TWO)
    assert [(s.address, s.services, s.transparent) for s in servers] == [
        ("198.18.2.11", (), ("Archive",)),
        ("2001:2:2::11", (), ("Viewer",)),
    ]
    text = realserver.for_config(
        [],
        "linux",
        "eth0",
        "net",
        "loopback",
        nat=servers,
        gateways={"198.18.2.11": "198.18.2.1"},
        proxied=realserver.proxied_services(TWO),
    )
    assert "# transparent l7 (Archive) on a Linux real server" in text
    assert "ip route replace default via 198.18.2.1 dev eth0" in text
    assert "connects from the client's own address, so the load balancer is the" in text
    assert "layer 7 (Web): real servers need no change" in text
    assert "Archive" not in text.split("layer 7 (")[-1]  # transparent ones do need a change


def test_an_ha_pair_points_transparent_servers_at_the_floating_gateway() -> None:
    ha = {
        "enabled": True,
        "peer": "198.18.1.3",
        "interface": "eth0",
        "secret": "a-shared-secret-of-the-pair",
        "gateways": [{"address": "198.18.2.1/24", "interface": "eth1"}],
    }
    cfg = config(service("Archive", "l7-tcp", "client", "198.18.2.11"), ha=ha)
    assert realserver.floating_gateways(cfg) == {"198.18.2.11": "198.18.2.1"}


def test_an_ha_pair_without_a_floating_gateway_on_a_servers_subnet_is_a_problem() -> None:
    """A node's own address as the gateway works until the other node takes over: then the
    replies go to the passive node and every transparent connection hangs."""
    from pacslb.core.doctor import ha_gateway_findings

    ha = {
        "enabled": True,
        "peer": "198.18.1.3",
        "interface": "eth0",
        "secret": "a-shared-secret-of-the-pair",
        "gateways": [{"address": "198.18.2.1/24", "interface": "eth1"}],
    }
    cfg = config(
        service("Archive", "l7-tcp", "client", "198.18.2.11"),
        service("Remote", "l7-tcp", "client", "198.18.3.11"),  # no floating gateway there
        service("Web", "l7-http", "auto", "198.18.4.12"),  # needs none
        ha=ha,
    )
    [found] = ha_gateway_findings(cfg)
    assert found.level is Level.PROBLEM and found.check == "ha-gateway"
    assert found.subject == "transparent l7 (Remote) rs0 (198.18.3.11)"
    assert "node.ha.gateways" in found.fix
    assert ha_gateway_findings(config(service("Remote", "l7-tcp", "client", "198.18.3.11"))) == []
