"""The client side of a takeover measurement, run in the client's namespace.

ha_probe.py KIND HOST PORT LIMIT
    KIND: `line` (the server greets with a line: netns/peer.py serve) or `http` (GET / must
    answer 200). Waits for a line on stdin (the test writes it right after the fault), then
    opens a new connection every 50 ms (each given 250 ms) until the test writes a second
    line (the survivor holds the addresses) and one more connection has succeeded after it, or
    LIMIT seconds have passed. Prints {"attempts": [[start, ok], ...]} with CLOCK_MONOTONIC
    times, which are the same in every namespace: the test subtracts the fault's time.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

TRY = 0.25
GAP = 0.05


def attempt(kind: str, host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(TRY)
            sock.connect((host, port))
            if kind == "http":
                name = f"[{host}]" if ":" in host else host
                sock.sendall(
                    f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
                )
            data = b""
            while b"\n" not in data:
                part = sock.recv(256)
                if not part:
                    return None
                data += part
    except OSError:
        return None
    line = data.split(b"\n")[0].decode(errors="replace").strip()
    if kind == "http" and not line.startswith("HTTP/1.1 200"):
        return None
    return line


def main() -> None:
    kind, host, port, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    sys.stdin.readline()
    settled: list[float] = []
    threading.Thread(
        target=lambda: (sys.stdin.readline(), settled.append(time.monotonic())), daemon=True
    ).start()
    deadline = time.monotonic() + limit
    attempts: list[tuple[float, bool]] = []
    while time.monotonic() < deadline:
        start = time.monotonic()
        ok = attempt(kind, host, port) is not None
        attempts.append((start, ok))
        if ok and settled and start > settled[0]:
            break
        time.sleep(GAP)
    print(json.dumps({"attempts": attempts}))


if __name__ == "__main__":
    main()
