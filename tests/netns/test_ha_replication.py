"""Replication of an HA pair end to end: two `pacslb run` nodes in network namespaces
(`ha_one_arm`: lb1 198.18.0.2 priority 150, lb2 198.18.0.3 priority 100) with real keepalived,
paired through the CLI on the active node, as an operator does it.

- a config change on the active node (REST API, from inside its namespace) is in force on the
  passive one within 2 s; a drain (CLI) too (measured and printed: `pytest -s`);
- a revision the peer refuses (a TLS certificate that exists on lb1 only: lb2 runs with that
  folder empty in a mount namespace of its own) leaves both on their previous revision;
- an edit on the passive node is refused (CLI and REST 409), naming the active node;
- split brain (VRRP dropped by an nft rule on lb2's input while the API path still works) is
  reported on both nodes within 5 s of both being active, changes are refused meanwhile, and it
  ends by priority once the rule is gone (lb1, the higher, keeps the addresses);
- a passive node that was stopped catches up when it returns;
- `pacslb ha takeover` on the passive node moves the addresses; the new active node's changes
  flow the other way;
- pairing through a TLS-terminating relay (its own certificate) is refused even trusted on
  first use; a peer holding other services needs --force; edits on both sides of a partition
  are a conflict on both (nothing replicated) until `pacslb ha resolve --keep-this`.
"""

from __future__ import annotations

import datetime
import json
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacslb.core import certs
from tests.browser.chromium import ARTIFACTS, CHROMIUM
from tests.netns.ha_replica_pair import LB1, LB2, PORT, VIP, Lb, commit_to_peer, replication_pair
from tests.peers.ha_node import PASSWORD, wait_for
from tests.peers.procs import ROOT

# Generous bounds (a loaded machine); the goals (2 s replication, 5 s split brain) are the
# printed figures.
REPLICATION_BOUND = 2.0
SPLIT_BOUND = 5.0

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Lb, Lb, Path]]:
    if shutil.which("keepalived") is None and not Path("/usr/sbin/keepalived").exists():
        pytest.skip("keepalived is not installed (scripts/sysdeps.txt)")
    only_on_lb1 = tmp_path / "only-on-lb1"
    only_on_lb1.mkdir()
    cert, key = certs.self_signed("web", datetime.datetime.now(datetime.UTC), ["web"])
    (only_on_lb1 / "web.pem").write_bytes(cert + key)
    with replication_pair(tmp_path, only_on_lb1) as (lb1, lb2):
        yield lb1, lb2, only_on_lb1


def vrrp_drop(lb: Lb, on: bool) -> None:
    if on:
        lb.host.run("nft", "add", "table", "inet", "splitbrain")
        lb.host.run(
            "nft",
            "add chain inet splitbrain input { type filter hook input priority -300 ; }",
        )
        lb.host.run("nft", "add rule inet splitbrain input ip protocol vrrp drop")
    else:
        lb.host.run("nft", "delete", "table", "inet", "splitbrain")


def test_pair_replicate_refuse_split_brain_catch_up_takeover(pair: tuple[Lb, Lb, Path]) -> None:
    lb1, lb2, only_on_lb1 = pair
    figures: dict[str, float] = {}

    # Pairing through the CLI on the active node (the peer's fingerprint checked this time).
    token = lb2.node.token("pairing")
    done = lb1.node.cli(
        "ha", "pair", lb2.node.address, "--token", token, "--fingerprint", lb2.node.fingerprint()
    )
    assert done.returncode == 0, done.stderr
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 10, "lb1 in sync")
    ha2 = lb2.node.ha()
    assert ha2["peer"]["address"] == LB1 and ha2["peer"]["role"] in ("active", None)
    listing = lb2.node.cli("ha", "status").stdout
    assert "this node: passive" in listing and f"peer: {LB1}:{PORT}: active" in listing, listing

    # A config change on the active node, through its REST API: in force on the passive.
    started = time.monotonic()
    code, body = lb1.curl(
        "POST",
        "/api/v1/virtual_services/Dicom/real_servers",
        {"label": "rs3", "address": "198.18.0.13"},
    )
    assert code == 201, body
    wait_for(lambda: "rs3" in lb2.node.servers()["Dicom"], 10, "rs3 on lb2", step=0.01)
    figures["config change: API call to in force on the passive (s)"] = time.monotonic() - started
    figures["config change: commit on the active to applied on the passive (s)"] = commit_to_peer(
        lb1, lb2, "config", "add real server Dicom/rs3", "replicated from"
    )

    # A drain on the active node (CLI): in force on the passive.
    started = time.monotonic()
    assert lb1.node.cli("drain", "Dicom", "rs1").returncode == 0
    wait_for(lambda: lb2.node.admin_states()["Dicom/rs1"] == "drain", 10, "drain on lb2", 0.01)
    figures["drain: CLI command to in force on the passive (s)"] = time.monotonic() - started
    figures["drain: on the active to on the passive (s)"] = commit_to_peer(
        lb1, lb2, "admin", "online -> drain", "online -> drain by ha-peer"
    )

    # A revision the peer refuses: a certificate only lb1 has. Both stay where they were.
    revisions = (lb1.node.status()["revision"], lb2.node.status()["revision"])
    secure = {
        "label": "Secure",
        "vip": VIP,
        "ports": [443],
        "mode": "l7-http",
        "health_check": {"type": "none"},
        "tls": {"certificates": [{"certificate": str(only_on_lb1 / "web.pem")}]},
        "real_servers": [{"label": "rs1", "address": "198.18.0.11", "port": 80}],
    }
    code, body = lb1.curl("POST", "/api/v1/virtual_services", secure)
    assert code == 422, body
    assert any(f"peer {LB2}" in p["message"] for p in body["problems"]), body
    assert (lb1.node.status()["revision"], lb2.node.status()["revision"]) == revisions
    assert "Secure" not in lb1.node.servers() and "Secure" not in lb2.node.servers()

    # Edits on the passive node are refused, naming the active one.
    done = lb2.node.cli("halt", "Dicom", "rs2")
    assert done.returncode == 1 and f"make changes on the active node {LB1}" in done.stderr
    code, body = lb2.curl("DELETE", "/api/v1/virtual_services/Dicom")
    assert code == 409 and f"active node {LB1}" in body["detail"], body

    # Split brain: lb2 hears no VRRP from lb1, becomes active too; the API path still works.
    vrrp_drop(lb2, True)
    wait_for(lambda: lb2.role() == "active", 20, "lb2 active as well (split brain)")
    both = time.monotonic()
    assert lb1.role() == "active"
    wait_for(
        lambda: lb1.node.ha()["split_brain"] and lb2.node.ha()["split_brain"],
        30,
        "split brain reported on both",
    )
    figures["split brain reported on both after both active (s)"] = time.monotonic() - both
    for lb in (lb1, lb2):
        assert "split brain: both nodes are active" in lb.node.events()
        code, metrics = lb.curl("GET", "/metrics")
        assert code == 200 and "pacslb_ha_split_brain 1.0" in metrics
        code, page = lb.curl("GET", "/")
        assert 'id="split-brain"' in page
    done = lb1.node.cli("online", "Dicom", "rs1")
    assert done.returncode == 1 and "split brain" in done.stderr, done.stderr
    vrrp_drop(lb2, False)
    wait_for(lambda: lb2.role() == "passive", 20, "lb2 passive again (priority)")
    wait_for(
        lambda: not lb1.node.ha()["split_brain"] and not lb2.node.ha()["split_brain"],
        10,
        "split brain over on both",
    )
    assert "split brain ended: this node kept the addresses" in lb1.node.events()
    assert f"split brain ended: peer {LB1} kept the addresses" in lb2.node.events()

    # The passive node stopped: the active one goes on and is behind; it catches up.
    lb2.node.stop()
    assert lb1.node.cli("online", "Dicom", "rs1").returncode == 0
    code, body = lb1.curl("DELETE", "/api/v1/virtual_services/Dicom/real_servers/rs3")
    assert code == 200, body
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "unreachable", 15, "unreachable")
    text = lb1.node.ha()["replication"]["text"]
    print(f"lb1 while lb2 is stopped: {text}")
    assert text.startswith("peer unreachable since ") and "1 revision behind" in text
    assert "ha peer: 198.18.0.3: replication peer unreachable" in lb1.node.cli("status").stdout
    lb2.start()
    started = time.monotonic()
    wait_for(lambda: lb2.node.admin_states()["Dicom/rs1"] == "online", 20, "lb2 caught up")
    figures["caught up after the peer was ready again (s)"] = time.monotonic() - started
    assert "rs3" not in lb2.node.config.read_text()  # (its status lists it while it drains)
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 10, "in sync again")

    # Away again, while a change it would refuse is made (unchecked: the peer is away).
    lb2.node.stop()
    assert lb1.node.cli("drain", "Dicom", "rs1").returncode == 0
    code, body = lb1.curl("POST", "/api/v1/virtual_services", secure)
    assert code == 201, body
    lb2.start()
    # Back, the peer refuses the state (the certificate is missing there): refused whole, said
    # on both nodes, and lb1 stays behind.
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "refused", 20, "refused")
    print(f"lb1 once lb2 is back: {lb1.node.ha()['replication']['text']}")
    assert "web.pem" in lb1.node.ha()["replication"]["text"]
    assert lb2.node.admin_states()["Dicom/rs1"] == "online" and "Secure" not in lb2.node.servers()
    assert any("refused revision" in m for m in lb2.node.events())
    # The operator takes the service out again: the pair catches up.
    started = time.monotonic()
    code, body = lb1.curl("DELETE", "/api/v1/virtual_services/Secure")
    assert code == 200, body
    wait_for(lambda: lb2.node.admin_states()["Dicom/rs1"] == "drain", 20, "lb2 caught up")
    figures["caught up after the refused state was withdrawn (s)"] = time.monotonic() - started
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 10, "in sync again")

    for what, seconds in figures.items():
        print(f"{what}: {seconds:.3f}")

    # Takeover on the passive node: lb2 becomes active; its changes now flow to lb1.
    wait_for(lambda: lb2.role() == "passive", 20, "lb2 passive after its restart")
    done = lb2.node.cli("ha", "takeover")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: lb2.role() == "active" and lb1.role() == "passive", 20, "takeover")
    assert lb2.node.cli("drain", "Dicom", "rs2").returncode == 0
    wait_for(lambda: lb1.node.admin_states()["Dicom/rs2"] == "drain", 10, "drain on lb1")
    done = lb1.node.cli("online", "Dicom", "rs2")
    assert done.returncode == 1 and f"active node {LB2}" in done.stderr, done.stderr

    assert figures["config change: API call to in force on the passive (s)"] < REPLICATION_BOUND * 3
    assert figures["drain: CLI command to in force on the passive (s)"] < REPLICATION_BOUND * 3
    assert figures["split brain reported on both after both active (s)"] < SPLIT_BOUND * 3


def test_pairing_pins_the_certificate_checks_the_token_and_unpairs(
    pair: tuple[Lb, Lb, Path],
) -> None:
    lb1, lb2, _ = pair
    token = lb2.node.token("pairing")
    fingerprint = lb2.node.fingerprint()

    # From the passive node: refused (its configuration would replace the active one's).
    done = lb2.node.cli("ha", "pair", lb1.node.address, "--token", lb1.node.token("back"))
    assert done.returncode == 1 and "pair from the active node" in done.stderr, done.stderr

    # A wrong fingerprint: refused, nothing paired on either node.
    wrong = "AA:" * 31 + "AA"
    done = lb1.node.cli("ha", "pair", lb2.node.address, "--token", token, "--fingerprint", wrong)
    assert done.returncode == 1 and "not the" in done.stderr and fingerprint in done.stderr
    for lb in (lb1, lb2):
        assert not (lb.node.state / "ha-peer.json").exists()
        assert lb.node.ha()["paired"] is False
    # A token the peer does not know: refused by the peer, said so.
    done = lb1.node.cli("ha", "pair", lb2.node.address, "--token", "pacslb_0000_nope")
    assert done.returncode == 1 and "refused the token" in done.stderr, done.stderr

    # Trusted on first use (the token from stdin): the fingerprint is printed, and said so.
    done = lb1.node.cli("ha", "pair", lb2.node.address, "--token", "-", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert fingerprint in done.stdout and "trusted on first use" in done.stdout
    for lb in (lb1, lb2):
        assert stat.S_IMODE((lb.node.state / "ha-peer.json").stat().st_mode) == 0o600
    assert lb1.node.ha()["peer"]["fingerprint"] == fingerprint
    assert lb2.node.ha()["peer"]["fingerprint"] == lb1.node.fingerprint()
    assert lb2.node.ha()["peer"]["address"] == LB1
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 10, "in sync")

    # The WebUI's HA page, the Overview's HA line and /metrics say so.
    code, page = lb1.curl("GET", "/ha")
    assert code == 200 and 'id="ha-replication">in sync' in page and fingerprint in page
    code, page = lb2.curl("GET", "/")
    assert f"HA: this node <strong>passive</strong> · peer {LB1} (active)" in page
    code, metrics = lb1.curl("GET", "/metrics")
    assert "pacslb_ha_peer_reachable 1.0" in metrics and "pacslb_ha_in_sync 1.0" in metrics
    assert "pacslb_ha_revisions_behind 0.0" in metrics

    # The peer's certificate replaced (a new one generated at its start): nothing is sent to
    # it any more; pairing again with the new fingerprint pins that one.
    lb2.node.stop()
    for name in ("webui-cert.pem", "webui-key.pem"):
        (lb2.node.state / name).unlink()
    lb2.start()
    renewed = lb2.node.fingerprint()
    assert renewed != fingerprint
    wait_for(lambda: (lb1.node.ha()["peer"]["error"] or "").find("not the pinned") > 0, 15, "pin")
    listing = lb1.node.cli("ha", "status").stdout
    print(listing)
    assert f"presented a certificate with fingerprint {renewed}" in listing
    assert "nothing was sent" in listing
    token = lb2.node.token("pairing-again")
    done = lb1.node.cli(
        "ha", "pair", lb2.node.address, "--token", token, "--fingerprint", renewed.lower()
    )
    assert done.returncode == 0 and "trusted on first use" not in done.stdout, done.stderr
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 10, "in sync again")

    # Unpair on the active node: the pairing and the tokens each was given go on both.
    done = lb1.node.cli("ha", "unpair")
    assert done.returncode == 0 and "on both nodes" in done.stdout, done.stdout + done.stderr
    for lb in (lb1, lb2):
        assert not (lb.node.state / "ha-peer.json").exists()
        assert lb.node.ha()["paired"] is False
    # Only the tokens the pairing minted go: the operator's own tokens of lb2 stay its own.
    for lb in (lb1, lb2):
        assert "ha-peer" not in lb.node.cli("token", "list").stdout
    assert "pairing-again" in lb2.node.cli("token", "list").stdout


def partition(lb: Lb, on: bool) -> None:
    """Everything from the other node dropped on lb's input: VRRP and the API alike."""
    peer = LB1 if lb.node.address.startswith(LB2) else LB2
    if on:
        lb.host.run("nft", "add table inet partition")
        lb.host.run(
            "nft",
            "add chain inet partition input { type filter hook input priority -300 ; }",
        )
        lb.host.run("nft", "add rule inet partition input ip saddr", peer, "drop")
    else:
        lb.host.run("nft", "delete", "table", "inet", "partition")


def test_pairing_refusals_and_a_conflict_after_a_partition(
    pair: tuple[Lb, Lb, Path], tmp_path: Path
) -> None:
    lb1, lb2, _ = pair

    # A man in the middle: a TLS-terminating relay (its own certificate) in lb1's namespace
    # relays to lb2. Trusted on first use, the proofs still refuse it: lb2 proves the secret
    # over its own certificate, not the relay's that lb1 sees.
    cert, key = certs.self_signed("relay", datetime.datetime.now(datetime.UTC), ["relay"])
    (tmp_path / "relay.pem").write_bytes(cert + key)
    relay = lb1.host.popen(
        [
            sys.executable,
            str(ROOT / "tests/netns/tls_relay.py"),
            "127.0.0.1",
            "21100",
            LB2,
            str(PORT),
            str(tmp_path / "relay.pem"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
        done = lb1.node.cli("ha", "pair", "127.0.0.1:21100", "--token", lb2.node.token("mitm"))
        print(done.stderr)
        assert done.returncode == 1 and "does not prove" in done.stderr, done.stderr
        assert "presents its own certificate" in done.stderr
    finally:
        relay.terminate()
        relay.wait(10)
    for lb in (lb1, lb2):
        assert lb.node.ha()["paired"] is False
        assert "ha-peer" not in lb.node.cli("token", "list").stdout  # the minted one revoked

    # A peer that holds other services: refused unless forced (they would be replaced).
    code, body = lb2.curl(
        "POST",
        "/api/v1/virtual_services/Dicom/real_servers",
        {"label": "rs9", "address": "198.18.0.19"},
    )
    assert code == 201, body  # unpaired: lb2 takes changes as a standalone node does
    token = lb2.node.token("pairing")
    done = lb1.node.cli("ha", "pair", lb2.node.address, "--token", token)
    assert done.returncode == 1 and "--force" in done.stderr, done.stderr
    assert "has 1 virtual service(s) and this node 1, different ones" in done.stderr
    done = lb1.node.cli("ha", "pair", lb2.node.address, "--token", token, "--force")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: "rs9" not in lb2.node.servers()["Dicom"], 10, "rs9 replaced on lb2")
    wait_for(lambda: lb1.node.ha()["replication"]["state"] == "in-sync", 10, "in sync")
    wait_for(lambda: lb2.node.ha()["replication"]["state"] == "in-sync", 10, "lb2 in sync")
    # The operator's token on lb2 is not the replication credential: lb2 minted its own.
    assert "ha-peer" in lb2.node.cli("token", "list").stdout

    # A partition: each node active, each takes an edit; when the link returns neither
    # overwrites the other: a conflict on both, until the operator keeps one side.
    partition(lb2, True)
    try:
        wait_for(lambda: lb2.role() == "active", 20, "lb2 active (partition)")
        wait_for(lambda: lb1.node.ha()["replication"]["state"] == "unreachable", 15, "away 1")
        wait_for(lambda: lb2.node.ha()["replication"]["state"] == "unreachable", 15, "away 2")
        assert lb1.node.cli("drain", "Dicom", "rs1").returncode == 0
        done = lb2.node.cli("halt", "Dicom", "rs2")
        assert done.returncode == 0, done.stderr
    finally:
        partition(lb2, False)
    wait_for(lambda: lb2.role() == "passive", 20, "lb2 passive again")
    for lb in (lb1, lb2):
        wait_for(lambda lb=lb: lb.node.ha()["replication"]["state"] == "conflict", 15, "conflict")
    time.sleep(2)  # a few polls: still nothing replicated either way
    assert lb1.node.admin_states() == {"Dicom/rs1": "drain", "Dicom/rs2": "online"}
    assert lb2.node.admin_states() == {"Dicom/rs1": "online", "Dicom/rs2": "halt"}
    for lb in (lb1, lb2):
        text = lb.node.ha()["replication"]["text"]
        assert "pacslb ha resolve --keep-this" in text, text
        assert any("replication conflict: this node (revision" in m for m in lb.node.events())
        code, metrics = lb.curl("GET", "/metrics")
        assert "pacslb_ha_conflict 1.0" in metrics
        code, page = lb.curl("GET", "/")
        assert 'id="conflict"' in page
        assert "CONFLICT" in lb.node.cli("ha", "status").stdout
    print(lb1.node.ha()["replication"]["text"])
    # The operator keeps lb2's state (edits made there): it replaces lb1's.
    done = lb2.node.cli("ha", "resolve", "--keep-this")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: lb1.node.admin_states()["Dicom/rs2"] == "halt", 15, "lb2's state on lb1")
    assert lb1.node.admin_states()["Dicom/rs1"] == "online"
    for lb in (lb1, lb2):
        wait_for(lambda lb=lb: lb.node.ha()["replication"]["state"] == "in-sync", 15, "in sync")
    assert any("conflict resolved by the operator" in m for m in lb2.node.events())

    # Unpair: only the tokens the pairing minted go; the operator's stay.
    assert lb1.node.cli("ha", "unpair").returncode == 0
    for lb in (lb1, lb2):
        assert "ha-peer" not in lb.node.cli("token", "list").stdout
    assert "pairing" in lb2.node.cli("token", "list").stdout


@pytest.mark.browser
def test_webui_pairs_and_takes_over(pair: tuple[Lb, Lb, Path], tmp_path: Path) -> None:
    """The HA page in headless Chromium (run in the client's namespace): the pair form on the
    active node, the Overview's HA line on the passive one, Take over on the passive one.
    Screenshots: tests/browser/artifacts/ha-*.png."""
    pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    lb1, lb2, _ = pair
    client = lb1.topo_client
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def drive(action: str, lb: Lb, *args: str) -> dict[str, str]:
        shot = ARTIFACTS / f"ha-{action}.png"
        out = client.run(
            sys.executable,
            str(ROOT / "tests/netns/ha_webui_driver.py"),
            action,
            f"https://{lb.node.address}",
            PASSWORD,
            str(shot),
            *args,
        )
        result: dict[str, str] = json.loads(out.strip().splitlines()[-1])
        return result

    token = lb2.node.token("pairing")
    paired = drive("pair", lb1, lb2.node.address, token)
    print(paired)
    assert paired["#ha-message"].startswith(f"Paired with {lb2.node.address}")
    assert lb2.node.fingerprint() in paired["#ha-message"]
    wait_for(lambda: lb2.node.ha()["replication"]["state"] == "in-sync", 10, "lb2 in sync")
    line = drive("overview", lb2)["ha_line"]
    print(line)
    assert f"this node passive · peer {LB1} (active) · replication: in sync" in line
    took = drive("takeover", lb2)
    print(took)
    assert took["#ha-message"] == f"Asked {LB1} to release the floating addresses to this node."
    wait_for(lambda: lb2.role() == "active" and lb1.role() == "passive", 20, "taken over")
