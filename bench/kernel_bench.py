"""pacslb's kernel L4 modes (and the built-in proxy) vs a direct connection, in network namespaces
(DESIGN §7: L4 throughput >= 0.95x direct, a rule/map update in < 1 ms).

    cd /work/main && .venv/bin/python bench/kernel_bench.py [--rounds 3] [--seconds 5]
                                                            [--modes l4-dr,l4-nat,...] [--skip-wrk]
                                                            [--updates 200]

Needs root, nftables, conntrack, iperf3, wrk and nginx. The hosts are the netns test harness's
(tests/netns/topology.py), all on 198.18.0.0/15 and deleted at the end, even on errors:

- `one_arm()` (client .10, LB .2, real servers .11/.12 on 198.18.0.0/24): `direct-1arm` (client
  to rs1 on the same segment) and `l4-dr` (VIP 198.18.0.100, on the real servers' `lo`);
- `two_arm(gateway=True)` (client on 198.18.1.0/24, real servers on 198.18.2.0/24, the LB their
  gateway): `direct-routed` (client to rs1 routed through the LB by plain forwarding, no pacslb
  table: the same two hops as NAT, so it is the reference of the modes on this topology),
  `l4-nat`, and the proxy modes `l7-tcp` / `l7-http` (`pacslb run` in the LB namespace, one
  proxy worker, VIP 198.18.1.100 on the LB's client-side interface);
- `two_arm(gateway=False)`: `l4-snat` (the servers have no route back, so there is no direct
  path on it; its reference is `direct-routed`).

Each target's services have one real server (rs1): the direct path and the VIP then reach the
same iperf3 and the same nginx, so only the path differs. Workloads: iperf3, one stream, the
client sending (the LB's direction for DR too; replies bypass it), `--seconds` long, Gbit/s at the
receiver; wrk -c16 -t1 on a 100 KiB file from nginx (one worker), req/s and p99. Each round
runs every target once (order rotated per round); the table gives medians of the rounds.
Between targets pacslb is stopped, its tables (`netdev`/`ip pacslb`) deleted, conntrack flushed
and the VIP removed from the LB.

Update latency: on a live table applied by `pacslb run` (two real servers, l4-nat and l4-dr), a
snippet in the LB namespace renders the element-only update (`Ruleset.elements`, what the engine
sends for a weight or admin-state change) for rs2 drained and online, and times `--updates`
alternating applies through libnftables (`pacslb.engines.nftables.Nft`) and then through
`nft -f -` subprocesses.

Timing only: nothing here passes or fails (DESIGN §6). The machine is shared: compare the ratios
of one run, not absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.netns (the topology harness)

from tests.netns.conftest import Pacslb  # noqa: E402
from tests.netns.topology import Host, Topology, one_arm, two_arm  # noqa: E402

PY = sys.executable
IPERF_PORT, WEB_PORT = 5201, 80
FILE_100K = "100k.bin"
VIP_1ARM, VIP_2ARM = "198.18.0.100", "198.18.1.100"
RS1_1ARM, RS1_2ARM, RS2_2ARM, RS2_1ARM = "198.18.0.11", "198.18.2.11", "198.18.2.12", "198.18.0.12"
KERNEL_MODES = ("l4-dr", "l4-nat", "l4-snat")
PROXY_MODES = ("l7-tcp", "l7-http")
ALL_MODES = (*KERNEL_MODES, *PROXY_MODES)


@dataclass(frozen=True)
class Target:
    name: str
    topo: str  # "dr" (one_arm), "nat" (two_arm with gateway), "snat" (two_arm without)
    address: str  # what the client connects to
    mode: str | None  # pacslb mode, None for a direct path
    reference: str  # the direct target it is compared with
    iperf: bool = True


TARGETS = [
    Target("direct-1arm", "dr", RS1_1ARM, None, "direct-1arm"),
    Target("direct-routed", "nat", RS1_2ARM, None, "direct-routed"),
    Target("l4-dr", "dr", VIP_1ARM, "l4-dr", "direct-1arm"),
    Target("l4-nat", "nat", VIP_2ARM, "l4-nat", "direct-routed"),
    Target("l4-snat", "snat", VIP_2ARM, "l4-snat", "direct-routed"),
    Target("l7-tcp", "nat", VIP_2ARM, "l7-tcp", "direct-routed"),
    Target("l7-http", "nat", VIP_2ARM, "l7-http", "direct-routed", iperf=False),
]
GOALS = {
    ("iperf", "l4-dr"): 0.95,
    ("iperf", "l4-nat"): 0.95,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- pacslb configurations ---------------------------------------------------------------------


def service(label: str, vip: str, port: int, mode: str, servers: list[tuple[str, str]]) -> dict:
    return {
        "label": label,
        "vip": vip,
        "ports": [port],
        "mode": mode,
        "scheduler": "wrr",
        "health_check": {"type": "none"},  # no probes disturbing iperf3's single test
        "real_servers": [{"label": lb, "address": a, "port": port} for lb, a in servers],
    }


def target_config(t: Target) -> dict[str, Any]:
    rs1 = RS1_1ARM if t.topo == "dr" else RS1_2ARM
    mode = t.mode or ""
    services = [service("Web", t.address, WEB_PORT, mode, [("rs1", rs1)])]
    if t.iperf:
        services.append(service("Iperf", t.address, IPERF_PORT, mode, [("rs1", rs1)]))
    config: dict[str, Any] = {"version": 1, "virtual_services": services}
    if mode in PROXY_MODES:
        config["node"] = {"proxy": {"workers": 1}}
    return config


def update_config(mode: str) -> dict[str, Any]:
    if mode == "l4-dr":
        servers = [("rs1", RS1_1ARM), ("rs2", RS2_1ARM)]
        return {"version": 1, "virtual_services": [service("Web", VIP_1ARM, 80, mode, servers)]}
    servers = [("rs1", RS1_2ARM), ("rs2", RS2_2ARM)]
    return {"version": 1, "virtual_services": [service("Web", VIP_2ARM, 80, mode, servers)]}


# --- the hosts ---------------------------------------------------------------------------------


def nginx_conf(work: Path) -> str:
    return f"""worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server {{
    listen {WEB_PORT} reuseport;
    location / {{ root {work}/www; }}
  }}
}}
"""


def start_backends(topo: Topology, work: Path) -> None:
    """On every rs*: iperf3 -s and nginx (one worker, its own config in `work`)."""
    for name, host in topo.hosts.items():
        if not name.startswith("rs"):
            continue
        d = work / f"{topo.tag}-{name}"
        (d / "www").mkdir(parents=True)
        (d / "www" / FILE_100K).write_bytes(bytes(range(256)) * 400)  # 102,400 bytes
        (d / "nginx.conf").write_text(nginx_conf(d))
        for p in (work, d, d / "www", d / "www" / FILE_100K):
            p.chmod(0o755 if p.is_dir() else 0o644)  # nginx's workers are not root
        out = open(d / "nginx.out", "ab")  # noqa: SIM115 - closed once the process has it
        host.popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], stdout=out, stderr=out)
        out.close()
        out = open(d / "iperf3.out", "ab")  # noqa: SIM115
        host.popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=out, stderr=out)
        out.close()
        wait_port(host, "127.0.0.1", WEB_PORT)
        wait_port(host, "127.0.0.1", IPERF_PORT, probe=False)


def wait_port(host: Host, address: str, port: int, timeout: float = 10, probe: bool = True) -> None:
    """Wait until something listens: a connection (probe) or a LISTEN socket in `ss`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe:
            code = (
                "import socket,sys\n"
                "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()\n"
                "except OSError: sys.exit(1)\n"
            )
            if (
                subprocess.run(
                    ["ip", "netns", "exec", host.ns, PY, "-c", code, address, str(port)],
                    capture_output=True,
                    timeout=10,
                    check=False,
                ).returncode
                == 0
            ):
                return
        elif f":{port} " in host.run("ss", "-Htln", check=False):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing on {address}:{port} in {host.ns} after {timeout} s")


@dataclass
class Env:
    topos: dict[str, Topology]
    work: Path
    runs: list[Pacslb] = field(default_factory=list)

    def lb(self, t: Target) -> Host:
        return self.topos[t.topo].hosts["lb"]

    def client(self, t: Target) -> Host:
        return self.topos[t.topo].hosts["client"]

    def start(self, t: Target, config: dict[str, Any]) -> Pacslb:
        lb = self.lb(t)
        if t.mode in PROXY_MODES:  # the proxy binds the VIP; the kernel engine places its own
            lb.run("ip", "addr", "add", f"{t.address}/32", "dev", "eth0", check=False)
        state = Path(tempfile.mkdtemp(prefix="state-", dir=self.work))
        run = Pacslb(lb, state, config)
        self.runs.append(run)
        run.start()
        return run

    def clean(self, t: Target, run: Pacslb | None) -> None:
        lb = self.lb(t)
        if run is not None:
            run.stop()
            self.runs.remove(run)
            shutil.rmtree(run.state_dir, ignore_errors=True)
        for family in ("netdev", "ip"):
            lb.run("nft", "delete", "table", family, "pacslb", check=False)
        lb.run("conntrack", "-F", check=False)
        for vip in (VIP_1ARM, VIP_2ARM):
            lb.run("ip", "addr", "del", f"{vip}/32", "dev", "eth0", check=False)


@contextlib.contextmanager
def environment(needed: set[str]) -> Iterator[Env]:
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="kernel-bench-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        topos: dict[str, Topology] = {}
        if "dr" in needed:
            topos["dr"] = stack.enter_context(one_arm(servers=2, vip=VIP_1ARM))
        if "nat" in needed:
            topos["nat"] = t = stack.enter_context(two_arm(servers=2, gateway=True))
            # direct-routed: the client reaches the servers' subnet through the LB, forwarding
            t.hosts["client"].run("ip", "route", "add", "198.18.2.0/24", "via", "198.18.1.2")
            t.hosts["lb"].sysctl("net.ipv4.ip_forward", "1")
        if "snat" in needed:
            topos["snat"] = stack.enter_context(two_arm(servers=2, gateway=False))
        for topo in topos.values():
            start_backends(topo, work)
        env = Env(topos, work)
        try:
            yield env
        finally:
            for run in list(env.runs):
                with contextlib.suppress(Exception):
                    run.stop()


# --- workloads ---------------------------------------------------------------------------------


@dataclass
class Sample:
    value: float | None
    p99_ms: float | None = None
    error: str = ""


def in_namespace(client: Host, argv: list[str], seconds: float) -> subprocess.CompletedProcess[str]:
    """A load generator in the client's namespace, bounded a little past its own duration."""
    return subprocess.run(
        ["ip", "netns", "exec", client.ns, *argv],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )


def run_iperf(client: Host, address: str, seconds: float) -> Sample:
    argv = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-P", "1", "-J"]
    done = in_namespace(client, argv, seconds)
    try:
        data = json.loads(done.stdout)
    except ValueError:
        return Sample(None, error=f"iperf3: {done.stderr.strip()[:200] or 'no output'}")
    if "error" in data:
        return Sample(None, error=f"iperf3: {data['error']}")
    return Sample(data["end"]["sum_received"]["bits_per_second"] / 1e9)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(client: Host, address: str, seconds: float) -> Sample:
    url = f"http://{address}:{WEB_PORT}/{FILE_100K}"
    argv = ["wrk", "-c16", "-t1", f"-d{seconds:g}s", "--latency", url]
    done = in_namespace(client, argv, seconds)
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if done.returncode != 0 or rate is None:
        return Sample(None, error=f"wrk: {(done.stderr or out).strip()[:200]}")
    bad = re.search(r"(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]*)", out)
    return Sample(
        float(rate.group(1)),
        float(p99.group(1)) * UNITS[p99.group(2)] if p99 else None,
        error=f"wrk: {bad.group(1)}" if bad else "",
    )


# --- update latency ----------------------------------------------------------------------------

UPDATE_SNIPPET = r"""
import json, statistics, subprocess, sys, time
from pathlib import Path
from pacslb.cli import load_config_file
from pacslb.core import nft
from pacslb.core.plan import build_plan
from pacslb.core.slots import service_slots
from pacslb.core.state import AdminState, Health
from pacslb.engines.kernel import KernelEngine
from pacslb.engines.nftables import Nft

config = load_config_file(Path(sys.argv[1]))
n = int(sys.argv[2])
health = {(vs.label, rs.label): Health.UP for vs in config.virtual_services
          for rs in vs.real_servers}
facts_from = KernelEngine(Path(sys.argv[3]))  # only for the host facts DR needs (MACs)
scripts = []
for admin in ({("Web", "rs2"): AdminState.DRAIN}, {}):  # drained, then online again
    plan = build_plan(config, health, admin)
    facts = facts_from._gather_facts(plan)
    slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(plan)}
    scripts.append(nft.render(plan, facts, slots).elements)
assert scripts[0] != scripts[1], "drain did not change the elements"
runner = Nft()
out = {"via": runner.via, "bytes": len(scripts[0]), "lib": [], "proc": []}
for i in range(n):
    s = scripts[i % 2]
    t0 = time.perf_counter()
    runner.run(s)
    out["lib"].append((time.perf_counter() - t0) * 1e3)
for i in range(n):
    s = scripts[i % 2]
    t0 = time.perf_counter()
    subprocess.run(["nft", "-f", "-"], input=s, text=True, check=True, timeout=30)
    out["proc"].append((time.perf_counter() - t0) * 1e3)
print(json.dumps(out))
"""


def update_latency(env: Env, mode: str, n: int) -> dict[str, Any]:
    t = next(x for x in TARGETS if x.mode == mode)
    run = None
    try:
        run = env.start(t, update_config(mode))
        done = subprocess.run(
            [
                *("ip", "netns", "exec", env.lb(t).ns, PY, "-c", UPDATE_SNIPPET),
                *(str(run.config_path), str(n), str(run.state_dir)),
            ],
            capture_output=True,
            text=True,
            timeout=60 + n * 0.5,
            check=False,
            cwd=ROOT,
        )
        if done.returncode != 0:
            return {"error": done.stderr.strip()[-600:]}
        result = dict(json.loads(done.stdout))
        result["ruleset_after"] = env.lb(t).run("nft", "list", "table", t_family(mode), "pacslb")
        return result
    except Exception as exc:  # report it in the table, go on with the rest
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        env.clean(t, run)


def t_family(mode: str) -> str:
    return "netdev" if mode == "l4-dr" else "ip"


# --- the run -----------------------------------------------------------------------------------


def measure_target(env: Env, t: Target, args: argparse.Namespace) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    run = None
    try:
        if t.mode is not None:
            run = env.start(t, target_config(t))
        client = env.client(t)
        wait_port(client, t.address, WEB_PORT, timeout=15)
        if t.iperf:
            out["iperf"] = run_iperf(client, t.address, args.seconds)
            time.sleep(args.settle)
        if not args.skip_wrk:
            out["wrk"] = run_wrk(client, t.address, args.seconds)
            time.sleep(args.settle)
    except Exception as exc:
        err = f"{type(exc).__name__}: {exc}"[:300]
        for w in ("iperf", "wrk"):
            if w not in out and (w != "iperf" or t.iperf) and (w != "wrk" or not args.skip_wrk):
                out[w] = Sample(None, error=err)
    finally:
        env.clean(t, run)
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "—"


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def report(
    targets: list[Target],
    results: dict[tuple[str, str], list[Sample]],
    updates: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> str:
    def med(key: tuple[str, str], p: bool = False) -> float | None:
        vals = [(s.p99_ms if p else s.value) for s in results.get(key, [])]
        good = [v for v in vals if v is not None]
        return statistics.median(good) if good else None

    lines = [
        f"kernel_bench: {args.rounds} round(s), {args.seconds:g} s per run, medians of the "
        "rounds; × direct = ratio of the medians to the target's direct path (DR: the one-arm "
        "segment; NAT/SNAT/L7: routed through the LB with no pacslb table)",
        "",
        "| target | metric | median | p99 | × direct (ref) | rounds | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    errors: list[str] = []
    for work, metric in (("iperf", "TCP 1 stream, Gbit/s"), ("wrk", "100 KiB wrk -c16, req/s")):
        for t in targets:
            samples = results.get((work, t.name))
            if not samples:
                continue
            value = med((work, t.name))
            ref = med((work, t.reference)) if t.reference != t.name else None
            each = ", ".join(fmt(s.value) for s in samples)
            goal = ""
            if (work, t.name) in GOALS:
                want = GOALS[(work, t.name)]
                got = value / ref if value is not None and ref else None
                verdict = "?" if got is None else ("met" if got >= want else "NOT met")
                goal = f"≥ {want:.2f}× direct: {verdict}"
            p = fmt(med((work, t.name), p=True)) + " ms" if work == "wrk" else ""
            vs = f"{ratio(value, ref)} ({t.reference})" if ref is not None else "—"
            lines.append(f"| {t.name} | {metric} | {fmt(value)} | {p} | {vs} | {each} | {goal} |")
            errors += [f"{t.name} {work}: {s.error}" for s in samples if s.error]
    for mode, u in updates.items():
        if "error" in u:
            lines.append(f"| {mode} table | update | failed | | | | < 1 ms |")
            errors.append(f"{mode} update latency: {u['error']}")
            continue
        for key, how in (("lib", f"update via {u['via']}"), ("proc", "update via `nft -f -`")):
            v = u[key]
            m, q = statistics.median(v), p99(v)
            yes = {True: "met", False: "NOT met"}
            goal = f"< 1 ms: median {yes[m < 1]}, p99 {yes[q < 1]}" if key == "lib" else ""
            lines.append(
                f"| {mode} table | {how}, ms ({len(v)}×, {u['bytes']} B script) "
                f"| {m:.3f} | {q:.3f} ms | | | {goal} |"
            )
    if errors:
        lines += ["", "Errors:"] + [f"- {e}" for e in sorted(set(errors))]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="iperf3 -t and wrk -d")
    p.add_argument("--modes", default=",".join(ALL_MODES), help="subset of " + ",".join(ALL_MODES))
    p.add_argument("--skip-wrk", action="store_true")
    p.add_argument("--updates", type=int, default=200, help="element updates timed per method")
    p.add_argument("--settle", type=float, default=0.5, help="pause between runs (s)")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(ALL_MODES)
    if unknown:
        p.error(f"unknown modes: {', '.join(sorted(unknown))} (known: {', '.join(ALL_MODES)})")
    if not 1 <= args.rounds <= 20 or not 0.5 <= args.seconds <= 120:
        p.error("--rounds 1-20, --seconds 0.5-120")
    if not 1 <= args.updates <= 5000:
        p.error("--updates 1-5000")
    args.mode_list = modes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("ip", "nft", "conntrack", "iperf3", "wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"kernel_bench: {tool} is not installed", file=sys.stderr)
            return 2
    wanted = set(args.mode_list)
    targets = [t for t in TARGETS if t.mode is None or t.mode in wanted]
    used = {t.reference for t in targets if t.mode is not None}
    targets = [t for t in targets if t.mode is not None or t.name in used]
    needed = {t.topo for t in targets}
    results: dict[tuple[str, str], list[Sample]] = {}
    updates: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with environment(needed) as env:
        for r in range(args.rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for t in order:
                log(f"round {r + 1}/{args.rounds}: {t.name}")
                for work, sample in measure_target(env, t, args).items():
                    results.setdefault((work, t.name), []).append(sample)
                    shown = fmt(sample.value) if sample.value is not None else sample.error
                    log(f"  {work}: {shown}")
        for mode in ("l4-nat", "l4-dr"):
            if mode in wanted:
                log(f"update latency on a live {mode} table: {args.updates}× per method")
                updates[mode] = update_latency(env, mode, args.updates)
                updates[mode].pop("ruleset_after", None)
    print(report(targets, results, updates, args))
    print(f"({time.monotonic() - started:.0f} s; {sys.executable} {' '.join(sys.argv)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
