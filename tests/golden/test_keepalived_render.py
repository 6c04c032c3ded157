"""Config -> keepalived.conf, compared with the reviewed files beside this test.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/golden` and review the
diff like code. Each file is also checked by keepalived itself (`keepalived -t`) in a scratch
namespace that has the interfaces it names, when keepalived is installed and we are root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pacslb.control.ha import find_keepalived
from pacslb.control.store import read_config
from pacslb.core import keepalived as k

HERE = Path(__file__).parent / "keepalived"
PATHS = k.KeepalivedPaths(Path("/var/lib/pacslb/keepalived"))
# What the shell finds on the host (control/ha.py host_facts), as the golden files assume it.
SOURCE = "192.168.85.11"
DEVICES = {"192.168.85.30": "eth0", "2001:db8:85::40": "eth0"}


def rendered(name: str) -> str:
    _, config = read_config(HERE / f"{name}.yaml")
    addresses = k.floating_addresses(config, DEVICES, "eth0")
    return k.render(config, PATHS, SOURCE, addresses)


def check(name: str, text: str) -> None:
    path = HERE / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs: UPDATE_GOLDEN=1 and review the diff"


def keepalived_accepts(text: str, tmp_path: Path) -> None:
    """`keepalived -t` (its config test) on the text, in a namespace with eth0 and eth1."""
    binary = find_keepalived()
    if binary is None or os.geteuid() != 0:
        pytest.skip("keepalived -t needs keepalived and root (CI has both)")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text.replace(str(PATHS.directory), str(tmp_path)))
    ns = f"plbkagold{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for dev, peer in (("eth0", "x0"), ("eth1", "x1")):
            subprocess.run(
                ["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer],
                check=True,
            )
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", ns, binary, "--config-test", "--use-file", str(conf)],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    # keepalived -t exits non-zero for warnings too; what matters is what it says.
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert not said, said


def test_a_pair_renders_as_reviewed_and_keepalived_accepts_it(tmp_path: Path) -> None:
    text = rendered("pair")
    check("pair.conf", text)
    # Every VIP once (two services share one), the gateway on the real servers' side, whose
    # link is tracked; VRRPv2 with a password derived from the secret, never the secret.
    assert text.count("192.168.85.30/32 dev eth0") == 1
    assert "10.10.0.1/24 dev eth1" in text and "track_interface {\n        eth1" in text
    assert "golden-test-secret" not in text and "auth_type PASS" in text
    assert "nopreempt" in text
    keepalived_accepts(text, tmp_path)


def test_sub_second_adverts_are_vrrpv3_without_authentication(tmp_path: Path) -> None:
    text = rendered("subsecond")
    check("subsecond.conf", text)
    assert "version 3" in text and "advert_int 0.3" in text and "authentication {" not in text
    assert "nopreempt" not in text  # node.ha.preempt
    keepalived_accepts(text, tmp_path)
