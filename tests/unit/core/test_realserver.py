"""`pacslb realserver`: the Direct Routing setup text for Linux and Windows real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacslb.cli import main
from pacslb.core import realserver
from pacslb.core.validate import load_data

VIP = "192.168.85.30"  # the guide's example: data here, never a target


def commands(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith(("#", "REM"))]


def test_linux_commands_solve_the_arp_problem_and_put_the_vip_on_lo() -> None:
    assert commands(realserver.linux([VIP])) == [
        "sysctl -w net.ipv4.conf.all.arp_ignore=1",
        "sysctl -w net.ipv4.conf.all.arp_announce=2",
        "sysctl -w net.ipv4.conf.eth0.arp_ignore=1",
        "sysctl -w net.ipv4.conf.eth0.arp_announce=2",
        f"ip addr replace {VIP}/32 dev lo",
    ]


def test_linux_persistence_is_shown_as_comments_only() -> None:
    text = realserver.linux([VIP, "192.168.85.31"], interface="ens192")
    assert "# /etc/sysctl.d/90-pacslb-dr.conf:" in text
    assert "#   net.ipv4.conf.ens192.arp_announce = 2" in text
    assert "#     up ip addr add 192.168.85.31/32 dev lo" in text  # ifupdown
    assert f"#   Address={VIP}/32" in text  # systemd-networkd
    assert "sysctl -w net.ipv4.conf.ens192.arp_ignore=1" in commands(text)


def test_linux_ipv6_vip_gets_a_128_on_lo_and_no_arp_sysctls() -> None:
    assert commands(realserver.linux(["2001:db8::30"])) == [
        "ip -6 addr replace 2001:db8::30/128 dev lo"
    ]


def test_windows_commands_follow_the_appliance_guide() -> None:
    text = realserver.windows([VIP])
    assert "Microsoft KM-TEST Loopback Adapter" in text
    assert "default gateway" in text and "DNS" in text
    assert commands(text) == [
        "powershell -Command \"Set-DnsClient -InterfaceAlias 'loopback' "
        '-RegisterThisConnectionsAddress $false"',
        f'netsh interface ipv4 add address "loopback" {VIP} 255.255.255.255',
        'netsh interface ipv4 set interface "net" weakhostreceive=enabled',
        'netsh interface ipv4 set interface "loopback" weakhostreceive=enabled',
        'netsh interface ipv4 set interface "loopback" weakhostsend=enabled',
    ]


def test_windows_adapter_names_are_the_operators() -> None:
    text = realserver.windows([VIP], lan="Ethernet0", loopback="LB-Loop")
    assert 'netsh interface ipv4 set interface "Ethernet0" weakhostreceive=enabled' in text
    assert f'netsh interface ipv4 add address "LB-Loop" {VIP} 255.255.255.255' in text


CONFIG = {
    "virtual_services": [
        {
            "label": "DICOM",
            "vip": VIP,
            "ports": [4000],
            "mode": "l4-dr",
            "real_servers": [
                {"label": "Srv1", "address": "192.168.85.200"},
                {"label": "Srv2", "address": "192.168.85.201"},
            ],
        },
        {
            "label": "Web",
            "vip": "192.168.85.31",
            "ports": [80],
            "mode": "l4-dr",
            "real_servers": [{"label": "Srv1-web", "address": "192.168.85.200"}],
        },
        {
            "label": "Manager",
            "vip": "192.168.85.40",
            "ports": [80],
            "mode": "l7-http",
            "real_servers": [{"label": "Mgr1", "address": "10.10.0.210"}],
        },
    ]
}


def test_config_groups_dr_vips_by_real_server_and_skips_other_modes() -> None:
    servers = realserver.dr_servers(load_data(CONFIG))
    assert servers == [
        realserver.DrServer("192.168.85.200", ("Srv1", "Srv1-web"), (VIP, "192.168.85.31")),
        realserver.DrServer("192.168.85.201", ("Srv2",), (VIP,)),
    ]
    text = realserver.for_config(servers, "linux", "eth0", "net", "loopback")
    assert "# === Srv1, Srv1-web (192.168.85.200)" in text
    assert commands(text).count("ip addr replace 192.168.85.31/32 dev lo") == 1
    assert "192.168.85.40" not in text


def test_cli_prints_for_a_config_and_needs_a_vip_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["realserver", "--config", str(path), "--os", "windows"]) == 0
    out = capsys.readouterr().out
    assert "REM === Srv2 (192.168.85.201)" in out
    assert main(["realserver"]) == 1
    assert "--vip" in capsys.readouterr().err
    assert main(["realserver", "--vip", VIP]) == 0
    assert f"ip addr replace {VIP}/32 dev lo" in capsys.readouterr().out


def test_the_fix_doctor_suggests() -> None:
    assert realserver.fix_command([VIP]) == f"pacslb realserver --vip {VIP} --os linux"


# --- l4-nat and l4-snat: the load balancer as the real servers' gateway --------------------

NAT_CONFIG = {
    "virtual_services": [
        {
            "label": "Manager",
            "vip": "192.168.85.40",
            "ports": [80],
            "mode": "l4-nat",
            "real_servers": [
                {"label": "Mgr1", "address": "10.10.0.210", "port": 8080},
                {"label": "Mgr2", "address": "10.10.0.211"},
            ],
        },
        {
            "label": "Cardiology",
            "vip": "192.168.85.50",
            "ports": [443],
            "mode": "l4-snat",
            "real_servers": [{"label": "Card1", "address": "10.10.0.220"}],
        },
    ]
}


def nat_text(os: str, gateways: dict[str, str]) -> str:
    config = load_data(NAT_CONFIG)
    return realserver.for_config(
        realserver.dr_servers(config),
        os,
        "ens192",
        "Ethernet0",
        "loopback",
        nat=realserver.nat_servers(config),
        gateways=gateways,
        snat=realserver.snat_services(config),
    )


def test_nat_real_servers_get_the_load_balancer_as_their_linux_default_gateway() -> None:
    text = nat_text("linux", {"10.10.0.210": "10.10.0.1", "10.10.0.211": "10.10.0.1"})
    assert "# === Mgr1 (10.10.0.210)" in text and "# === Mgr2 (10.10.0.211)" in text
    assert commands(text) == ["ip route replace default via 10.10.0.1 dev ens192"] * 2
    assert "no change" not in text.split("l4-snat")[0]  # NAT servers do need a change
    # persistent forms, as comments only
    assert "#   Gateway=10.10.0.1" in text
    assert "# NetworkManager:  nmcli connection modify <connection> ipv4.gateway 10.10.0.1" in text
    assert "in `iface ens192`:  gateway 10.10.0.1" in text
    assert "floating gateway address" in text
    # SNAT: no change, and why
    assert "# l4-snat (Cardiology): real servers need no change" in text
    assert "10.10.0.220" not in text


def test_nat_real_servers_get_the_windows_route_and_powershell_commands() -> None:
    text = nat_text("windows", {"10.10.0.210": "10.10.0.1", "10.10.0.211": "10.10.0.1"})
    assert commands(text)[:2] == [
        "route delete 0.0.0.0 mask 0.0.0.0",
        "route -p add 0.0.0.0 mask 0.0.0.0 10.10.0.1",
    ]
    assert (
        "REM   New-NetRoute -DestinationPrefix 0.0.0.0/0 -InterfaceAlias 'Ethernet0' "
        "-NextHop 10.10.0.1"
    ) in text
    assert "REM l4-snat (Cardiology): real servers need no change" in text


def test_an_unknown_gateway_is_a_placeholder_with_the_reason() -> None:
    text = nat_text("linux", {"10.10.0.210": "10.10.0.1"})
    mgr2 = text.split("# === Mgr2")[1]
    assert "ip route replace default via LB_GATEWAY dev ens192" in commands(mgr2)
    assert "pass --gateway ADDR" in mgr2


def test_nat_ipv6_gateway() -> None:
    server = realserver.NatServer("2001:db8::10", ("A",), ("Web",))
    assert commands(realserver.nat_linux(server, "2001:db8::1")) == [
        "ip -6 route replace default via 2001:db8::1 dev eth0"
    ]
    assert 'netsh interface ipv6 add route ::/0 "net" 2001:db8::1 store=persistent' in (
        realserver.nat_windows(server, "2001:db8::1")
    )


def test_cli_prints_the_nat_gateway_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    path = tmp_path / "nat.yaml"
    path.write_text(yaml.safe_dump(NAT_CONFIG))
    assert main(["realserver", "--config", str(path), "--gateway", "10.10.0.1"]) == 0
    out = capsys.readouterr().out
    assert commands(out) == ["ip route replace default via 10.10.0.1 dev eth0"] * 2
    assert "l4-snat (Cardiology): real servers need no change" in out


def test_layer7_servers_beside_nat_ones_are_told_to_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nat-l7: Manager and the Viewer behind the proxy get a line saying why no block."""
    import yaml

    config = {"virtual_services": [*NAT_CONFIG["virtual_services"]]}
    viewer = {"label": "Viewer", "vip": "192.168.85.41", "ports": [80], "mode": "l7-http"}
    config["virtual_services"].append(
        {**viewer, "real_servers": [{"label": "Crv1", "address": "10.10.0.212"}]}
    )
    path = tmp_path / "nat-l7.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["realserver", "--config", str(path), "--gateway", "10.10.0.1"]) == 0
    out = capsys.readouterr().out
    assert commands(out) == ["ip route replace default via 10.10.0.1 dev eth0"] * 2
    assert "# layer 7 (Viewer): real servers need no change: the proxy connects" in out
    assert "10.10.0.212" not in out
