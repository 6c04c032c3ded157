"""The Debian package: built by `packaging/deb/build-deb.sh` (what `make deb` runs), checked by
lintian and `systemd-analyze verify`, installed, upgraded, removed and purged.

Where it is installed: into a scratch root, never onto this machine. `dpkg --root=ROOT
--force-script-chrootless` unpacks there and runs the maintainer scripts with $DPKG_ROOT=ROOT
(they honour it: every path under it, the host's systemd left alone). To run what was installed
at the paths it was built for (/opt/pacslb, /usr/bin/pacslb), a private mount namespace puts the
scratch root's /opt/pacslb over a tmpfs on /opt and its /usr/bin over the host's (an overlay),
seen by that one process tree only; the host's files are not touched. That needs root, as CI
has; elsewhere those tests skip and say so.

systemd is not PID 1 here, so the service is not started by systemd: the installed pacslb runs
as pacslb.service would run it, against a datagram socket playing NOTIFY_SOCKET, and must say
READY=1 (tests/integration/test_systemd_protocols.py checks the whole protocol).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacslb import __version__
from pacslb.engines.proxy import stop_workers
from tests.peers.procs import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "deb" / "build-deb.sh"
PYTHON = Path("/usr/bin/python3.11")  # the interpreter the package runs on (Debian's)
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: dpkg --root and a private mount namespace"
)
DEPENDS = ["python3.11", "libnftables1", "nftables", "iproute2", "conntrack", "keepalived"]
HOST = "127.10.5.2"  # this helper's loopback block


def _missing() -> str | None:
    if shutil.which("dpkg-deb") is None:
        return "dpkg-deb is not installed"
    if not PYTHON.exists():
        return f"{PYTHON} (Debian's python3.11) is not installed"
    if not Path("/usr/include/python3.11/Python.h").exists():
        return "python3.11-dev is not installed (the C module needs Python.h)"
    return None


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    env = {**os.environ, "PIP": f"{sys.executable} -m pip"}
    done = subprocess.run(
        ["bash", str(BUILD), str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nbuild-deb.sh: {time.monotonic() - started:.1f} s ({done.stdout.strip()})")
    return out / f"pacslb_{__version__}_amd64.deb"


def dpkg_deb(*args: str) -> str:
    return subprocess.run(
        ["dpkg-deb", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_package_fields_and_files(deb: Path) -> None:
    assert deb.name == f"pacslb_{__version__}_amd64.deb"
    fields = {
        key: dpkg_deb("-f", str(deb), key).strip()
        for key in ("Package", "Version", "Architecture", "Depends")
    }
    assert fields["Package"] == "pacslb" and fields["Version"] == __version__
    assert fields["Architecture"] == "amd64"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    for name in DEPENDS:
        assert name in depends, depends
    listing = dpkg_deb("-c", str(deb))
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for path in (
        "/opt/pacslb/bin/pacslb",
        "/opt/pacslb/pyvenv.cfg",
        "/lib/systemd/system/pacslb.service",
        "/etc/logrotate.d/pacslb",
        "/usr/share/doc/pacslb/copyright",
        "/opt/pacslb/lib/python3.11/site-packages/pacslb/cli.py",
    ):
        assert path in paths, path
    assert "/usr/bin/pacslb -> /opt/pacslb/bin/pacslb" in listing
    assert any("_headfast.cpython-311" in p for p in paths), "the C module is not in it"
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    assert "/etc/pacslb/pacslb.yaml" not in paths  # made by the postinst, this host's own
    owners = {line.split()[1] for line in listing.splitlines()}
    assert owners == {"root/root"}
    control = dpkg_deb("-I", str(deb))
    for script in ("postinst", "prerm", "postrm"):
        assert script in control


def test_lintian_is_clean_with_the_overrides_explained(deb: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (apt-get install lintian)")
    out = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tags = [line for line in out.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")]
    assert tags == [], "\n".join(tags)
    assert out.returncode == 0, out.stderr


# --- install, run, upgrade, remove, purge in a scratch root ---------------------------------


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def in_namespace(root: Path, command: str) -> list[str]:
    """`command` run by sh in a private mount namespace that has the scratch root's
    /opt/pacslb and /usr/bin/pacslb at their own paths (the host's are untouched)."""
    mounts = (
        f"mount -t tmpfs none /opt && mkdir /opt/pacslb && "
        f"mount --bind {shlex.quote(str(root / 'opt/pacslb'))} /opt/pacslb && "
        f"mount -t overlay overlay -o lowerdir={shlex.quote(str(root / 'usr/bin'))}:/usr/bin "
        "/usr/bin && "
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts + command]


def files_under(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.is_dir() and not p.is_relative_to(root / "var/lib/dpkg")
    }


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    try:
        yield sock
    finally:
        sock.close()


@ROOT_ONLY
def test_install_run_upgrade_remove_purge_in_a_scratch_root(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (root / d).mkdir(parents=True)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (root / f).touch()
    host_had = {p: Path(p).exists() for p in ("/etc/pacslb", "/var/lib/pacslb", "/opt/pacslb")}

    started = time.monotonic()
    done = dpkg(root, "-i", str(deb))
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\ndpkg -i (with the postinst's byte-compile): {time.monotonic() - started:.1f} s")
    config = root / "etc/pacslb/pacslb.yaml"
    assert "virtual_services: []" in config.read_text()
    assert 'state_dir: "/var/lib/pacslb"' in config.read_text()
    assert (root / "var/lib/pacslb").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/systemd/system/multi-user.target.wants/pacslb.service").is_symlink()
    assert list((root / "opt/pacslb/lib").rglob("__pycache__"))  # compiled by the postinst

    # Run what was installed, at its own paths.
    out = subprocess.run(
        in_namespace(root, "pacslb --version && readlink -f /usr/bin/pacslb"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"pacslb {__version__}", "/opt/pacslb/bin/pacslb"]
    unit = root / "lib/systemd/system/pacslb.service"
    if shutil.which("systemd-analyze"):
        out = subprocess.run(
            in_namespace(root, f"systemd-analyze verify --man=no {shlex.quote(str(unit))}"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr
    text = unit.read_text()
    assert "Type=notify" in text and "ExecReload=/usr/bin/pacslb reload" in text
    assert "KillMode=process" in text  # what the no-drop upgrade relies on

    # The installed pacslb under the unit's command line (its own config, WebUI on a test
    # address): READY=1 on NOTIFY_SOCKET once started, STOPPING=1 on SIGTERM.
    web = free_port(HOST)
    run_config = tmp_path / "run.yaml"
    run_config.write_text(
        f'version: 1\nnode:\n  webui: {{listen: "{HOST}:{web}"}}\nvirtual_services: []\n'
    )
    state = root / "var/lib/pacslb"
    command = f"exec /usr/bin/pacslb run {run_config} --state-dir {state}"
    with notify_socket(tmp_path / "notify") as notify:
        proc = subprocess.Popen(
            in_namespace(root, command),
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            got = b""
            deadline = time.monotonic() + 60
            while b"READY=1" not in got and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    got += notify.recv(4096)
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert b"READY=1" in got and b"STATUS=ready" in got, got
            proc.terminate()  # the pid is pacslb's: sh exec'd it
            deadline = time.monotonic() + 30
            while b"STOPPING=1" not in got and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    got += notify.recv(4096)
            assert b"STOPPING=1" in got
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert (state / "revisions" / "index.json").exists()

    # An upgrade (the same version again: dpkg runs the upgrade paths) keeps both.
    config.write_text(config.read_text() + "# edited by the operator\n")
    kept = files_under(root / "var/lib/pacslb")
    done = dpkg(root, "-i", str(deb))
    assert done.returncode == 0, done.stdout + done.stderr
    assert config.read_text().endswith("# edited by the operator\n")
    assert files_under(root / "var/lib/pacslb") == kept

    # Remove: the program goes, the configuration and the state stay.
    done = dpkg(root, "-r", "pacslb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (root / "opt/pacslb").exists() and not (root / "usr/bin/pacslb").exists()
    assert config.exists() and (root / "etc/logrotate.d/pacslb").exists()
    assert files_under(root / "var/lib/pacslb") == kept

    # Purge: nothing of pacslb's is left (empty folders of systemd's helper may stay).
    done = dpkg(root, "--purge", "pacslb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert files_under(root) == set(), files_under(root)
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Package: pacslb" not in status
    # And the host was never touched.
    assert {p: Path(p).exists() for p in host_had} == host_had


def test_logrotate_rotates_a_log_a_process_still_writes(tmp_path: Path) -> None:
    """The shipped /etc/logrotate.d/pacslb, pointed at a scratch folder: with copytruncate a
    worker that keeps its log open (O_APPEND) writes on at the start of the emptied file."""
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not Path(logrotate).exists():
        pytest.skip("logrotate is not installed (apt-get install logrotate)")
    shipped = (REPO / "packaging/deb/logrotate").read_text()
    conf = tmp_path / "pacslb.logrotate"
    conf.write_text(shipped.replace("/var/lib/pacslb/", f"{tmp_path}/").replace("su root root", ""))
    log = tmp_path / "proxy-0.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, b"before the rotation\n" * 100)
        out = subprocess.run(
            [logrotate, "-f", "-s", str(tmp_path / "status"), str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        os.write(fd, b"after the rotation\n")
    finally:
        os.close(fd)
    assert (tmp_path / "proxy-0.log.1").read_bytes() == b"before the rotation\n" * 100
    assert log.read_bytes() == b"after the rotation\n"  # no hole, nothing lost


@contextlib.contextmanager
def echo_server(host: str) -> Iterator[int]:
    """A TCP echo server on a thread (the real server behind the l7-tcp VIP)."""
    import threading

    listener = socket.create_server((host, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            with contextlib.suppress(OSError):
                while data := conn.recv(4096):
                    conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def repo_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The checkout's pacslb CLI: the same control-socket protocol as the installed one."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "pacslb.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def wait_ready(state: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        done = repo_cli("status", "--json", "--state-dir", str(state))
        if done.returncode == 0 and (status := json.loads(done.stdout)).get("ready"):
            return dict(status)
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout} s")


def echo(conn: socket.socket, data: bytes) -> bytes:
    conn.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = conn.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


@ROOT_ONLY
def test_an_upgrade_drops_no_connection(deb: Path, tmp_path: Path) -> None:
    """The postinst's hand-over (which it runs where systemd is PID 1), step by step with the
    installed files: `pacslb stop --keep-data-plane`, the package unpacked again over the
    running workers, a new `pacslb run` that adopts them. A connection opened before carries on
    through all of it."""
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        (root / d).mkdir(parents=True)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (root / f).touch()
    done = dpkg(root, "-i", str(deb))
    assert done.returncode == 0, done.stdout + done.stderr
    state = root / "var/lib/pacslb"
    vip = "127.10.5.41"
    with echo_server(HOST) as backend:
        port = free_port(vip)
        config = tmp_path / "pacslb.yaml"
        config.write_text(
            f"""version: 1
node:
  webui: {{enabled: false}}
  proxy: {{workers: 1, spare: false}}
virtual_services:
  - label: Dicom
    vip: {vip}
    ports: [{port}]
    mode: l7-tcp
    health_check: {{type: connect, interval: 1, timeout: 1}}
    real_servers:
      - {{label: Srv1, address: {HOST}, port: {backend}}}
"""
        )
        run = f"exec /usr/bin/pacslb run {config} --state-dir {state}"
        try:
            old = subprocess.Popen(in_namespace(root, run), stdout=subprocess.PIPE)
            try:
                status = wait_ready(state, old)
                worker = status["proxy"]["workers"][0]["pid"]
                conn = socket.create_connection((vip, port), timeout=30)
                assert echo(conn, b"before the upgrade\n") == b"before the upgrade\n"
                stop = in_namespace(root, f"pacslb stop --keep-data-plane --state-dir {state}")
                out = subprocess.run(stop, capture_output=True, text=True, timeout=60)
                assert out.returncode == 0 and "goes on forwarding" in out.stdout, out.stderr
                assert old.wait(30) == 0
            finally:
                if old.poll() is None:
                    old.kill()
                    old.wait(10)
            assert echo(conn, b"control process gone\n") == b"control process gone\n"
            done = dpkg(root, "-i", str(deb))  # the upgrade: prerm, unpack, postinst
            assert done.returncode == 0, done.stdout + done.stderr
            assert echo(conn, b"files replaced\n") == b"files replaced\n"
            new = subprocess.Popen(in_namespace(root, run), stdout=subprocess.PIPE)
            try:
                status = wait_ready(state, new)
                assert status["proxy"]["workers"][0]["pid"] == worker  # adopted, not replaced
                assert echo(conn, b"after the upgrade\n") == b"after the upgrade\n"
                with socket.create_connection((vip, port), timeout=30) as fresh:
                    assert echo(fresh, b"a new client\n") == b"a new client\n"
                conn.close()
                new.terminate()
                assert new.wait(30) == 0
            finally:
                if new.poll() is None:
                    new.kill()
                    new.wait(10)
        finally:
            stop_workers(state)  # workers a failure left (only these: not `teardown`, which
            # would also delete the host's nftables table of that name)
