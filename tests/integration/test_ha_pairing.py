"""Pairing and replication between two real `pacslb run` nodes on loopback (127.10.2.x).

Node A (127.10.2.1) pairs with node B (127.10.2.2) through the CLI, as the guide's appendix
does it on the active node: a wrong fingerprint is refused, then B's certificate is pinned on
first use. From then on a change made on A is applied on B (its own `node:` kept), a drain
too; a revision B cannot apply (a TLS certificate that exists on A only: B runs in a mount
namespace of its own, where that folder is empty) is refused on both; a B that is stopped
catches up when it returns; unpairing removes the pairing and the tokens on both.

The roles (active/passive from keepalived) are not part of this test: both nodes stay
"starting" here; tests/netns/test_ha_replication.py runs the pair with keepalived.
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers.ha_node import SECRET, HaNode, wait_for
from tests.peers.procs import free_port

from pacslb.core import certs
from pacslb.core.replication import fingerprint

A_HOST, B_HOST = "127.10.2.1", "127.10.2.2"
VIP = "127.10.2.30"

pytestmark = pytest.mark.timeout(300)


def services(port: int, servers: str = "Srv1") -> str:
    lines = [
        "  - label: Web",
        f"    vip: {VIP}",
        f"    ports: [{port}]",
        "    mode: l7-tcp",
        "    health_check: {type: none}",
        "    real_servers:",
    ]
    for i, label in enumerate(servers.split(",")):
        lines.append(f"      - {{label: {label}, address: 127.10.2.{40 + i}, port: 18081}}")
    return "\n".join(lines) + "\n"


def ha_settings(own: str, peer: str) -> str:
    return (
        f"  ha: {{enabled: true, interface: lo, address: {own}, peers: [{peer}], "
        f'secret: "{SECRET}"}}\n'
    )


def cert_fingerprint(node: HaNode) -> str:
    import ssl

    pem = (node.state / "webui-cert.pem").read_text()
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[HaNode, HaNode, Path]]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("node B runs in a mount namespace of its own (unshare -m): needs root")
    port = free_port(VIP)
    a = HaNode("A", tmp_path / "a", A_HOST, free_port(A_HOST))
    b = HaNode("B", tmp_path / "b", B_HOST, free_port(B_HOST))
    a.write(ha_settings(A_HOST, B_HOST), services(port))
    b.write(ha_settings(B_HOST, A_HOST), services(port))
    only_on_a = tmp_path / "only-on-a"
    only_on_a.mkdir()
    cert, key = certs.self_signed("web", datetime.datetime.now(datetime.UTC), ["web"])
    (only_on_a / "web.pem").write_bytes(cert + key)
    try:
        a.start()
        b.start(**hidden(only_on_a))
        yield a, b, only_on_a
    finally:
        b.stop()
        a.stop()


def hidden(folder: Path) -> dict[str, object]:
    """Start arguments that run a node with `folder` empty (a tmpfs over it, in a mount
    namespace of its own): a file the other node has and this one lacks."""
    return {
        "prefix": ["unshare", "--mount", "--propagation", "private"],
        "shell": f"mount -t tmpfs pacslb-test {folder}",
    }


def test_pair_replicate_refuse_catch_up_unpair(pair: tuple[HaNode, HaNode, Path]) -> None:
    a, b, only_on_a = pair
    token = b.token()

    # A wrong fingerprint: refused, nothing paired on either node.
    wrong = "AA:" * 31 + "AA"
    done = a.cli("ha", "pair", b.address, "--token", token, "--fingerprint", wrong)
    assert done.returncode == 1, done.stdout
    assert "not the" in done.stderr and cert_fingerprint(b) in done.stderr, done.stderr
    assert not (a.state / "ha-peer.json").exists() and not (b.state / "ha-peer.json").exists()

    # A wrong token: refused by the peer, named.
    done = a.cli("ha", "pair", b.address, "--token", "pacslb_0000_nope")
    assert done.returncode == 1 and "refused the token" in done.stderr, done.stderr

    # Pairing through the CLI, fingerprint trusted on first use (printed, and said so).
    done = a.cli("ha", "pair", b.address, "--token", token)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert cert_fingerprint(b) in done.stdout and "trusted on first use" in done.stdout
    assert b.fingerprint() == cert_fingerprint(b)
    for node in (a, b):
        info = (node.state / "ha-peer.json").stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
    assert a.ha()["peer"]["fingerprint"] == cert_fingerprint(b)
    assert b.ha()["peer"]["fingerprint"] == cert_fingerprint(a)
    assert b.ha()["peer"]["address"] == A_HOST
    wait_for(lambda: a.ha()["replication"]["state"] == "in-sync", 10, "A in sync after pairing")
    wait_for(lambda: b.ha()["replication"]["state"] == "in-sync", 10, "B in sync after pairing")

    # A change on A (REST API) is applied on B within 2 s; B's own node: stays.
    new = {"label": "Srv2", "address": "127.10.2.41", "port": 18081}
    started = time.monotonic()
    r = a.api("POST", "/api/v1/virtual_services/Web/real_servers", new)
    assert r.status_code == 201, r.text
    wait_for(lambda: b.servers()["Web"] == ["Srv1", "Srv2"], 10, "Srv2 on B")
    took = time.monotonic() - started  # from the request on A to the change in force on B
    print(f"config change on A applied on B after {took:.3f} s")
    assert took < 2.0
    b_text = b.config.read_text()
    assert "Srv2" in b_text and f'listen: "{b.address}"' in b_text and B_HOST in b_text
    revisions = b.api("GET", "/api/v1/config/revisions").json()
    assert revisions[-1]["author"] == "ha-peer"
    assert revisions[-1]["comment"].startswith(f"replicated from {A_HOST} revision ")

    # A drain on A (the CLI) is applied on B within 2 s.
    started = time.monotonic()
    done = a.cli("drain", "Web", "Srv1")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: b.admin_states()["Web/Srv1"] == "drain", 10, "drain on B")
    took = time.monotonic() - started  # the CLI's own start-up (a Python process) included
    print(f"drain on A applied on B after {took:.3f} s")
    assert took < 2.0
    wait_for(lambda: a.ha()["replication"]["state"] == "in-sync", 5, "in sync after the drain")
    page = a.api("GET", "/ha").text
    assert 'id="ha-replication">in sync' in page and cert_fingerprint(b) in page
    assert f"peer {B_HOST} (" in a.api("GET", "/").text
    metrics = a.api("GET", "/metrics").text
    assert "pacslb_ha_peer_reachable 1.0" in metrics and "pacslb_ha_revisions_behind 0.0" in metrics

    # A revision B cannot apply (the certificate exists on A only): refused on both.
    a_rev, b_rev = a.status()["revision"], b.status()["revision"]
    service = a.api("GET", "/api/v1/virtual_services/Web").json()
    tls = {
        **service,
        "label": "Secure",
        "mode": "l7-http",
        "ports": [free_port(VIP)],
        "tls": {"certificates": [{"certificate": str(only_on_a / "web.pem")}]},
    }
    r = a.api("POST", "/api/v1/virtual_services", tls)
    assert r.status_code == 422, r.text
    messages = " ".join(p["message"] for p in r.json()["problems"])
    print(f"refused by the peer: {messages}")
    assert f"peer {B_HOST}" in messages and "web.pem" in messages
    assert a.status()["revision"] == a_rev and b.status()["revision"] == b_rev
    assert "Secure" not in a.servers() and "Secure" not in b.servers()
    assert any("refused it" in m for m in a.events())
    assert any("refused a change" in m for m in b.events())

    # B stopped: A keeps committing; it says how far behind B is; B catches up on return.
    b.stop()
    done = a.cli("online", "Web", "Srv1")
    assert done.returncode == 0, done.stderr
    r = a.api("DELETE", "/api/v1/virtual_services/Web/real_servers/Srv2")
    assert r.status_code == 200, r.text
    wait_for(lambda: a.ha()["replication"]["state"] == "unreachable", 10, "A: B unreachable")
    text = a.ha()["replication"]["text"]
    print(f"A while B is away: {text}")
    assert text.startswith("peer unreachable since ") and "1 revision behind" in text
    listing = a.cli("ha", "status").stdout
    assert "peer unreachable since" in listing, listing
    b.start(**hidden(only_on_a))
    took = wait_for(lambda: b.servers()["Web"] == ["Srv1"], 20, "B caught up")
    print(f"B caught up {took:.3f} s after it was ready again")
    wait_for(lambda: b.admin_states()["Web/Srv1"] == "online", 5, "B: Srv1 online")
    wait_for(lambda: a.ha()["replication"]["state"] == "in-sync", 10, "in sync again")

    # Unpair (CLI on A): the pairing and the tokens each node was given are gone on both.
    done = a.cli("ha", "unpair")
    assert done.returncode == 0 and "on both nodes" in done.stdout, done.stdout + done.stderr
    assert not (a.state / "ha-peer.json").exists() and not (b.state / "ha-peer.json").exists()
    assert a.ha()["paired"] is False and b.ha()["paired"] is False
    assert "ha-peer" not in a.cli("token", "list").stdout
    assert b.cli("token", "list").stdout.strip() == ""
