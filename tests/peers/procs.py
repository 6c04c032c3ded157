"""Start real peer processes for tests and always stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(
    host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Until something accepts on host:port (bounded); fails early if proc died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.01
) -> None:
    """Poll until `predicate()` holds (bounded); TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate by PID (its process group when it has its own), then kill if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout)


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    host: str | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a peer for the duration of a with-block; wait until it listens when a port is given."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd or ROOT,
    )
    try:
        if host is not None and port is not None:
            wait_port(host, port, proc=proc)
        yield proc
    finally:
        stop(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def http_peer(
    host: str, port: int, *routes: str
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "tests.peers.http_peer", "--host", host, "--port", str(port)]
    for route in routes:
        argv += ["--route", route]
    return running(argv, host, port)


def set_route(host: str, port: int, path: str, spec: str) -> None:
    """Change how a running http_peer answers `path` (e.g. '500:broken')."""
    body = spec.encode()
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            f"PUT /_route{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    if not reply.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"route change refused: {reply[:80]!r}")
