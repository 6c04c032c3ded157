"""Health-check probes: one asyncio coroutine per check type, each with one overall deadline.

A probe never raises for a network outcome: it returns a ProbeResult whose reason says what
happened in words an engineer can act on (`http: expected 'srvPACS OK' in body, got status 500`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import ssl
import time
from dataclasses import dataclass

import httptools

from pacslb import config as c
from pacslb.control.dicom_echo import dicom_echo

MAX_BODY = (
    64 * 1024
)  # read at most this much of a check response: the expected text is near the top
USER_AGENT = "pacslb-health-check"


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where a check goes: the real server and port, and the VIP it serves (for external checks)."""

    vip: str
    vip_port: int
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str
    latency: float  # seconds the probe took


def check_port(check: c.HealthCheck, vs: c.VirtualService, rs: c.RealServer) -> int:
    """The check's port, else the real server's, else the VIP's (validation ensures one exists)."""
    port = getattr(check, "port", None)
    return port or rs.port or vs.ports[0]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _refused(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or type(exc).__name__


async def probe_connect(target: ProbeTarget, timeout: float) -> ProbeResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(target.address, target.port)
    except TimeoutError:
        return ProbeResult(False, f"connect: timed out after {timeout:g} s", timeout)
    except OSError as exc:
        return ProbeResult(False, f"connect: {_refused(exc)}", time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, f"connect: ok in {_ms(elapsed)}", elapsed)


class _Response:
    """httptools callbacks collecting status, headers and a bounded body."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.headers_done = False
        self.complete = False
        self.truncated = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        room = MAX_BODY - len(self.body)
        if len(data) > room:
            self.truncated = True
        self.body += data[:room]

    def on_message_complete(self) -> None:
        self.complete = True


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """Built once: loading the system CA bundle costs ~40 ms of CPU, per probe if not cached."""
    if verify:
        return ssl.create_default_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store needed when nothing is verified
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _expectation(check: c.HttpCheck) -> str:
    if check.expect is not None:
        return f"expected {check.expect!r} in body"
    if check.expect_regex is not None:
        return f"expected body to match {check.expect_regex!r}"
    wanted = ",".join(map(str, check.expect_status)) if check.expect_status else "2xx/3xx"
    return f"expected status {wanted}"


def _status_ok(check: c.HttpCheck, status: int) -> bool:
    if check.expect_status:
        return status in check.expect_status
    return 200 <= status < 400


async def probe_http(check: c.HttpCheck, target: ProbeTarget) -> ProbeResult:
    start = time.perf_counter()
    scheme = "https" if check.tls else "http"
    host = check.host or _host(target.address)
    request = (
        f"{check.method} {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    writer = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(
                target.address,
                target.port,
                ssl=_tls_context(check.tls_verify) if check.tls else None,
                server_hostname=(check.host or target.address) if check.tls else None,
            )
            writer.write(request)
            while not response.complete and not response.truncated:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
                # A HEAD response has no body whatever its headers say (RFC 9110 §9.3.2).
                if check.method == "HEAD" and response.headers_done:
                    break
    except TimeoutError:
        return ProbeResult(False, f"http: timed out after {check.timeout:g} s", check.timeout)
    except ssl.SSLError as exc:
        return ProbeResult(False, f"http: TLS failed: {exc.reason or exc}", _since(start))
    except OSError as exc:
        return ProbeResult(False, f"http: {_refused(exc)}", _since(start))
    except httptools.HttpParserError as exc:
        return ProbeResult(False, f"http: malformed response: {exc}", _since(start))
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    elapsed = _since(start)
    status = parser.get_status_code() if response.headers_done else 0
    if not status:
        return ProbeResult(False, f"http: no response from {scheme}://{host}", elapsed)
    body = bytes(response.body).decode("utf-8", errors="replace")
    found = f"got status {status}"
    if not _status_ok(check, status):
        return ProbeResult(False, f"http: {_expectation(check)}, {found}", elapsed)
    if check.expect is not None and check.expect not in body:
        snippet = re.sub(r"\s+", " ", body)[:60]
        return ProbeResult(
            False, f"http: {_expectation(check)}, {found} and body {snippet!r}", elapsed
        )
    if check.expect_regex is not None and not re.search(check.expect_regex, body):
        return ProbeResult(False, f"http: {_expectation(check)}, {found}", elapsed)
    return ProbeResult(True, f"http: status {status} in {_ms(elapsed)}", elapsed)


def _since(start: float) -> float:
    return time.perf_counter() - start


def _tail(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text[-limit:]


async def probe_external(check: c.ExternalCheck, target: ProbeTarget) -> ProbeResult:
    """Run the program with VIP, VIP port, real server and port as arguments and environment
    variables (as ldirectord and the Loadbalancer.org appliance do). It runs in its own process
    group so that a timeout kills everything it started, not just the first process."""
    start = time.perf_counter()
    env = dict(os.environ)
    env.update(
        VIP=target.vip,
        VPT=str(target.vip_port),
        RIP=target.address,
        RPT=str(target.port),
        CHECK_TIMEOUT=f"{check.timeout:g}",
    )
    args = [target.vip, str(target.vip_port), target.address, str(target.port)]
    try:
        proc = await asyncio.create_subprocess_exec(
            check.command,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        reason = f"external: cannot run {check.command}: {exc.strerror}"
        return ProbeResult(False, reason, _since(start))
    try:
        async with asyncio.timeout(check.timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return ProbeResult(False, f"external: killed after {check.timeout:g} s", check.timeout)
    finally:
        # The program may have exited and left children behind in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = _since(start)
    tail = _tail(output)
    if proc.returncode == 0:
        return ProbeResult(True, f"external: exit 0 in {_ms(elapsed)}", elapsed)
    code = proc.returncode or 0
    how = f"signal {-code}" if code < 0 else f"exit {code}"
    return ProbeResult(False, f"external: {how}" + (f": {tail}" if tail else ""), elapsed)


async def probe_dicom(check: c.DicomEchoCheck, target: ProbeTarget) -> ProbeResult:
    outcome = await dicom_echo(
        target.address, target.port, check.called_ae, check.calling_ae, check.timeout
    )
    return ProbeResult(outcome.ok, outcome.reason, outcome.latency)


async def probe_all(
    check: c.AllChecks, vs: c.VirtualService, rs: c.RealServer, target: ProbeTarget
) -> ProbeResult:
    """Every listed check must pass; they run together so the slowest sets the time."""
    start = time.perf_counter()
    targets = [
        ProbeTarget(
            target.vip, target.vip_port, target.address, sub.port or check.port or target.port
        )
        for sub in check.checks
    ]
    results = await asyncio.gather(
        *(run_check(sub, vs, rs, t) for sub, t in zip(check.checks, targets, strict=True))
    )
    failed = [r.reason for r in results if not r.ok]
    if failed:
        return ProbeResult(False, "; ".join(failed), _since(start))
    return ProbeResult(True, f"all {len(results)} checks passed", _since(start))


async def run_check(
    check: c.HealthCheck, vs: c.VirtualService, rs: c.RealServer, target: ProbeTarget
) -> ProbeResult:
    """Dispatch on the check type. Every probe bounds itself by its check's timeout."""
    if isinstance(check, c.NoCheck):
        return ProbeResult(True, "none: always up", 0.0)
    if isinstance(check, c.ConnectCheck):
        return await probe_connect(target, check.timeout)
    if isinstance(check, c.HttpCheck):
        return await probe_http(check, target)
    if isinstance(check, c.DicomEchoCheck):
        return await probe_dicom(check, target)
    if isinstance(check, c.ExternalCheck):
        return await probe_external(check, target)
    return await probe_all(check, vs, rs, target)


def target_for(vs: c.VirtualService, rs: c.RealServer, check: c.HealthCheck) -> ProbeTarget:
    return ProbeTarget(str(vs.vip), vs.ports[0], str(rs.address), check_port(check, vs, rs))
