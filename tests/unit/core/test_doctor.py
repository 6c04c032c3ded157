"""`pacslb doctor`'s words: probe answers -> findings with fixes, the table and exit code."""

from __future__ import annotations

from pacslb.core import doctor as d
from pacslb.core.validate import load_data

VIP = "192.168.85.30"
LB_MAC, GOOD, BAD = "02:00:00:00:00:02", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
PROBE = d.DrProbe("DICOM", VIP, 4000, (("Srv1", "192.168.85.200"), ("Srv2", "192.168.85.201")))
MACS = {"192.168.85.200": GOOD, "192.168.85.201": BAD}


def test_dr_probes_come_from_l4_dr_services_only() -> None:
    config = load_data(
        {
            "virtual_services": [
                {"label": "DICOM", "vip": VIP, "ports": [4000], "mode": "l4-dr",
                 "real_servers": [{"label": "Srv1", "address": "192.168.85.200"},
                                  {"label": "Srv2", "address": "192.168.85.201"}]},
                {"label": "Web", "vip": "192.168.85.40", "ports": [80], "mode": "l4-nat"},
            ]
        }
    )  # fmt: skip
    assert d.dr_probes(config) == [PROBE]
    assert d.needs_forwarding(config) and d.needs_root(config)


def test_a_real_server_answering_arp_for_the_vip_is_named_with_the_fix() -> None:
    found = d.arp_findings(PROBE, {LB_MAC, BAD.upper()}, LB_MAC, MACS)
    assert [(f.level, f.subject) for f in found] == [
        (d.Level.PROBLEM, "DICOM/Srv2 (192.168.85.201)")
    ]
    assert "ARP problem is not solved" in found[0].message
    assert found[0].fix == f"on Srv2: pacslb realserver --vip {VIP} --os linux " + (
        "(arp_ignore=1, arp_announce=2)"
    )


def test_an_unknown_mac_answering_is_an_address_conflict() -> None:
    found = d.arp_findings(PROBE, {"02:00:00:00:00:99"}, LB_MAC, MACS)
    assert found[0].level is d.Level.PROBLEM and "address conflict" in found[0].message


def test_only_the_lb_answering_is_fine() -> None:
    found = d.arp_findings(PROBE, {LB_MAC}, LB_MAC, MACS)
    assert [f.level for f in found] == [d.Level.OK]


def test_no_answer_to_a_syn_means_the_vip_is_missing() -> None:
    missing = d.vip_finding(PROBE, "Srv1", "192.168.85.200", answered=False)
    assert missing.level is d.Level.PROBLEM and "not on its loopback" in missing.message
    assert d.vip_finding(PROBE, "Srv1", "192.168.85.200", answered=True).level is d.Level.OK


def test_a_real_server_behind_a_router_cannot_be_direct_routed() -> None:
    f = d.route_finding(PROBE, "Srv1", "192.168.85.200", "eth0", "10.0.0.1", local=False)
    assert f.level is d.Level.PROBLEM and "router 10.0.0.1" in f.message
    assert d.route_finding(PROBE, "Srv1", "192.168.85.200", "eth0", None, False).level is (
        d.Level.OK
    )


def test_report_exit_code_table_and_json() -> None:
    ok = d.Finding("root", d.Level.OK, d.HOST, "running as root")
    warn = d.Finding("forwarding", d.Level.WARNING, d.HOST, "off", "sysctl -w ...")
    bad = d.vip_finding(PROBE, "Srv2", "192.168.85.201", answered=False)
    assert d.exit_code([ok, warn]) == 0 and d.exit_code([ok, bad]) == 1
    text = d.table([ok, warn, bad])
    assert text.splitlines()[0].split() == ["STATUS", "CHECK", "WHERE", "FINDING"]
    assert "fix: on Srv2: pacslb realserver" in text
    assert text.rstrip().endswith("1 problem(s), 1 warning(s): see the fixes above")
    report = d.to_json([ok, bad])
    assert report["ok"] is False and report["problems"] == 1
    assert (
        report["findings"][1]["level"] == "problem" and report["findings"][1]["check"] == "dr-vip"
    )


# --- l4-nat: the route back ----------------------------------------------------------------

NAT = d.NatProbe(
    "Web", "192.168.85.40", (("Mgr1", "10.10.0.210", 8080), ("Mgr2", "10.10.0.211", 80))
)
ON_LINK = d.Reach("eth1", None, False, "10.10.0.1")


def test_nat_probes_come_from_l4_nat_services_with_the_translated_port() -> None:
    config = load_data(
        {
            "virtual_services": [
                {"label": "Web", "vip": "192.168.85.40", "ports": [80], "mode": "l4-nat",
                 "real_servers": [{"label": "Mgr1", "address": "10.10.0.210", "port": 8080},
                                  {"label": "Mgr2", "address": "10.10.0.211"}]},
                {"label": "S", "vip": "192.168.85.50", "ports": [80], "mode": "l4-snat"},
            ]
        }
    )  # fmt: skip
    assert d.nat_probes(config) == [NAT]


def test_transparent_l7_services_are_probed_like_nat_ones_and_said_so() -> None:
    """source: client needs the same route back as l4-nat; health checks (from the LB's own
    address) cannot see a server whose gateway is wrong, so doctor must probe it."""
    config = load_data(
        {
            "virtual_services": [
                {"label": "Dicom", "vip": "192.168.85.30", "ports": [104], "mode": "l7-tcp",
                 "source": "client",
                 "real_servers": [{"label": "Pacs1", "address": "10.10.0.200"}]},
                {"label": "Auto", "vip": "192.168.85.31", "ports": [80], "mode": "l7-http",
                 "real_servers": [{"label": "Web1", "address": "10.10.0.201"}]},
            ]
        }
    )  # fmt: skip
    probe = d.NatProbe("Dicom", "192.168.85.30", (("Pacs1", "10.10.0.200", 104),), True)
    assert d.nat_probes(config) == [probe]
    found = d.nat_route_finding(probe, "Pacs1", "10.10.0.200", ON_LINK, True, False, probe.vip)
    assert found.level is d.Level.PROBLEM
    assert "transparent connections (source: client) to it time out" in found.message
    assert "NAT" not in found.message
    assert found.fix.startswith("on Pacs1: make 10.10.0.1 its default gateway")


def test_a_nat_server_whose_reply_bypasses_the_lb_is_named_with_the_gateway_to_set() -> None:
    found = d.nat_route_finding(NAT, "Mgr2", "10.10.0.211", ON_LINK, True, False, NAT.vip)
    assert (found.level, found.subject) == (d.Level.PROBLEM, "Web/Mgr2 (10.10.0.211)")
    assert "its default gateway is not the load balancer" in found.message
    assert found.fix.startswith("on Mgr2: make 10.10.0.1 its default gateway")


def test_a_nat_server_answering_through_the_lb_is_fine_and_a_silent_one_is_unknown() -> None:
    ok = d.nat_route_finding(NAT, "Mgr1", "10.10.0.210", ON_LINK, True, True, NAT.vip)
    assert ok.level is d.Level.OK and "come back through this load balancer" in ok.message
    silent = d.nat_route_finding(NAT, "Mgr1", "10.10.0.210", ON_LINK, False, False, NAT.vip)
    assert silent.level is d.Level.WARNING and "port 8080" in silent.message


def test_reach_in_words_for_plan() -> None:
    assert d.Reach("eth1", None, False, "10.10.0.1").text() == (
        "on eth1 (same segment, from 10.10.0.1)"
    )
    assert d.Reach("eth0", "10.0.0.254", False, "10.0.0.2").text() == (
        "via the router 10.0.0.254 on eth0"
    )
    assert "`pacslb run` adds the address there" in d.Reach("eth0").text(vip=True)
    assert "the proxy cannot listen on it" in d.Reach("eth0").text(vip=True, kernel=False)
    assert d.Reach("lo", None, True).text(vip=True) == "on lo (this host's own address)"
    assert d.Reach(error="no route").text() == "not reachable (no route)"
