"""pacslb.service's capability set and NoNewPrivileges are enough for the data planes.

systemd cannot start the unit here (it is not PID 1), so the test applies the same limits the
way systemd does before it execs ExecStart: the capability bounding set read from the shipped
unit file and no_new_privs, through setpriv(1). Under them, in network namespaces made here:
- `pacslb run` with an l4-nat service applies its nftables ruleset (libnftables) and adds
  nothing it may not: status says ready;
- keepalived, as pacslb's HA supervisor starts it (a child, --vrrp, in the foreground), becomes
  MASTER, adds the floating address (NET_ADMIN) and sends VRRP adverts from a raw socket
  (NET_RAW) that the peer namespace receives.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "deb" / "pacslb.service"
NS_LB, NS_PEER = "pacslb-h5-caps-lb", "pacslb-h5-caps-peer"
LB, PEER, VIP = "198.18.250.1", "198.18.250.2", "198.18.250.100"


def unit_setting(name: str) -> str:
    for line in UNIT.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{UNIT} has no {name}=")


def sandbox() -> list[str]:
    """setpriv with the unit's limits (what systemd applies before exec)."""
    caps = [c.removeprefix("CAP_").lower() for c in unit_setting("CapabilityBoundingSet").split()]
    assert unit_setting("NoNewPrivileges") == "yes"
    bounding = "-all," + ",".join(f"+{c}" for c in caps)
    return ["setpriv", f"--bounding-set={bounding}", f"--inh-caps={bounding}", "--no-new-privs"]


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


@pytest.fixture
def namespaces() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces (CI runs as root)")
    for tool in ("setpriv", "ip", "nft", "keepalived"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed")
    for ns in (NS_LB, NS_PEER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        sh("ip", "netns", "add", ns)
    try:
        sh(
            "ip",
            "-n",
            NS_LB,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            NS_PEER,
        )
        for ns, address in ((NS_LB, LB), (NS_PEER, PEER)):
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (NS_LB, NS_PEER):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    out = open(log, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        out.close()


def test_pacslb_applies_nftables_under_the_units_limits(namespaces: None, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "pacslb.yaml"
    config.write_text(
        f"""version: 1
node:
  webui: {{enabled: false}}
  state_dir: {state}
virtual_services:
  - label: Nat
    vip: {VIP}
    ports: [80]
    mode: l4-nat
    health_check: {{type: none}}
    real_servers:
      - {{label: Peer, address: {PEER}}}
"""
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = ["ip", "netns", "exec", NS_LB, *sandbox(), sys.executable, "-m", "pacslb.cli"]
    with started([*argv, "run", str(config)], tmp_path / "run.log") as proc:
        deadline = time.monotonic() + 30
        status: dict[str, object] = {}
        while time.monotonic() < deadline and not status.get("ready"):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            done = subprocess.run(
                [*argv, "status", "--json", "--state-dir", str(state)],
                capture_output=True,
                text=True,
                timeout=30,
                env=env,
            )
            if done.returncode == 0:
                status = json.loads(done.stdout)
            time.sleep(0.2)
        assert status.get("ready"), (status, (tmp_path / "run.log").read_text())
        ruleset = sh("ip", "netns", "exec", NS_LB, "nft", "list", "tables")
        assert "pacslb" in ruleset
        # `ip netns exec` execs setpriv, which execs python: proc.pid is pacslb's own pid.
        caps = Path(f"/proc/{proc.pid}/status").read_text()
        bounding = next(ln for ln in caps.splitlines() if ln.startswith("CapBnd:"))
        no_new_privs = next(ln for ln in caps.splitlines() if ln.startswith("NoNewPrivs:"))
        assert int(bounding.split()[1], 16) == (1 << 10) | (1 << 12) | (1 << 13)  # BIND, ADMIN, RAW
        assert no_new_privs.split()[1] == "1"
    sh("ip", "netns", "exec", NS_LB, "nft", "flush", "ruleset")


KEEPALIVED_CONF = """global_defs {{
    router_id pacslb-caps
    script_user root
    enable_script_security
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 57
    priority 100
    advert_int 1
    virtual_ipaddress {{
        {vip}/32 dev eth0
    }}
}}
"""


def test_keepalived_as_a_child_works_under_the_units_limits(
    namespaces: None, tmp_path: Path
) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(KEEPALIVED_CONF.format(vip=VIP))
    keepalived = shutil.which("keepalived") or "/usr/sbin/keepalived"
    argv = [
        *("ip", "netns", "exec", NS_LB, *sandbox(), keepalived),
        *("--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp"),
        *("--use-file", str(conf), "--pid", str(tmp_path / "k.pid")),
        *("--vrrp_pid", str(tmp_path / "v.pid")),
    ]
    # The peer listens for VRRP (IP protocol 112, to the group 224.0.0.18) on a raw socket.
    listen = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112); "
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, "
        f"socket.inet_aton('224.0.0.18') + socket.inet_aton('{PEER}')); "
        "s.settimeout(15); data, addr = s.recvfrom(2048); print(addr[0], data[9], data[21])"
    )
    with (
        started(argv, tmp_path / "keepalived.log") as proc,
        started(
            ["ip", "netns", "exec", NS_PEER, sys.executable, "-c", listen], tmp_path / "peer.log"
        ) as peer,
    ):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "keepalived.log").read_text()
            if VIP in sh("ip", "-n", NS_LB, "-4", "addr", "show", "dev", "eth0"):
                break
            time.sleep(0.2)
        log = (tmp_path / "keepalived.log").read_text()
        assert VIP in sh("ip", "-n", NS_LB, "-4", "addr", "show", "dev", "eth0"), log
        assert "Entering MASTER STATE" in log, log
        peer.wait(20)
    heard = (tmp_path / "peer.log").read_text()
    assert len(heard.split()) == 3, heard
    source, protocol, vrid = heard.split()
    assert (source, protocol, vrid) == (LB, "112", "57")
