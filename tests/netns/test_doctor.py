"""`pacslb doctor` in the LB's namespace names the real servers whose ARP problem is not solved
and those that do not hold the VIP; after `pacslb realserver`'s commands it finds nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.netns.conftest import PACSLB
from tests.netns.topology import ROOT, Host, one_arm

VIP = "198.18.0.100"
SERVERS = {"rs1": "good", "rs2": "answers-arp", "rs3": "no-vip"}


def pacslb(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", host.ns, *PACSLB, *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def apply_printed(host: Host, text: str) -> None:
    """Run what `pacslb realserver --os linux` printed, as an operator pastes it (a command
    that has nothing left to do, such as adding an address that is there, only complains)."""
    host.run("sh", "-c", text, check=False)


def dr_config(path: Path) -> Path:
    config: dict[str, Any] = {
        "version": 1,
        "virtual_services": [
            {
                "label": "DICOM",
                "vip": VIP,
                "ports": [104],
                "mode": "l4-dr",
                "real_servers": [
                    {"label": label, "address": f"198.18.0.{10 + i}"}
                    for i, label in enumerate(SERVERS.values(), start=1)
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_doctor_names_the_broken_real_servers_then_passes_once_fixed(tmp_path: Path) -> None:
    with one_arm(servers=3, vip=VIP, dr=False) as topo:
        rs1, rs2, rs3 = (topo.hosts[n] for n in SERVERS)
        lb = topo.hosts["lb"]
        fix = pacslb(lb, "realserver", "--vip", VIP, "--os", "linux")
        assert fix.returncode == 0, fix.stderr
        apply_printed(rs1, fix.stdout)  # set up as the guide says
        rs2.run("ip", "addr", "add", f"{VIP}/32", "dev", "lo")  # the VIP, but arp_* left at 0
        # rs3: nothing at all
        config = dr_config(tmp_path / "dr.yaml")

        done = pacslb(lb, "doctor", "--json", str(config))
        assert done.returncode == 1, done.stdout + done.stderr
        report = json.loads(done.stdout)
        problems = {(f["subject"], f["check"]) for f in report["findings"]
                    if f["level"] == "problem"}  # fmt: skip
        assert problems == {
            ("DICOM/answers-arp (198.18.0.12)", "dr-arp"),
            ("DICOM/no-vip (198.18.0.13)", "dr-vip"),
        }, done.stdout
        for f in report["findings"]:
            if f["level"] == "problem":
                assert f"pacslb realserver --vip {VIP} --os linux" in f["fix"]
        table = pacslb(lb, "doctor", str(config))
        assert table.returncode == 1
        assert "answers ARP for the VIP" in table.stdout and "fix: on no-vip:" in table.stdout

        apply_printed(rs2, fix.stdout)
        apply_printed(rs3, fix.stdout)
        done = pacslb(lb, "doctor", str(config))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "all is well" in done.stdout
