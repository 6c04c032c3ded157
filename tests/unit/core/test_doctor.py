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
