"""The McKesson estate end to end, both variants, as an operator deploys it from the guide.

For each variant (`dr`, `nat-l7`): `pacslb profile mckesson --variant V` writes the config, with
this test's addresses given by the profile's own --vip/--rip options (the guide's example
addresses are data, never targets); `pacslb realserver --config` prints each real server's
set-up and the test runs exactly that in the server's namespace; `pacslb run` starts in the
LB's namespace; then a client drives dcmtk and HTTP through the five VIPs, the REST API reports
health, one server per service fails its check, and drain and halt do what the guide says.

Addresses: the VIPs keep the guide's last octets (.30 DICOM, .31 Web, .40 Manager, .41 Viewer,
.50 Cardiology) in 198.18.0.0/24 (DR: one segment) or 198.18.1.0/24 (NAT: the clients' side);
ten real servers rs1..rs10, two a service, at 198.18.0.11-20 (DR) or 198.18.2.11-20 (NAT, behind
the LB at 198.18.2.1).

What differs from the profile's defaults, and why: every health check's interval is 1 s and its
timeout 0.8 s (the profile leaves the defaults, 5 s and 3 s), so that a failure shows within
fall x interval + 1 = 4 s rather than 16 s and the two variants run in well under 2.5 minutes;
rise (2) and fall (3) stay the profile's.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns.conftest import PACSLB, Pacslb
from tests.netns.test_doctor import apply_printed
from tests.netns.topology import ROOT, Host, Topology, one_arm, two_arm

KEYS = ("dicom", "web", "manager", "crv", "cardiology")
VIP_OCTET = {"dicom": 30, "web": 31, "manager": 40, "crv": 41, "cardiology": 50}
RS_OF = {key: (f"rs{2 * i + 1}", f"rs{2 * i + 2}") for i, key in enumerate(KEYS)}
CHECK_URL = {  # the guide's check per web product, and what it answers
    "web": ("/wpp/srvpacs.asp", "srvPACS OK"),
    "manager": ("/cis/index.html", "OK"),
    "crv": ("/McKessonEmiCRV/Ping.aspx", "OK"),
}
INTERVAL, TIMEOUT = 1.0, 0.8  # see the module docstring
SLACK = 1.0  # the watcher polls every 0.2 s and the checker's probes run on a loaded machine
API_PORT = 26443
STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
DCMTK_ENV = {"TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise (research/dicom.md)
PEER = [sys.executable, str(ROOT / "tests/netns/estate_peer.py")]


@dataclass
class Estate:
    variant: str
    topo: Topology
    run: Pacslb
    config: dict[str, Any]
    token: str
    tmp: Path
    vips: dict[str, str]
    names: dict[str, tuple[str, str]]  # service key -> its real servers' labels
    labels: dict[str, str]  # service key -> virtual service label
    printed: str  # what `pacslb realserver --config` printed
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    driver: subprocess.Popen[Any] | None = None

    @property
    def client(self) -> Host:
        return self.topo.hosts["client"]

    def host_of(self, key: str, server: str) -> Host:
        return self.topo.hosts[RS_OF[key][self.names[key].index(server)]]

    # --- the REST API, with a token, from the LB's own namespace ---------------------------
    def api(self, method: str, path: str) -> Any:
        out = self.topo.hosts["lb"].run(
            "curl", "-sS", "--fail-with-body", "-X", method,
            "--cacert", str(self.run.state_dir / "webui-cert.pem"),
            "-H", f"Authorization: Bearer {self.token}",
            f"https://127.0.0.1:{API_PORT}/api/v1{path}",
        )  # fmt: skip
        return json.loads(out)

    def health(self) -> dict[tuple[str, str], str]:
        return {
            (svc["label"], rs["label"]): rs["health"]
            for svc in self.api("GET", "/status")["services"]
            for rs in svc["real_servers"]
        }

    def admin(self, key: str, server: str, action: str) -> None:
        self.api("POST", f"/virtual_services/{self.labels[key]}/real_servers/{server}/{action}")

    def wait_all_up(self, timeout: float = 20.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if set(self.health().values()) == {"up"}:
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"not every server is up: {self.health()}; log: {self.run.log()}")

    # --- the client's side ------------------------------------------------------------------
    def ask(self, **cmd: Any) -> Any:
        assert self.driver is not None and self.driver.stdin and self.driver.stdout
        self.driver.stdin.write(json.dumps(cmd) + "\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError("the client driver exited")
        return json.loads(line)

    def url(self, key: str, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{self.vips[key]}{path}"

    def echo(self, port: int) -> subprocess.CompletedProcess[str]:
        argv = ["env", "TCP_NODELAY=1", "/usr/bin/echoscu", "-aec", "PACS"]
        argv += ["-to", "5", self.vips["dicom"], str(port)]
        return subprocess.run(
            ["ip", "netns", "exec", self.client.ns, *argv],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def store(self, port: int, files: list[Path]) -> None:
        self.client.run(
            "env", "TCP_NODELAY=1", STORESCU, "-aet", "MODALITY", "-aec", "PACS",
            self.vips["dicom"], str(port), *map(str, files),
        )  # fmt: skip

    def received(self, server: str, port: int) -> list[Path]:
        return sorted((self.tmp / f"rx-{server}-{port}").iterdir())

    # --- the real servers -------------------------------------------------------------------
    def start_dicom(self, server: str) -> None:
        host = self.host_of("dicom", server)
        procs = []
        for port in (4000, 5000):
            rx = self.tmp / f"rx-{server}-{port}"
            rx.mkdir(exist_ok=True)
            # -dhl: no reverse lookup of each caller (no DNS in these namespaces; with the LB as
            # gateway a lookup waits out its timeout while the single storescp blocks).
            argv = [STORESCP, "-aet", "PACS", "-dhl", "+B", "-od", str(rx), str(port)]
            procs.append(
                host.popen(
                    argv,
                    env={**os.environ, **DCMTK_ENV},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.procs[server] = procs

    def stop_dicom(self, server: str) -> None:
        for proc in self.procs.pop(server):
            proc.terminate()
            proc.wait(5)

    def start_web(self, key: str, server: str) -> None:
        cert, keyfile = self.tmp / "rs-cert.pem", self.tmp / "rs-key.pem"
        host = self.host_of(key, server)
        proc = host.popen([*PEER, "http", server, str(cert), str(keyfile)])
        self.procs[server] = [proc]

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Until every real server listens on its ports (all started at once, then this)."""
        deadline = time.monotonic() + timeout
        for key in KEYS:
            ports = {"4000", "5000"} if key == "dicom" else {"80", "443"}
            for rs in RS_OF[key]:
                while True:
                    lines = self.topo.hosts[rs].run("ss", "-ltnH").splitlines()
                    if ports <= {line.split()[3].rsplit(":", 1)[1] for line in lines}:
                        break
                    assert time.monotonic() < deadline, f"{rs} does not listen on {ports}"
                    time.sleep(0.05)

    def sick(self, server: str, sick: bool) -> None:
        self.procs[server][0].send_signal(signal.SIGUSR1 if sick else signal.SIGUSR2)


def addresses_for(variant: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    vip_net, rs_net = ("198.18.0.", "198.18.0.") if variant == "dr" else ("198.18.1.", "198.18.2.")
    vips = {key: f"{vip_net}{VIP_OCTET[key]}" for key in KEYS}
    rips = {key: [f"{rs_net}{10 + int(rs[2:])}" for rs in RS_OF[key]] for key in KEYS}
    return vips, rips


def profile_config(variant: str, state_dir: Path, path: Path) -> dict[str, Any]:
    """`pacslb profile mckesson` with this test's addresses, checked by `pacslb check`."""
    vips, rips = addresses_for(variant)
    base = [*PACSLB, "profile", "mckesson", "--variant", variant, "--state-dir", str(state_dir)]
    base += ["--webui-listen", f"127.0.0.1:{API_PORT}"]
    argv = [*base, "-o", str(path)]
    for key in KEYS:
        argv += ["--vip", f"{key}={vips[key]}", "--rip", f"{key}={','.join(rips[key])}"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "example addresses" not in done.stderr + path.read_text()  # none of the guide's left
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    # The same as the guide's example config with each example address replaced by ours:
    # --vip/--rip change the addresses and nothing else.
    example = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert "replace them" in example.stderr
    guide: dict[str, Any] = yaml.safe_load(example.stdout)
    for key, svc in zip(KEYS, guide["virtual_services"], strict=True):
        assert svc["vip"].startswith("192.168.85.")  # the guide's: data, never a target
        svc["vip"] = vips[key]
        for rs, address in zip(svc["real_servers"], rips[key], strict=True):
            assert rs["address"].startswith(("192.168.85.", "10.10.0."))
            rs["address"] = address
    assert guide == config
    for svc in config["virtual_services"]:
        svc["health_check"].update(interval=INTERVAL, timeout=TIMEOUT)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    check = subprocess.run([*PACSLB, "check", str(path)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    return config


def apply_realserver_commands(topo: Topology, config_path: Path, rs_net: str) -> str:
    """`pacslb realserver --config` on the LB; each server's block run on that server."""
    done = subprocess.run(
        ["ip", "netns", "exec", topo.hosts["lb"].ns, *PACSLB, "realserver", "--config",
         str(config_path), "--os", "linux", "--interface", "eth0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    heads = list(re.finditer(r"^# === .* \((?P<address>[\d.]+)\)$", done.stdout, re.M))
    for head, after in zip(heads, [*heads[1:], None], strict=True):
        block = done.stdout[head.start() : after.start() if after else None]
        rs = f"rs{int(head['address'].rsplit('.', 1)[1]) - 10}"
        assert head["address"] == f"{rs_net}{10 + int(rs[2:])}"
        apply_printed(topo.hosts[rs], block)
    return done.stdout


@pytest.fixture(scope="module", params=["dr", "nat-l7"])
def estate(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Estate]:
    from pacslb.control.auth import AuthStore
    from pacslb.core import certs
    from pacslb.core.auth import Role

    variant: str = request.param
    tmp = tmp_path_factory.mktemp(f"mckesson-{variant}")
    dr = variant == "dr"
    # DR: one segment; the real servers get nothing until they run what `realserver` prints.
    # NAT: two arms, and again no default gateway until the printed commands set it.
    shape = one_arm(servers=10, dr=False) if dr else two_arm(servers=10, gateway=False)
    with shape as topo:
        started = time.monotonic()
        state = tmp / "state"
        state.mkdir()
        config_path = tmp / "mckesson.yaml"
        config = profile_config(variant, state, config_path)
        printed = apply_realserver_commands(topo, config_path, "198.18.0." if dr else "198.18.2.")
        cert_pem, key_pem = certs.self_signed(
            "McKesson test real server", datetime.datetime.now(datetime.UTC), days=30
        )
        (tmp / "rs-cert.pem").write_bytes(cert_pem)
        (tmp / "rs-key.pem").write_bytes(key_pem)
        _, token = AuthStore(state).create_token("e2e", Role.ADMIN, "test")
        services = config["virtual_services"]
        run = Pacslb(topo.hosts["lb"], state, config)
        estate = Estate(
            variant=variant,
            topo=topo,
            run=run,
            config=config,
            token=token,
            tmp=tmp,
            vips=addresses_for(variant)[0],
            names={
                k: (s["real_servers"][0]["label"], s["real_servers"][1]["label"])
                for k, s in zip(KEYS, services, strict=True)
            },
            labels={k: s["label"] for k, s in zip(KEYS, services, strict=True)},
            printed=printed,
        )
        for key in KEYS:
            for server in estate.names[key]:
                if key == "dicom":
                    estate.start_dicom(server)
                else:
                    estate.start_web(key, server)
        estate.wait_listening()
        run.start()
        try:
            estate.driver = topo.hosts["client"].popen(
                [*PEER, "client"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            up = estate.wait_all_up()
            print(
                f"\n{variant}: estate deployed in {time.monotonic() - started:.1f} s "
                f"(every server up {up:.1f} s after `pacslb run` was ready)"
            )
            yield estate
        finally:
            run.stop()


NAT_L7_MODES = {"dicom": "l4-nat", "web": "l4-nat", "manager": "l7-http", "crv": "l7-http",
                "cardiology": "l4-nat"}  # fmt: skip


def test_the_profile_deploys_with_every_server_healthy(estate: Estate) -> None:
    modes = {k: s["mode"] for k, s in zip(KEYS, estate.config["virtual_services"], strict=True)}
    assert modes == (dict.fromkeys(KEYS, "l4-dr") if estate.variant == "dr" else NAT_L7_MODES)
    health = estate.health()  # through the REST API, with an API token
    assert len(health) == 10 and set(health.values()) == {"up"}, health
    # `pacslb doctor` on the LB agrees: every DR server solved the ARP problem and holds its
    # VIP, every NAT server routes through the LB.
    doctor = subprocess.run(
        ["ip", "netns", "exec", estate.topo.hosts["lb"].ns, *PACSLB, "doctor",
         str(estate.tmp / "mckesson.yaml")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    blocks = estate.printed.count("# === ")
    if estate.variant == "dr":
        assert blocks == 10
        for key in KEYS:
            for rs in RS_OF[key]:
                host = estate.topo.hosts[rs]
                assert f"{estate.vips[key]}/32" in host.run("ip", "-o", "addr", "show", "dev", "lo")
                assert host.run("sysctl", "-n", "net.ipv4.conf.all.arp_ignore") == "1\n"
                assert host.run("sysctl", "-n", "net.ipv4.conf.all.arp_announce") == "2\n"
    else:
        # NAT servers were told to route through the LB; the proxied ones needed nothing.
        assert blocks == 6 and "ip route replace default via 198.18.2.1 dev eth0" in estate.printed
        assert (
            "# layer 7 (McK-RadiologyManager, McK-ClinicalReferenceViewer): real servers need "
            "no change" in estate.printed
        )
        for key in KEYS:
            for rs in RS_OF[key]:
                route = estate.topo.hosts[rs].run("ip", "route", "show", "default")
                assert ("via 198.18.2.1" in route) == (NAT_L7_MODES[key] == "l4-nat"), (rs, route)


def dicom_files(directory: Path, count: int) -> dict[str, bytes]:
    """`count` small CT images in `directory`; their SOP instance UID -> dataset bytes."""
    from bench.dicom_files import new_uid

    from tests.integration.test_tcp_proxy import dataset_part, dicom_ct

    directory.mkdir()
    sent = {}
    study, series = new_uid(), new_uid()
    for i in range(count):
        uid = new_uid()
        data = dicom_ct(uid, "PACSLB-MCK", study, series, i + 1, os.urandom(64 * 64 * 2), 64)
        (directory / f"img{i:02}.dcm").write_bytes(data)
        sent[uid] = dataset_part(data)
    return sent


def arrived(estate: Estate, uids: set[str]) -> dict[tuple[str, int], dict[str, bytes]]:
    """Of these UIDs, what each DICOM real server's storescp wrote, per port."""
    from tests.integration.test_tcp_proxy import dataset_part

    out: dict[tuple[str, int], dict[str, bytes]] = {}
    for server in estate.names["dicom"]:
        for port in (4000, 5000):
            for p in estate.received(server, port):
                uid = p.name.split(".", 1)[1]  # storescp names it <modality>.<SOP instance UID>
                if uid in uids:
                    out.setdefault((server, port), {})[uid] = dataset_part(p.read_bytes())
    return out


def test_dicom_echo_and_store_through_the_vip_on_4000_and_5000(estate: Estate) -> None:
    for port in (4000, 5000):
        done = estate.echo(port)
        assert done.returncode == 0, done.stdout + done.stderr
    sent = {port: dicom_files(estate.tmp / f"src-{port}", 5) for port in (4000, 5000)}
    for port in (4000, 5000):
        estate.store(port, sorted((estate.tmp / f"src-{port}").iterdir()))
    got = arrived(estate, set(sent[4000]) | set(sent[5000]))
    # Source-IP persistence (3600 s): this client's associations all reach one archive, on
    # both ports, and every dataset arrives byte for byte.
    assert {server for server, _port in got} in ({n} for n in estate.names["dicom"]), got.keys()
    for port in (4000, 5000):
        assert [data for (_, p), data in got.items() if p == port] == [sent[port]]
    if estate.variant == "dr":  # the ARP problem solved: only the LB answers for the VIP
        neigh = json.loads(estate.client.run("ip", "-j", "neigh", "show", estate.vips["dicom"]))
        assert [n["lladdr"] for n in neigh] == [estate.topo.hosts["lb"].mac()]


def test_the_web_vips_answer_the_guides_check_urls(estate: Estate) -> None:
    client = estate.client.address
    for key, (path, text) in CHECK_URL.items():
        answer = estate.ask(op="get", url=estate.url(key, path))
        assert answer.get("status") == 200 and answer["body"] == text, (key, answer)
        assert answer["server"] in estate.names[key]
        # DR and NAT keep the client's own address (hence NAT's gateway); the proxy connects
        # from the LB's address on the servers' segment.
        proxied = estate.variant == "nat-l7" and NAT_L7_MODES[key] == "l7-http"
        assert answer["peer"] == ("198.18.2.1" if proxied else client), (key, answer)
    for scheme in ("http", "https"):  # Cardiology on 80 and 443 (TLS end to end)
        answer = estate.ask(op="get", url=estate.url("cardiology", "/", scheme))
        assert answer.get("status") == 200 and answer["server"] in estate.names["cardiology"]
        assert f"<h1>{answer['server']}</h1>" in answer["body"]
    # Radiology Web has no persistence: new connections reach both servers.
    served = {estate.ask(op="get", url=estate.url("web", "/whoami"))["server"] for _ in range(10)}
    assert served == set(estate.names["web"])


def test_persistence_on_manager_and_the_viewer(estate: Estate) -> None:
    for key in ("manager", "crv"):
        first = {}
        for i in range(6):  # six browsers on the client's host, each with its own cookies
            session = f"persist-{key}-{i}"
            first[session] = estate.ask(op="get", url=estate.url(key, "/whoami"), session=session)
            for _ in range(3):  # each on a new connection: the cookie (or address) holds it
                again = estate.ask(op="get", url=estate.url(key, "/whoami"), session=session)
                assert again["server"] == first[session]["server"], (key, session, again)
        servers = {a["server"] for a in first.values()}
        if estate.variant == "dr":  # source-IP persistence: one client address, one server
            assert len(servers) == 1, first
        else:  # cookie persistence: browsers behind one address still spread, each kept
            assert servers == set(estate.names[key]), first


def test_one_server_per_service_fails_and_traffic_moves(estate: Estate) -> None:
    bound = 3 * INTERVAL + 1  # fall x interval + 1 s (the profile's fall is 3)
    every = 0.2
    # The server each watcher is on now is the one that fails: DICOM's from where an image
    # lands, the others' from who answers the watcher's own session.
    sent = dicom_files(estate.tmp / "src-fail", 1)
    estate.store(4000, sorted((estate.tmp / "src-fail").iterdir()))
    failing = {"dicom": next(iter(arrived(estate, set(sent))))[0]}
    targets: list[dict[str, Any]] = [
        {"name": "dicom:4000", "echo": [estate.vips["dicom"], 4000]},
        {"name": "dicom:5000", "echo": [estate.vips["dicom"], 5000]},
        {"name": "cardiology:443", "url": estate.url("cardiology", "/whoami", "https"),
         "session": "watch-cardiology"},
    ]  # fmt: skip
    for key in ("web", "manager", "crv", "cardiology"):
        url = estate.url(key, "/whoami")
        failing[key] = estate.ask(op="get", url=url, session=f"watch-{key}")["server"]
        targets.append({"name": key, "url": url, "session": f"watch-{key}"})
    seconds = 1 + bound + SLACK + 1.5
    assert estate.driver is not None and estate.driver.stdin is not None
    estate.driver.stdin.write(
        json.dumps({"op": "watch", "targets": targets, "seconds": seconds, "every": every}) + "\n"
    )
    estate.driver.stdin.flush()
    time.sleep(1.0)  # a second of traffic before the failure
    t0 = time.monotonic()
    estate.stop_dicom(failing["dicom"])  # the archive stops listening: the connect check fails
    for key in ("web", "manager", "crv", "cardiology"):
        estate.sick(failing[key], True)  # the application answers its check URL with 503
    assert estate.driver.stdout is not None
    samples = json.loads(estate.driver.stdout.readline())

    moved: dict[str, float] = {}
    problems = []
    for name, results in samples.items():
        key = name.split(":")[0]
        failed = failing[key]

        def bad(result: str, failed: str = failed, echo: bool = key == "dicom") -> bool:
            return result != "ok" if echo else (result == failed or result.startswith("error"))

        after = [(t, r) for t, r in results if t >= t0]
        last_bad = max((t for t, r in after if bad(r)), default=None)
        later = [(t, r) for t, r in after if last_bad is None or t > last_bad]
        # moved by: the first sample after the last one that still reached the failed server
        moved[name] = (later[0][0] - t0) if later else float("inf")
        if len(later) < 3 or moved[name] > bound + SLACK:
            problems.append(f"{name}: still on {failed} at the end, or moved too late")
        if key not in ("dicom", "web") and any(r != failed for t, r in results if t < t0):
            problems.append(f"{name}: a persistent client was not on {failed} before")
        if key != "dicom" and {r for _, r in later} - (set(estate.names[key]) - {failed}):
            problems.append(f"{name}: after the move, answers from elsewhere: {later}")
    print(f"\n{estate.variant}: traffic moved after (s, bound {bound:.0f} + {SLACK} slack): "
          + ", ".join(f"{n} {m:.2f}" for n, m in sorted(moved.items())))  # fmt: skip
    health = estate.health()
    problems += [f"{failing[k]} is {health[(estate.labels[k], failing[k])]}, not down"
                 for k in KEYS if health[(estate.labels[k], failing[k])] != "down"]  # fmt: skip
    if problems:  # everything that helps tell a slow checker from a slow engine
        timeline = {n: [(round(t - t0, 2), r) for t, r in rs] for n, rs in samples.items()}
        events = estate.run.cli("events", "--kind", "health", "--limit", "30")
        pytest.fail("\n".join([*problems, f"samples: {timeline}", f"events:\n{events}"]))

    estate.start_dicom(failing["dicom"])
    estate.wait_listening()
    for key in ("web", "manager", "crv", "cardiology"):
        estate.sick(failing[key], False)
    back = estate.wait_all_up()
    print(f"{estate.variant}: every server back up {back:.1f} s after recovering (rise 2)")


def test_drain_and_halt_as_the_guide_describes(estate: Estate) -> None:
    web = estate.url("web", "/whoami")
    held = estate.ask(op="get", url=web, held="held-web")
    a = held["server"]
    (b,) = set(estate.names["web"]) - {a}
    # Drain: the connection in progress carries on; new ones go to the other server.
    estate.admin("web", a, "drain")
    assert estate.ask(op="get", url=web, held="held-web").get("server") == a
    assert {estate.ask(op="get", url=web)["server"] for _ in range(6)} == {b}
    assert estate.ask(op="get", url=web, held="held-web").get("server") == a
    # Halt: no traffic at all; the connection in progress is cut.
    estate.admin("web", a, "halt")
    assert "error" in estate.ask(op="get", url=web, held="held-web")
    assert {estate.ask(op="get", url=web)["server"] for _ in range(4)} == {b}
    estate.admin("web", a, "online")

    # A persistent service (Manager): drain lets a known client finish on its server; new
    # clients go elsewhere (behind cookies; behind source-IP every browser here is known).
    mgr = estate.url("manager", "/whoami")
    first = estate.ask(op="get", url=mgr, session="drain-known")
    assert "server" in first, first
    a = first["server"]
    (b,) = set(estate.names["manager"]) - {a}
    estate.admin("manager", a, "drain")
    assert estate.ask(op="get", url=mgr, session="drain-known")["server"] == a
    if estate.variant == "nat-l7":
        new = {estate.ask(op="get", url=mgr, session=f"drain-new-{i}")["server"] for i in range(4)}
        assert new == {b}
    estate.admin("manager", a, "halt")  # halted: even the known client moves
    assert estate.ask(op="get", url=mgr, session="drain-known")["server"] == b
    estate.admin("manager", a, "online")
    assert set(estate.health().values()) == {"up"}
