"""Transparent l7 (`source: client`, docs/transparent.md) end to end in namespaces: clients on
198.18.1.0/24 (and 2001:2:1::/64), real servers on 198.18.2.0/24 (2001:2:2::/64) whose
gateway is the LB. The real servers' own logs show the client's address for l7-tcp (peer.py's
answer, storescp's log) and l7-http (nginx's access log, `$remote_addr`), IPv4 and IPv6; a
C-STORE arrives intact; splice keeps relaying; `doctor` names a removed route; the host rules
go with the last transparent service."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import Pacslb
from tests.netns.test_doctor import pacslb
from tests.netns.topology import (
    GATEWAY,
    Client,
    Host,
    Topology,
    add_ipv6,
    named_servers,
    two_arm,
    v6,
)
from tests.peers.procs import wait_until

VIP = "198.18.1.100"
VIP6 = v6(VIP)  # 2001:2:1::100
CLIENT, CLIENT6 = "198.18.1.10", v6("198.18.1.10")
SECOND_CLIENT = "198.18.1.11"  # another address of the client host: pooled upstreams split
LB_INSIDE = GATEWAY  # the LB's own address on the servers' segment (what `auto` shows)
LB_OUTSIDE = "198.18.1.2"  # its address on the clients' segment (a fixed source)
STORESCP, STORESCU = "/usr/bin/storescp", "/usr/bin/storescu"
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise (research/dicom.md)

NGINX_CONF = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format peer '$remote_addr $request_uri';
    access_log {dir}/access.log peer;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 8081;
        listen [::]:8081;
        location / {{ return 200 "{name}\\n"; }}
    }}
}}
"""


def check() -> dict[str, Any]:
    return {"type": "connect", "interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 1}


def service(label: str, mode: str, vip: str, port: int, rs_port: int, **kw: Any) -> dict[str, Any]:
    six = ":" in vip
    servers = kw.pop("servers", ("rs1", "rs2"))
    return {
        "label": label,
        "vip": vip,
        "ports": [port],
        "mode": mode,
        "scheduler": "rr",
        "source": kw.pop("source", "client"),
        "health_check": {**check(), "port": rs_port},
        "real_servers": [
            {
                "label": name,
                "address": v6(f"198.18.2.1{name[-1]}") if six else f"198.18.2.1{name[-1]}",
                "port": rs_port,
            }
            for name in servers
        ],
        **kw,
    }


def config(source: str = "client") -> dict[str, Any]:
    return {
        "version": 1,
        "virtual_services": [
            service("Tcp", "l7-tcp", VIP, 80, 8080, source=source),
            service("Tcp6", "l7-tcp", VIP6, 80, 8080, source=source),
            service("Web", "l7-http", VIP, 81, 8081, source=source),
            service("Web6", "l7-http", VIP6, 81, 8081, source=source),
            service("Dicom", "l7-tcp", VIP, 104, 11112, source=source, servers=("rs1",)),
            service("TcpAuto", "l7-tcp", VIP, 90, 8080, source="auto"),
            service("TcpVip", "l7-tcp", VIP, 91, 8080, source="vip"),
            service("TcpFixed", "l7-tcp", VIP, 92, 8080, source=LB_OUTSIDE),
            service("WebVip", "l7-http", VIP, 93, 8081, source="vip"),
        ],
    }


class Estate:
    def __init__(self, topo: Topology, run: Pacslb, tmp: Path) -> None:
        self.topo, self.run, self.tmp = topo, run, tmp

    @property
    def client(self) -> Host:
        return self.topo.hosts["client"]

    @property
    def lb(self) -> Host:
        return self.topo.hosts["lb"]

    def access_log(self) -> list[str]:
        lines: list[str] = []
        for name in ("rs1", "rs2"):
            path = self.tmp / f"nginx-{name}" / "access.log"
            lines += path.read_text().splitlines() if path.exists() else []
        return lines

    def doctor(self) -> dict[tuple[str, str], dict[str, Any]]:
        done = pacslb(self.lb, "doctor", "--json", str(self.run.config_path))
        report = json.loads(done.stdout)
        return {(f["check"], f["subject"]): f for f in report["findings"]}


def start_nginx(host: Host, name: str, tmp: Path) -> None:
    where = tmp / f"nginx-{name}"
    for sub in ("", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (where / sub).mkdir(exist_ok=True)
    conf = where / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=where, name=name))
    host.popen(
        ["nginx", "-p", str(where), "-c", str(conf), "-g", "daemon off; user root;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    tmp = tmp_path_factory.mktemp("tproxy")
    with two_arm(servers=2, gateway=True) as topo:
        add_ipv6(topo, gateway=v6(GATEWAY))
        client, lb = topo.hosts["client"], topo.hosts["lb"]
        client.run("ip", "addr", "add", f"{SECOND_CLIENT}/24", "dev", "eth0")
        # A layer 7 VIP is an address of the host (the operator's step; l4 places its own).
        lb.run("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
        lb.run("ip", "-6", "addr", "add", f"{VIP6}/128", "dev", "eth0", "nodad")
        named_servers(topo, [8080])
        for name in ("rs1", "rs2"):
            start_nginx(topo.hosts[name], name, tmp)
        rx = tmp / "rx"
        rx.mkdir()
        topo.hosts["rs1"].popen(
            [STORESCP, "-d", "-aet", "PACS", "-dhl", "+B", "-od", str(rx), "11112"],
            env={**os.environ, **DCMTK_ENV},
            stdout=open(tmp / "storescp.log", "wb"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
        )
        run = Pacslb(lb, tmp, config())
        run.start()
        try:
            estate = Estate(topo, run, tmp)
            wait_until(
                lambda: all(
                    run.server(s, "rs1")["health"] == "up" for s in ("Tcp", "Web6", "Dicom")
                ),
                15,
                "servers up",
                step=0.2,
            )
            yield estate
        finally:
            run.stop()


def test_l7_tcp_real_servers_see_the_clients_own_address_v4_and_v6(estate: Estate) -> None:
    for vip, expected in ((VIP, CLIENT), (VIP6, CLIENT6)):
        c = Client(estate.client, vip, 80)
        try:
            assert [c.peer() for _ in range(4)] == [expected] * 4, vip  # both servers (rr)
            assert set(c.open(4)) == {"rs1", "rs2"}
            assert c.bulk(20_000_000) == 20_000_000  # the splice relay carries it
        finally:
            c.close()
    auto = Client(estate.client, VIP, 90)
    assert auto.peer() == LB_INSIDE  # the same servers behind an `auto` service: the LB
    auto.close()


def test_l7_http_real_servers_log_each_clients_own_address_v4_and_v6(estate: Estate) -> None:
    def curl(*args: str) -> str:
        return estate.client.run("curl", "-sS", "--max-time", "5", *args)

    # Two requests a connection (keep-alive: the pooled upstream is reused), from two
    # addresses in turn: each request must reach the server from its own client's address.
    for round_ in range(3):
        curl(f"http://{VIP}:81/a{round_}", f"http://{VIP}:81/b{round_}")
        curl(
            "--interface", SECOND_CLIENT, f"http://{VIP}:81/c{round_}", f"http://{VIP}:81/d{round_}"
        )
        curl("-g", f"http://[{VIP6}]:81/e{round_}")
    wait_until(lambda: len(estate.access_log()) >= 15, 5, "nginx access log lines", step=0.1)
    seen = dict(line.split()[::-1] for line in estate.access_log())  # uri -> remote_addr
    for round_ in range(3):
        assert seen[f"/a{round_}"] == seen[f"/b{round_}"] == CLIENT, seen
        assert seen[f"/c{round_}"] == seen[f"/d{round_}"] == SECOND_CLIENT, seen
        assert seen[f"/e{round_}"] == CLIENT6, seen


def test_vip_and_fixed_sources_are_what_the_real_servers_see(estate: Estate) -> None:
    for port, expected in ((91, VIP), (92, LB_OUTSIDE)):
        c = Client(estate.client, VIP, port)
        assert [c.peer() for _ in range(2)] == [expected] * 2, port
        c.close()
    for i in range(2):
        estate.client.run("curl", "-sS", "--max-time", "5", f"http://{VIP}:93/vip{i}")
    wait_until(lambda: sum("/vip" in line for line in estate.access_log()) == 2, 5, "log", step=0.1)
    assert {line for line in estate.access_log() if "/vip" in line} == {
        f"{VIP} /vip0",
        f"{VIP} /vip1",
    }


def test_a_c_store_through_the_transparent_vip_arrives_intact(estate: Estate) -> None:
    from tests.integration.test_tcp_proxy import dataset_part
    from tests.netns.test_mckesson_e2e import dicom_files

    sent = dicom_files(estate.tmp / "src", 4)
    files = sorted((estate.tmp / "src").iterdir())
    estate.client.run(
        "env", "TCP_NODELAY=1", STORESCU, "-aet", "MODALITY", "-aec", "PACS", VIP, "104",
        *map(str, files),
    )  # fmt: skip
    got = {
        p.name.split(".", 1)[1]: dataset_part(p.read_bytes()) for p in (estate.tmp / "rx").iterdir()
    }
    assert got == sent
    # storescp's own log names each association's peer (-d: "Association Received: ADDR"):
    # the one that stored came from the modality; the health checks' come from the LB.
    log = (estate.tmp / "storescp.log").read_text(errors="replace")
    peers = {
        part.split(maxsplit=1)[0]: "Store Request" in part
        for part in log.split("Association Received: ")[1:]
    }
    assert peers.get(CLIENT) is True and peers.get(LB_INSIDE) is False, peers


def test_realserver_prints_the_gateway_step_for_transparent_servers(estate: Estate) -> None:
    done = pacslb(estate.lb, "realserver", "--config", str(estate.run.config_path))
    assert done.returncode == 0, done.stderr
    assert "transparent l7 (Tcp, Web, Dicom) on a Linux real server" in done.stdout
    assert f"ip route replace default via {GATEWAY} dev eth0" in done.stdout


def test_doctor_names_a_removed_route_and_its_fix_puts_it_back(estate: Estate) -> None:
    before = estate.doctor()
    assert before[("tproxy-route", "IPv4 (Tcp, Web, Dicom)")]["level"] == "ok"
    assert before[("tproxy-nft", "this host")]["level"] == "ok"
    assert before[("tproxy-kernel", "this host")]["level"] == "ok"  # the socket expression
    estate.lb.run("ip", "-4", "route", "flush", "table", "21584")
    found = estate.doctor()[("tproxy-route", "IPv4 (Tcp, Web, Dicom)")]
    assert found["level"] == "problem" and "local route" in found["message"], found
    assert found["fix"] == "ip -4 route add local 0.0.0.0/0 dev lo table 21584"
    assert estate.doctor()[("tproxy-route", "IPv6 (Tcp6, Web6)")]["level"] == "ok"
    estate.lb.run(*shlex.split(found["fix"]))
    assert estate.doctor()[("tproxy-route", "IPv4 (Tcp, Web, Dicom)")]["level"] == "ok"
    c = Client(estate.client, VIP, 80)
    assert c.peer() == CLIENT
    c.close()


def test_doctor_names_a_transparent_server_whose_gateway_is_not_the_lb(estate: Estate) -> None:
    """Its health checks (from the LB's own address) pass, so only the route-back probe can
    tell that every transparent connection to it would time out."""
    rs2 = estate.topo.hosts["rs2"]
    rs2.run("ip", "route", "replace", "default", "via", "198.18.2.254")  # not the LB
    try:
        found = estate.doctor()
        bad = found[("nat-route", "Tcp/rs2 (198.18.2.12)")]
        assert bad["level"] == "problem", bad
        assert "transparent connections (source: client) to it time out" in bad["message"]
        assert bad["fix"].startswith(f"on rs2: make {GATEWAY} its default gateway")
        assert found[("nat-route", "Tcp/rs1 (198.18.2.11)")]["level"] == "ok"
        assert found[("nat-route", "Tcp6")]["level"] == "skipped"  # IPv4 only
    finally:
        rs2.run("ip", "route", "replace", "default", "via", GATEWAY)
    assert estate.doctor()[("nat-route", "Tcp/rs2 (198.18.2.12)")]["level"] == "ok"


def test_a_client_on_the_servers_own_subnet_is_connected_from_the_lb(estate: Estate) -> None:
    """Hairpin: rs2 as a client of the VIP (a RIS beside the archives). From its own address
    the server would answer it directly and the connection would time out on every server;
    the proxy connects it from its own address instead, at once, and says so once."""
    c = Client(estate.topo.hosts["rs2"], VIP, 80)
    try:
        started = time.monotonic()
        assert [c.peer() for _ in range(2)] == [LB_INSIDE] * 2
        assert time.monotonic() - started < 2.0  # no connect timeout
    finally:
        c.close()
    wait_until(lambda: "own subnet" in estate.run.log(), 5, "the hairpin event", step=0.1)
    c = Client(estate.client, VIP, 80)
    assert c.peer() == CLIENT  # other clients stay transparent
    c.close()


def test_source_ports_running_out_is_the_sources_fault_not_the_servers(estate: Estate) -> None:
    """A fixed source has a port range per server (IP_BIND_ADDRESS_NO_PORT). When it is used
    up the connect fails with EADDRNOTAVAIL at once: the client is reset and the event names
    the cause; the servers, which did nothing wrong, get no connect failure (passive health)."""
    lb = estate.lb
    before = lb.run("sysctl", "-n", "net.ipv4.ip_local_port_range").split()
    lb.run("sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40001")  # two ports a server
    held = Client(estate.client, VIP, 92)  # TcpFixed: source 198.18.1.2, rs1 and rs2
    try:
        got = held.open(6)
        assert sorted(n for n in got if not n.startswith("error")) == ["rs1"] * 2 + ["rs2"] * 2
        assert len([n for n in got if n.startswith("error")]) == 2, got
    finally:
        held.close()
        lb.run("sysctl", "-w", f"net.ipv4.ip_local_port_range={before[0]} {before[1]}")
    for name in ("rs1", "rs2"):
        assert estate.run.server("TcpFixed", name)["connections"]["connect_failures"] == 0
    wait_until(lambda: "every source port" in estate.run.log(), 5, "the event", step=0.1)


def test_a_restart_under_a_kept_data_plane_never_takes_the_return_path_away(
    estate: Estate,
) -> None:
    """`stop --keep-data-plane`, then start: the transparent connections the kept workers hold
    go on, and the policy rule is taken over, never deleted and made again (a reply in such a
    gap would be forwarded to the client, whose RST cuts the server's side)."""
    held = Client(estate.client, VIP, 80)
    monitor_log = estate.tmp / "ip-monitor-rule.log"
    with open(monitor_log, "wb") as out:
        monitor = estate.lb.popen(["ip", "monitor", "rule"], stdout=out, stderr=subprocess.STDOUT)
    try:
        assert len(held.open(2)) == 2
        marker = len((estate.tmp / "run.log").read_bytes())
        estate.run.cli("stop", "--keep-data-plane")
        assert estate.run.proc is not None
        estate.run.proc.wait(15)
        estate.run.start()
        assert held.ping(within=3) == ["ok", "ok"]
        time.sleep(0.3)  # the monitor's lines are written
    finally:
        monitor.terminate()
        monitor.wait(5)
        held.close()
    assert "Deleted" not in monitor_log.read_text(), monitor_log.read_text()
    restarted = (estate.tmp / "run.log").read_bytes()[marker:].decode(errors="replace")
    assert "took over the IPv4/6 transparent-mode rules an earlier run left" in restarted


def test_the_rules_go_with_the_last_transparent_service(estate: Estate) -> None:
    lb = estate.lb

    def left() -> list[str]:
        out = []
        for fam in ("-4", "-6"):
            if lb.run("ip", fam, "rule", "show", "pref", "21584").strip():
                out.append(f"ip {fam} rule")
            if lb.run("ip", fam, "route", "show", "table", "21584", check=False).strip():
                out.append(f"ip {fam} route")
        if lb.run("nft", "list", "table", "inet", "pacslb_tproxy", check=False).strip():
            out.append("nft table")
        return out

    assert left() == ["ip -4 rule", "ip -4 route", "ip -6 rule", "ip -6 route", "nft table"]
    held = Client(estate.client, VIP, 80)  # a transparent connection open across the change
    assert len(held.open(2)) == 2
    estate.run.write(config(source="auto"))
    estate.run.cli("reload")
    # Its return path stays while it lasts: it goes on working (not left hanging).
    wait_until(lambda: "transparent connection(s) finish" in estate.run.log(), 10, "kept", step=0.1)
    assert held.ping(within=3) == ["ok", "ok"]
    assert {"ip -4 rule", "ip -4 route", "nft table"} <= set(left())
    held.close()
    # (l7-http's idle pooled upstreams from the clients' addresses are closed at once too:
    # with the source changed they are never reused)
    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == [], estate.run.log()
    c = Client(estate.client, VIP, 80)
    assert c.peer() == LB_INSIDE  # back to the LB's own address
    c.close()
