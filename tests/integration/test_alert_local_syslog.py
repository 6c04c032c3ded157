"""`transport: local` against the peers that read /dev/log: a Unix datagram socket this test
binds (each datagram parsed strictly in the format glibc's syslog(3) writes), and a real
rsyslogd listening (imuxsock) on a socket path of the test's own, its config in the test's
directory, writing what it parsed to a file: the facility, severity, program name and PID it
read must be ours, and the text the alert's, not an RFC 5424 header taken for the text."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import pytest
from tests.integration.alert_peers import parse_local_syslog
from tests.peers.procs import running, wait_until

from pacslb.config_alerts import SyslogAlerts
from pacslb.control.alert_senders import SyslogSender
from pacslb.core.alerts import Change, compose

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def problem() -> object:
    change = Change("health", "Rack/Srv01", "problem", "up -> down: refused", "2026-12-07T01:00Z")
    return compose([change], "lb1")


def send(path: Path, facility: str = "local3") -> None:
    sender = SyslogSender(SyslogAlerts(transport="local", socket=path, facility=facility))
    asyncio.run(sender.send(problem()))  # type: ignore[arg-type]


def test_local_transport_sends_the_local_socket_format(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as collector:
        collector.bind(str(path))
        collector.settimeout(5)
        send(path)
        line = collector.recv(65536)
    parsed = parse_local_syslog(line)  # one datagram, no octet count, no RFC 5424 header
    assert (parsed["facility"], parsed["severity"]) == (19, 3), parsed
    assert (parsed["tag"], parsed["pid"]) == ("pacslb", os.getpid()), parsed
    assert parsed["msg"].startswith("[pacslb lb1] PROBLEM: 1 problem: Rack/Srv01"), parsed
    assert parsed["msg"].endswith("; problem Rack/Srv01: up -> down: refused"), parsed


@pytest.mark.skipif(not Path(RSYSLOGD).exists(), reason="rsyslogd is not installed (sysdeps)")
def test_a_real_rsyslogd_parses_what_transport_local_sends(tmp_path: Path) -> None:
    path, out, work = tmp_path / "log.sock", tmp_path / "out.log", tmp_path / "work"
    work.mkdir()
    conf = tmp_path / "rsyslog.conf"
    # Only our socket (no /dev/log, no kernel log), imuxsock's parsing as on the system socket;
    # the fields it parsed, '|'-separated, one line a message.
    conf.write_text(f"""
global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{path}" CreatePath="on" UseSpecialParser="on")
template(name="fields" type="string"
         string="%syslogfacility%|%syslogseverity%|%programname%|%procid%|%msg%\\n")
*.* action(type="omfile" file="{out}" template="fields")
""")
    argv = [RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")]
    with running(argv, log=tmp_path / "rsyslogd.log") as proc:
        wait_until(lambda: path.exists() or proc.poll() is not None, 10, "rsyslogd's socket")
        assert proc.poll() is None, (tmp_path / "rsyslogd.log").read_text()
        send(path)
        wait_until(lambda: out.exists() and out.read_text().endswith("\n"), 10, "the line")
    (line,) = out.read_text().splitlines()
    facility, severity, program, pid, msg = line.split("|", 4)
    assert (facility, severity) == ("19", "3"), line
    assert (program, pid) == ("pacslb", str(os.getpid())), line
    assert msg.strip().startswith("[pacslb lb1] PROBLEM: 1 problem: Rack/Srv01"), line
