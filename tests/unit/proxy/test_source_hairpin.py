"""proxy/source.py: a client on a transparent service's real server's own subnet (hairpin) is
connected from the load balancer's own address, since the server would answer it directly."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

import pytest

from pacslb import config as c
from pacslb.core.plan import PlanService, build_plan
from pacslb.proxy import notices, source

# `ip -j addr show` of a two-armed load balancer
LISTING = [
    {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
    {"ifname": "eth0", "addr_info": [{"local": "192.168.85.2", "prefixlen": 24},
                                     {"local": "192.168.85.30", "prefixlen": 32}]},
    {"ifname": "eth1", "addr_info": [{"local": "10.10.0.1", "prefixlen": 24},
                                     {"local": "2001:db8:10::1", "prefixlen": 64}]},
]  # fmt: skip


def service(src: str = "client") -> PlanService:
    vs = c.VirtualService.model_validate(
        {
            "label": "Dicom",
            "vip": "192.168.85.30",
            "ports": [104],
            "mode": "l7-tcp",
            "real_servers": [
                {"label": "Pacs1", "address": "10.10.0.200"},
                {"label": "Remote", "address": "172.16.5.5"},  # behind a router
            ],
        }
    )
    plan = build_plan(c.Config(version=1, virtual_services=[vs]))
    return dataclasses.replace(plan.services[0], source=src)


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    yield
    source.set_segments({})
    source._warned.clear()
    notices.take()


def test_each_server_gets_the_subnet_of_this_host_it_is_on() -> None:
    networks = source.host_networks(LISTING)
    servers = source.transparent_servers([service(), service("auto")])
    assert servers == ("10.10.0.200", "172.16.5.5")
    assert source.segments_for([*servers, "2001:db8:10::9"], networks) == {
        "10.10.0.200": ipaddress.ip_network("10.10.0.0/24"),
        "2001:db8:10::9": ipaddress.ip_network("2001:db8:10::/64"),
    }
    assert source.transparent_servers([service("vip")]) == ()


def test_a_hairpin_client_takes_the_lbs_address_and_is_said_once() -> None:
    svc = service()
    source.set_segments(source.segments_for(["10.10.0.200"], source.host_networks(LISTING)))
    assert source.bind_address(svc, "192.168.85.77", "10.10.0.200") == "192.168.85.77"
    assert source.bind_address(svc, "10.10.0.50", "10.10.0.200") == ""  # the RIS beside it
    assert source.bind_address(svc, "::ffff:10.10.0.51", "10.10.0.200") == ""
    assert source.bind_address(svc, "10.10.0.50", "172.16.5.5") == "10.10.0.50"  # unknowable
    said = [n["message"] for n in notices.take()]
    assert len(said) == 1 and "client 10.10.0.50 is on real server 10.10.0.200's own" in said[0]


def test_a_client_on_this_host_over_loopback_takes_the_lbs_address() -> None:
    """Bound to 127.0.0.1, a connection to a real server fails with EINVAL (counted against
    the server): a local client's connections take the kernel's choice."""
    svc = service()
    assert source.bind_address(svc, "127.0.0.1", "10.10.0.200") == ""
    assert source.bind_address(svc, "::ffff:127.0.0.1", "10.10.0.200") == ""
    assert source.bind_address(svc, "192.168.85.2", "10.10.0.200") == "192.168.85.2"  # its own


def test_a_transparent_connect_timeout_points_at_the_gateway_once_per_server() -> None:
    for _ in range(3):
        source.transparent_timed_out("Dicom", "Pacs1")
    source.transparent_timed_out("Dicom", "Pacs2")
    said = [n["message"] for n in notices.take()]
    assert len(said) == 2 and all("(its default gateway)" in m for m in said)
    assert "pacslb doctor" in said[0] and "to Pacs1 timed out" in said[0]
