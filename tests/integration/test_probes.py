"""Health-check probes against real peers on loopback: HTTP servers, scripts, closed ports."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers.procs import free_port, http_peer

from pacslb import config as c
from pacslb.control.probes import ProbeResult, ProbeTarget, probe_connect, run_check

HOST = "127.0.0.1"
ROUTES = (
    "/wpp/srvpacs.asp=200:<html>srvPACS OK</html>",
    "/cis/index.html=200:OK",
    "/wrong=200:srvPACS DOWN for maintenance",
    "/error=500:srvPACS OK",
    "/slow=slow:5",
    "/close=close",
    "/chunked=chunked:..srvPACS OK..",
    "/moved=302:",
)


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    port = free_port()
    with http_peer(HOST, port, *ROUTES):
        yield port


def target(port: int) -> ProbeTarget:
    return ProbeTarget("127.0.0.30", 80, HOST, port)


def vs_rs() -> tuple[c.VirtualService, c.RealServer]:
    rs = c.RealServer(label="Srv1", address=HOST)  # type: ignore[arg-type]
    vs = c.VirtualService(
        label="Web", vip="127.0.0.30", ports=[80], mode="l7-http", real_servers=[rs]
    )  # type: ignore[arg-type]
    return vs, rs


def check(check: c.HealthCheck, port: int) -> ProbeResult:
    vs, rs = vs_rs()
    return asyncio.run(run_check(check, vs, rs, target(port)))


def http(**kw: object) -> c.HttpCheck:
    return c.HttpCheck.model_validate({"type": "http", "timeout": 1.0, **kw})


def test_connect_ok_and_refused(web: int) -> None:
    ok = asyncio.run(probe_connect(target(web), 1.0))
    assert ok.ok and ok.reason.startswith("connect: ok in")
    closed = asyncio.run(probe_connect(target(free_port()), 1.0))
    assert not closed.ok and closed.reason == "connect: connection refused"


def test_mckesson_check_passes(web: int) -> None:
    result = check(http(path="/wpp/srvpacs.asp", expect="srvPACS OK"), web)
    assert result.ok, result.reason
    assert result.reason.startswith("http: status 200 in")


def test_wrong_text_fails_with_what_was_seen(web: int) -> None:
    result = check(http(path="/wrong", expect="srvPACS OK"), web)
    assert not result.ok
    assert result.reason.startswith("http: expected 'srvPACS OK' in body, got status 200 and body")
    assert "maintenance" in result.reason


def test_status_500_fails_even_with_the_text(web: int) -> None:
    result = check(http(path="/error", expect="srvPACS OK"), web)
    assert result.reason == "http: expected 'srvPACS OK' in body, got status 500"


def test_slow_server_times_out_within_the_deadline(web: int) -> None:
    start = time.monotonic()
    result = check(http(path="/slow", timeout=0.5, interval=1), web)
    assert time.monotonic() - start < 1.5
    assert not result.ok and result.reason == "http: timed out after 0.5 s"


def test_closed_without_response(web: int) -> None:
    result = check(http(path="/close"), web)
    assert not result.ok and "no response" in result.reason


def test_refused(web: int) -> None:
    result = check(http(path="/"), free_port())
    assert result.reason == "http: connection refused"


def test_text_split_across_chunks_is_found(web: int) -> None:
    assert check(http(path="/chunked", expect="srvPACS OK"), web).ok


def test_regex_status_and_head(web: int) -> None:
    assert check(http(path="/cis/index.html", expect_regex=r"^OK$"), web).ok
    assert not check(http(path="/cis/index.html", expect_regex=r"^KO"), web).ok
    assert check(http(path="/moved"), web).ok  # 3xx counts as up by default
    assert not check(http(path="/moved", expect_status=[200]), web).ok
    assert check(http(path="/cis/index.html", method="HEAD"), web).ok
    missing = check(http(path="/nowhere"), web)
    assert missing.reason == "http: expected status 2xx/3xx, got status 404"


def test_all_checks_must_pass(web: int) -> None:
    both = c.AllChecks.model_validate(
        {
            "type": "all",
            "timeout": 1,
            "checks": [
                {"type": "connect"},
                {"type": "http", "path": "/wpp/srvpacs.asp", "expect": "srvPACS OK"},
            ],
        }
    )
    assert check(both, web).ok
    one_bad = both.model_copy(
        update={"checks": [*both.checks, http(path="/error", expect="srvPACS OK")]}
    )
    result = check(one_bad, web)
    assert not result.ok and "got status 500" in result.reason


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "check.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def external(command: str, timeout: float = 2.0) -> c.ExternalCheck:
    return c.ExternalCheck(type="external", command=command, timeout=timeout, interval=5)


def test_external_gets_vip_and_server_as_arguments_and_environment(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    cmd = script(tmp_path, f'echo "$1 $2 $3 $4 $VIP $VPT $RIP $RPT" > {out}\nexit 0\n')
    result = check(external(cmd), 4242)
    assert result.ok, result.reason
    assert out.read_text().split() == ["127.0.0.30", "80", HOST, "4242"] * 2


def test_external_failure_keeps_the_output_tail(tmp_path: Path) -> None:
    cmd = script(tmp_path, 'echo "PACS database unreachable" >&2\nexit 3\n')
    result = check(external(cmd), 1)
    assert result.reason == "external: exit 3: PACS database unreachable"


def test_hanging_external_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    cmd = script(tmp_path, f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    start = time.monotonic()
    result = check(external(cmd, timeout=0.5), 1)
    assert time.monotonic() - start < 2
    assert result.reason == "external: killed after 0.5 s"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.02)
    assert not _alive(child), "the check's child process was left behind"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too; it only waits for its parent (init here) to reap it
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_external_that_cannot_run(tmp_path: Path) -> None:
    result = check(external(str(tmp_path / "missing.sh")), 1)
    assert not result.ok and "cannot run" in result.reason


def test_none_is_always_up() -> None:
    assert check(c.NoCheck(), 1).ok


def test_a_port_that_accepts_and_never_answers(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(8)  # the kernel completes handshakes; nobody ever reads or writes
        port = listener.getsockname()[1]
        result = check(http(path="/", timeout=0.3, interval=1), port)
    assert result.reason == "http: timed out after 0.3 s"
