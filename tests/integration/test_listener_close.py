"""A closing listener still serves the clients already in its accept queue (a listener replaced
under SO_REUSEPORT must reset nobody), for l7-http as for l7-tcp."""

from __future__ import annotations

import asyncio
import socket

import uvloop
from tests.peers.procs import free_port, http_peer

from pacslb.core.plan import build_plan
from pacslb.core.validate import load_data
from pacslb.proxy.http import HttpListener
from pacslb.proxy.runtime import ServiceRuntime
from pacslb.proxy.server import listen_socket

VIP = "127.0.0.79"


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_queued_clients_of_a_closing_http_listener_are_served() -> None:
    backend = free_port()
    config = load_data(
        {
            "virtual_services": [
                {
                    "label": "Web",
                    "vip": VIP,
                    "ports": [80],
                    "mode": "l7-http",
                    "real_servers": [{"label": "A", "address": "127.0.0.1", "port": backend}],
                }
            ]
        }
    )
    runtime = ServiceRuntime(build_plan(config).services[0])

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        sock = listen_socket(VIP, 0)
        port = sock.getsockname()[1]
        listener = HttpListener(sock, runtime, port)
        await listener.start()
        # The loop does not run between these lines: the kernel completes the handshakes and
        # the three clients wait in the accept queue when the listener is closed.
        clients = [socket.create_connection((VIP, port), timeout=5) for _ in range(3)]
        for client in clients:
            client.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
        listener.close()
        try:
            return list(
                await asyncio.gather(*(loop.run_in_executor(None, read_all, c) for c in clients))
            )
        finally:
            for client in clients:
                client.close()

    with http_peer("127.0.0.1", backend, "/who=200:served"):
        answers = uvloop.run(main())
    assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"served") for a in answers), answers
