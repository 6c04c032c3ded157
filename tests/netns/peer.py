"""Both ends of the layer 4 tests, run inside a namespace with `ip netns exec`.

peer.py serve NAME PORT...      greet each connection with NAME, then echo lines;
                                `bulk N` sends N bytes back (for throughput and counters)
peer.py wait HOST PORT          return once HOST:PORT accepts (10 s at most)
peer.py client VIP PORT         a driver: JSON commands on stdin, one JSON answer a line:
    {"op": "open", "n": 3}        -> names of 3 new held connections
    {"op": "once", "n": 10}       -> names of 10 connections opened and closed
    {"op": "ping"}                -> "ok" | "reset" | "closed" | "timeout" per held one
    {"op": "ping", "within": 3}   -> the same, every held one pinged at once, answers awaited
                                     for at most `within` seconds in all (100 dead flows must
                                     not cost 100 timeouts)
    {"op": "bulk", "bytes": N}    -> bytes received on a new connection
    {"op": "close"}               -> closes the held connections
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

TIMEOUT = 5.0


def serve(name: str, ports: list[int]) -> None:
    def handle(conn: socket.socket, peer: str) -> None:
        with conn:
            try:
                conn.sendall(f"{name}\n".encode())
                f = conn.makefile("rb")
                for line in f:
                    if line == b"peer\n":
                        conn.sendall(f"{peer}\n".encode())
                    elif line.startswith(b"bulk "):
                        left = int(line.split()[1])
                        chunk = b"x" * 65536
                        while left > 0:
                            conn.sendall(chunk[: min(left, len(chunk))])
                            left -= len(chunk)
                    else:
                        conn.sendall(line)
            except OSError:
                pass

    def listen(port: int) -> None:
        # Both families: IPv4 and IPv6 VIPs reach the same server.
        srv = socket.create_server(
            ("::", port), family=socket.AF_INET6, backlog=512, reuse_port=True, dualstack_ipv6=True
        )
        while True:
            conn, addr = srv.accept()
            peer = addr[0].removeprefix("::ffff:")  # an IPv4 client, as the dual stack shows it
            threading.Thread(target=handle, args=(conn, peer), daemon=True).start()

    for port in ports[1:]:
        threading.Thread(target=listen, args=(port,), daemon=True).start()
    listen(ports[0])


def wait(host: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {host}:{port}")


def greet(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        part = sock.recv(256)
        if not part:
            raise ConnectionError("closed before greeting")
        data += part
    return data.decode().strip()


def client(vip: str, port: int) -> None:
    held: list[socket.socket] = []

    family = socket.AF_INET6 if ":" in vip else socket.AF_INET

    def connect() -> tuple[socket.socket | None, str]:
        s = socket.socket(family)
        s.settimeout(TIMEOUT)
        try:
            s.connect((vip, port))
            return s, greet(s)
        except OSError as exc:
            s.close()
            return None, f"error: {exc.__class__.__name__}"

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        answer: object
        if op == "open":
            names = []
            for _ in range(cmd["n"]):
                s, name = connect()
                if s is not None:
                    held.append(s)
                names.append(name)
            answer = names
        elif op == "once":
            names = []
            for _ in range(cmd["n"]):
                s, name = connect()
                if s is not None:
                    s.close()
                names.append(name)
            answer = names
        elif op == "ping" and "within" in cmd:
            answer = ping_all(held, float(cmd["within"]))
        elif op == "ping":
            answer = [ping(s) for s in held]
        elif op == "bulk":
            s, _name = connect()
            got = 0
            if s is not None:
                s.sendall(f"bulk {cmd['bytes']}\n".encode())
                while got < cmd["bytes"]:
                    part = s.recv(1 << 20)
                    if not part:
                        break
                    got += len(part)
                s.close()
            answer = got
        elif op == "peer":  # the client address the server sees
            s, _name = connect()
            answer = None
            if s is not None:
                s.sendall(b"peer\n")
                answer = greet(s)
                s.close()
        elif op == "close":
            for s in held:
                s.close()
            held.clear()
            answer = "closed"
        else:
            answer = f"unknown op {op}"
        print(json.dumps(answer), flush=True)


def ping_all(held: list[socket.socket], within: float) -> list[str]:
    import selectors

    answers = ["timeout"] * len(held)
    got = [b""] * len(held)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(held):
        try:
            s.sendall(b"ping\n")
        except OSError as exc:
            answers[i] = "reset" if isinstance(exc, ConnectionResetError) else f"error: {exc}"
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + within
    while sel.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            i = key.data
            s = held[i]
            try:
                part = s.recv(64)
            except ConnectionResetError:
                answers[i] = "reset"
                sel.unregister(s)
                continue
            except OSError as exc:
                answers[i] = f"error: {exc}"
                sel.unregister(s)
                continue
            got[i] += part
            if not part or got[i].endswith(b"\n"):
                answers[i] = "ok" if got[i] == b"ping\n" else ("closed" if not part else "odd")
                sel.unregister(s)
    for s in held:
        s.setblocking(True)
        s.settimeout(TIMEOUT)
    return answers


def ping(s: socket.socket) -> str:
    try:
        s.sendall(b"ping\n")
        data = s.recv(64)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"
    return "ok" if data == b"ping\n" else ("closed" if not data else f"odd: {data!r}")


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif what == "wait":
        wait(sys.argv[2], int(sys.argv[3]))
    elif what == "client":
        client(sys.argv[2], int(sys.argv[3]))
