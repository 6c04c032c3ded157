"""A small real HTTP/1.1 server for tests: each route answers as told on the command line.

    python -m tests.peers.http_peer --host 127.0.0.1 --port 8080 \\
        --route '/wpp/srvpacs.asp=200:srvPACS OK' --route '/bad=500:oops' \\
        --route '/slow=slow:30' --route '/close=close' --route '/chunk=chunked:srvPACS OK'

A route's behaviour can be changed while it runs: `PUT /_route/<path>` with the spec as body
(so a test can make a healthy server fail, then heal, without restarting it).
"""

from __future__ import annotations

import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

ROUTES: dict[str, str] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pacslb-test-peer"
    hits: ClassVar[int] = 0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_PUT(self) -> None:
        if not self.path.startswith("/_route/"):
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length", "0"))
        spec = self.rfile.read(length).decode()
        with LOCK:
            ROUTES["/" + self.path.removeprefix("/_route/")] = spec
        self._answer(200, b"ok")

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        with LOCK:
            spec = ROUTES.get(self.path.split("?")[0], "404:not found")
        kind, _, arg = spec.partition(":")
        if kind == "close":
            self.close_connection = True
            return  # closes without a response
        if kind == "slow":
            time.sleep(float(arg))
            self._answer(200, b"late")
            return
        if kind == "chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if not head:
                body = arg.encode()
                for i in range(0, len(body), 3):  # split the text across chunks on purpose
                    part = body[i : i + 3]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            return
        self._answer(int(kind), arg.encode(), head)

    def _answer(self, status: int, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", action="append", default=[])
    args = parser.parse_args()
    for route in args.route:
        path, _, spec = route.partition("=")
        ROUTES[path] = spec
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
