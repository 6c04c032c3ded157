"""core/keepalived.py: the notify FIFO's lines, the VRRP version, the password, the addresses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacslb import config as c
from pacslb.core import keepalived as k
from pacslb.core.ha_role import Role


def config(**ha: Any) -> c.Config:
    settings = {"enabled": True, "interface": "eth0", "peers": ["198.18.0.3"], "secret": "s" * 16}
    settings.update(ha)
    services = [
        {"label": "A", "vip": "198.18.0.100", "ports": [80], "mode": "l7-tcp"},
        {"label": "B", "vip": "198.18.0.100", "ports": [81], "mode": "l7-tcp"},
        {"label": "C", "vip": "2001:2::100", "ports": [80], "mode": "l7-tcp"},
    ]
    for svc in services:
        svc["real_servers"] = [{"label": "r", "address": "198.18.2.11"}]
    return c.Config.model_validate(
        {"version": 1, "node": {"ha": settings}, "virtual_services": services}
    )


@pytest.mark.parametrize(
    ("line", "state", "role", "priority"),
    [
        ('INSTANCE "pacslb" MASTER 150', "MASTER", Role.ACTIVE, 150),
        ('INSTANCE "pacslb" BACKUP 100\n', "BACKUP", Role.PASSIVE, 100),
        ('INSTANCE "pacslb" FAULT 150', "FAULT", Role.FAULT, 150),
        ('INSTANCE "pacslb" STOP 0', "STOP", Role.STOPPED, 0),
    ],
)
def test_our_instance_states_become_roles(line: str, state: str, role: Role, priority: int) -> None:
    parsed = k.parse_notify(line)
    assert parsed == k.VrrpState(state, priority)
    assert parsed.role is role


@pytest.mark.parametrize(
    "line",
    [
        'INSTANCE "other" MASTER 100',  # another instance on the host
        'GROUP "pacslb" MASTER',  # a sync group, not the instance
        'INSTANCE "pacslb" MASTER_RX_LOWER_PRI 150',  # a notice, not a state
        'INSTANCE "pacslb" MASTER_PRIORITY 120',
        "garbage",
        "",
    ],
)
def test_other_lines_are_not_role_changes(line: str) -> None:
    assert k.parse_notify(line) is None


def test_whole_seconds_are_vrrpv2_anything_else_vrrpv3() -> None:
    assert k.vrrp_version(1) == 2 and k.vrrp_version(3.0) == 2
    assert k.vrrp_version(0.3) == 3 and k.vrrp_version(1.5) == 3


def test_the_password_is_eight_characters_of_the_secret_never_the_secret() -> None:
    password = k.auth_pass("the pair's shared secret")
    assert len(password) == 8 and password == k.auth_pass("the pair's shared secret")
    assert password != k.auth_pass("another pair's secret")
    assert password not in "the pair's shared secret"


def test_every_vip_floats_once_and_the_gateway_on_its_own_interface() -> None:
    cfg = config(
        gateways=[{"address": "198.18.2.1/24", "interface": "eth1"}, {"address": "198.18.3.1/24"}]
    )
    found = k.floating_addresses(cfg, {"198.18.0.100": "eth2"}, "eth0")
    assert found == (
        k.Floating("198.18.0.100/32", "eth2"),  # the interface of its subnet
        k.Floating("2001:2::100/128", "eth0"),  # no subnet of ours: the VRRP interface
        k.Floating("198.18.2.1/24", "eth1"),
        k.Floating("198.18.3.1/24", "eth0"),
    )


def test_an_ipv6_pair_runs_vrrpv3_without_a_password() -> None:
    cfg = config(peers=["2001:2::3"])
    text = k.render(cfg, k.KeepalivedPaths.under(Path("/s")), "2001:2::2", ())
    assert "version 3" in text and "auth_pass" not in text


def test_an_incomplete_ha_section_is_refused() -> None:
    with pytest.raises(ValueError, match=r"node\.ha"):
        k.render(config(interface=None), k.KeepalivedPaths.under(Path("/s")), "198.18.0.2", ())
