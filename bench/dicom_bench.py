"""l7-dicom vs l7-tcp vs a direct connection: C-STORE throughput, CPU per image, set-up cost.

    .venv/bin/python bench/dicom_bench.py [--images 200] [--rounds 5] [--series 1]

One run, side by side (DESIGN §7: ratios, never absolute pass/fail): dcmtk's storescp is the
archive; one `pacslb run` holds three services in front of it, `Dicom` (l7-dicom), `Tcp`
(l7-tcp) and `DicomTls` (l7-dicom with DICOM TLS, a throw-away self-signed certificate), one
proxy worker, no health checks (a probe would be an association on storescp).

- C-STORE: `TCP_NODELAY=1 storescu +sd DIR` sends `--images` synthetic CT (bench/dicom_files.py,
  0.52 MB each) in one association; `--rounds` rounds, each round every target once, in an order
  that rotates so that no target always runs first. Per target the median images/s, and the
  proxy worker's CPU per image (user + system ticks from /proc/PID/stat over the transfers).
  Every transfer is checked: storescp must have written every image. The TLS target
  (`storescu +tls KEY CERT -ic`) is beside the goal, to show what terminating TLS costs.
- Association set-up: a Python client opens `--associations` associations one after another
  (A-ASSOCIATE-RQ of a storescu-sized request, the AC, A-RELEASE-RQ/RP, close) through each
  target; the difference of the mean per association, l7-dicom minus l7-tcp, is what reading
  the RQ and picking by AE costs end to end, beside the worker's CPU per association. The pure
  parse and pick (core/dicom_assoc.py) are also timed in this process.

Addresses: 127.10.5.0/24 only (this project's block for it); ports from --port-base.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dicom_files import write_ct_series
from proxy_bench import CLK_TCK, ROOT, Procs, cpu_ticks, ping, wait_listening

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise
ARCHIVE, VIP = "127.10.5.60", "127.10.5.61"
TARGETS = ("l7-dicom", "l7-tcp", "direct")
# C-STORE also through DICOM TLS (storescu +tls): what terminating TLS costs, beside the goal.
STORE_TARGETS = (*TARGETS, "l7-dicom-tls")


def config(state: Path, base: int, pem: tuple[Path, Path]) -> str:
    def service(label: str, port: int, mode: str, **extra: object) -> dict[str, object]:
        return {
            **extra,
            "label": label,
            "vip": VIP,
            "ports": [port],
            "mode": mode,
            "scheduler": "rr",
            "health_check": {"type": "none"},
            "real_servers": [{"label": "Archive", "address": ARCHIVE, "port": base}],
        }

    data = {
        "version": 1,
        "node": {
            "state_dir": str(state),
            "proxy": {"workers": 1},
            "webui": {"listen": f"{VIP}:{base + 9}"},
        },
        "virtual_services": [
            service("Dicom", base + 1, "l7-dicom"),
            service("Tcp", base + 2, "l7-tcp"),
            service(
                "DicomTls",
                base + 3,
                "l7-dicom",
                tls={"certificates": [{"certificate": str(pem[0]), "key": str(pem[1])}]},
            ),
        ],
    }
    return json.dumps(data, indent=2) + "\n"  # JSON is YAML


def storescu_rq(called: str = "ARCHIVE", calling: str = "BENCH_SCU", contexts: int = 128) -> bytes:
    """An A-ASSOCIATE-RQ the size of storescu's (128 presentation contexts, ~9.6 kB)."""
    from pacslb.core import dicom

    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BxH", kind, len(value)) + value

    syntaxes = b"".join(
        item(0x40, uid.encode())
        for uid in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
    )
    body = item(0x10, dicom.APPLICATION_CONTEXT.encode())
    for i in range(contexts):
        sop = dicom.VERIFICATION_SOP_CLASS if i == 0 else f"1.2.840.10008.5.1.4.1.1.{i}"
        body += item(0x20, bytes([2 * i + 1, 0, 0, 0]) + item(0x30, sop.encode()) + syntaxes)
    body += item(0x50, item(0x51, struct.pack(">I", 16384)))
    head = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
    payload = head + bytes(32) + body
    return struct.pack(">BxI", 1, len(payload)) + payload


def read_pdu(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            raise ConnectionError("closed before a PDU")
        head += chunk
    size = int.from_bytes(head[2:6], "big")
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            raise ConnectionError("closed inside a PDU")
        body += chunk
    return head + body


def associations(address: tuple[str, int], count: int, rq: bytes) -> float:
    """Seconds for `count` whole associations (RQ, AC, release) one after another."""
    release = bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    t0 = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(address, timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(rq)
            answer = read_pdu(sock)
            if answer[0] != 2:
                raise RuntimeError(f"association not accepted: PDU type {answer[0]}")
            sock.sendall(release)
            if read_pdu(sock)[0] != 6:
                raise RuntimeError("no A-RELEASE-RP")
    return time.perf_counter() - t0


def self_signed_pem(work: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for the DICOM TLS port (and storescu's own)."""
    import datetime

    from pacslb.core import certs

    cert, key = certs.self_signed("pacslb-bench", datetime.datetime.now(datetime.UTC))
    (work / "cert.pem").write_bytes(cert)
    (work / "key.pem").write_bytes(key)
    return work / "cert.pem", work / "key.pem"


def per_call_us(fn: Callable[[], object], n: int = 2000) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def core_costs(rq: bytes) -> tuple[float, float, float]:
    """Microseconds, in this process, of what l7-dicom adds before it connects: the header
    check, the parse of a storescu-sized RQ, and the route + pick (+ release) of a service
    with AE routes and calling-ae persistence."""
    from pacslb.core import dicom_assoc
    from pacslb.core.plan import build_plan
    from pacslb.core.validate import load_data
    from pacslb.proxy.dicom import route
    from pacslb.proxy.runtime import ServiceRuntime

    header = per_call_us(lambda: dicom_assoc.rq_length(rq[:6], 1 << 20))
    # As the proxy parses (contexts=False: every item's bounds checked, the contexts' sub-items
    # not decoded: the archive judges them).
    parse = per_call_us(lambda: dicom_assoc.parse_associate_rq(rq, 1 << 20, contexts=False))
    servers = [{"label": f"Node{i}", "address": f"10.0.0.{i}"} for i in range(1, 5)]
    service = {
        "label": "Archive",
        "vip": VIP,
        "ports": [104],
        "mode": "l7-dicom",
        "persistence": {"type": "calling-ae", "timeout": 3600},
        "health_check": {"type": "none"},
        "dicom": {"routes": [{"called_ae": "ARCHIVE", "real_servers": ["Node1", "Node2"]}]},
        "real_servers": servers,
    }
    plan = build_plan(load_data({"version": 1, "virtual_services": [service]}))
    runtime = ServiceRuntime(plan.services[0])
    request = dicom_assoc.parse_associate_rq(rq, 1 << 20)
    dicom = plan.services[0].dicom
    assert dicom is not None

    def pick() -> None:
        allowed = route(dicom, request)
        assert not isinstance(allowed, dicom_assoc.Reject)
        rs = runtime.pick(request.calling_ae, (), allowed=allowed)
        assert rs is not None
        runtime.release(request.calling_ae, rs.label)

    return header, parse, per_call_us(pick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--series",
        type=int,
        default=1,
        help="times storescu sends the images in its one association (storescu --repeat): "
        "longer samples, less noise from storescu's start-up and the shared machine",
    )
    parser.add_argument("--associations", type=int, default=300)
    parser.add_argument(
        "--max-pdu",
        type=int,
        default=16384,
        help="storescp's maximum PDU length (storescu sends P-DATA PDUs of this size; l7-dicom "
        "looks at each PDU's header, so its cost per image falls as PDUs grow; dcmtk's default "
        "16384, archives often accept 64 KiB or more)",
    )
    parser.add_argument("--port-base", type=int, default=24100)
    args = parser.parse_args()
    base = args.port_base
    address = {
        "l7-dicom": (VIP, base + 1),
        "l7-tcp": (VIP, base + 2),
        "direct": (ARCHIVE, base),
        "l7-dicom-tls": (VIP, base + 3),
    }
    procs = Procs()
    # In memory where there is /dev/shm (as proxy_bench.py): storescp's writes then cost the
    # same whatever the disk is doing for the other users of the machine.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="pacslb-dicom-bench-", dir=shm) as tmp:
        work = Path(tmp)
        images, rx, state = work / "images", work / "rx", work / "state"
        rx.mkdir()
        state.mkdir()
        write_ct_series(images, args.images)
        pem = self_signed_pem(work)
        try:
            # dcmtk 3.6.7's storescp listens on every interface (no bind option): the port
            # is the one in the block's range; clients reach it at ARCHIVE.
            scp = procs.start(
                "storescp",
                [
                    STORESCP,
                    "-aet",
                    "ARCHIVE",
                    "--max-pdu",
                    str(args.max_pdu),
                    "-od",
                    str(rx),
                    str(base),
                ],
                work / "storescp.log",
                {"TCP_NODELAY": "1"},
            )
            wait_listening(scp, [("0.0.0.0", base)])
            (work / "pacslb.yaml").write_text(config(state, base, pem))
            argv = [sys.executable, "-m", "pacslb.cli", "run", str(work / "pacslb.yaml")]
            argv += ["--state-dir", str(state)]
            env = {"PYTHONPATH": str(ROOT / "src")}
            run = procs.start("pacslb", argv, work / "pacslb.log", env)
            proxied = [address[t] for t in STORE_TARGETS if t != "direct"]
            wait_listening(run, proxied, timeout=40)
            worker = int(ping(state / "proxy-0.sock")["result"]["pid"])
            procs.adopt(worker, "pacslb proxy-0")
            report(args, address, images, rx, worker, pem)
        finally:
            procs.stop_all()
    return 0


def report(
    args: argparse.Namespace,
    address: dict[str, tuple[str, int]],
    images: Path,
    rx: Path,
    worker: int,
    pem: tuple[Path, Path],
) -> None:
    rates: dict[str, list[float]] = {t: [] for t in STORE_TARGETS}
    ticks: dict[str, int] = dict.fromkeys(STORE_TARGETS, 0)
    n = len(STORE_TARGETS)
    for r in range(args.rounds):
        order = STORE_TARGETS[r % n :] + STORE_TARGETS[: r % n]
        for target in order:
            host, port = address[target]
            argv = [STORESCU, "-aet", "BENCH_SCU", "-aec", "ARCHIVE", host, str(port)]
            argv += ["+sd", str(images)]
            if args.series > 1:
                argv += ["--repeat", str(args.series)]  # the same files: storescp overwrites
            if target == "l7-dicom-tls":  # -ic: the bench's certificate is self-signed
                argv += ["+tls", str(pem[1]), str(pem[0]), "-ic"]
            u0, s0 = cpu_ticks([worker])
            t0 = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=DCMTK_ENV)
            wall = time.perf_counter() - t0
            u1, s1 = cpu_ticks([worker])
            stored = 0
            for f in rx.iterdir():
                f.unlink()
                stored += 1
            if out.returncode or stored != args.images:
                raise SystemExit(f"{target}: exit {out.returncode}, {stored} stored: {out.stderr}")
            rates[target].append(args.images * args.series / wall)
            ticks[target] += u1 + s1 - u0 - s0
    median = {t: statistics.median(v) for t, v in rates.items()}
    sent = args.images * args.series * args.rounds
    mb = sum(f.stat().st_size for f in images.iterdir()) / args.images / 1e6
    times = f" x {args.series} in" if args.series > 1 else ","
    print(
        f"C-STORE {args.images} CT ({mb:.2f} MB each){times} one association, {args.rounds} rounds,"
        f" PDUs of {args.max_pdu} bytes"
    )
    print(f"{'target':12} {'img/s (median)':>15} {'min':>8} {'max':>8} {'worker CPU/img':>15}")
    for t in STORE_TARGETS:
        cpu = "" if t == "direct" else f"{ticks[t] / CLK_TCK / sent * 1e3:.3f} ms"
        print(f"{t:12} {median[t]:15.0f} {min(rates[t]):8.0f} {max(rates[t]):8.0f} {cpu:>15}")
    print(
        f"ratios: l7-dicom/l7-tcp {median['l7-dicom'] / median['l7-tcp']:.3f}  "
        f"l7-dicom/direct {median['l7-dicom'] / median['direct']:.3f}  "
        f"l7-tcp/direct {median['l7-tcp'] / median['direct']:.3f}  (goal l7-dicom >= 0.97 l7-tcp)"
    )
    # Paired: the median of the round-by-round ratios; a round's targets ran back to back,
    # so a slow spell of the shared machine weighs on both sides of its ratio.
    paired = statistics.median(
        d / t for d, t in zip(rates["l7-dicom"], rates["l7-tcp"], strict=True)
    )
    print(f"paired (median of per-round ratios): l7-dicom/l7-tcp {paired:.3f}")
    print(f"DICOM TLS: l7-dicom-tls/l7-dicom {median['l7-dicom-tls'] / median['l7-dicom']:.3f}")
    rq = storescu_rq()
    n = args.associations
    print(f"\nassociation set-up: {n} associations each, RQ of {len(rq)} bytes, one at a time")
    mean: dict[str, float] = {}
    for target in TARGETS:
        u0, s0 = cpu_ticks([worker])
        mean[target] = associations(address[target], n, rq) / n * 1e6
        u1, s1 = cpu_ticks([worker])
        used = (u1 + s1 - u0 - s0) / CLK_TCK / n * 1e6
        cpu = "" if target == "direct" else f"  worker CPU {used:.0f} us"
        print(f"  {target:10} {mean[target]:8.0f} us per association{cpu}")
    print(f"  l7-dicom - l7-tcp: {mean['l7-dicom'] - mean['l7-tcp']:+.0f} us per association")
    header, parse, pick = core_costs(rq)
    print(
        f"  in process: rq_length (header) {header:.2f} us, the proxy's parse {parse:.1f} us, "
        f"route + pick + release (calling-ae) {pick:.1f} us"
    )


if __name__ == "__main__":
    sys.exit(main())
