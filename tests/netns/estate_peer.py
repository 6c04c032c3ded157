"""Both ends of the McKesson estate test (test_mckesson_e2e.py), run with `ip netns exec`.

estate_peer.py http NAME CERT KEY   a web real server: HTTP on 80, HTTPS on 443 (CERT/KEY). It
    answers the guide's check URLs as the products do (GET /wpp/srvpacs.asp -> `srvPACS OK`,
    /cis/index.html and /McKessonEmiCRV/Ping.aspx -> `OK`, / -> a page naming it) and names
    itself in `X-Served-By` on every answer, and the client address it sees in
    `X-Client-Address`; /whoami answers NAME. SIGUSR1 makes it sick: the
    check URLs and / answer 503 (the application is broken, the server still up); SIGUSR2
    makes it well again.
estate_peer.py client               a driver: JSON commands on stdin, one JSON answer a line:
    {"op": "get", "url": U, "session": S}     a new connection; S keeps its own cookies
    {"op": "get", "url": U, "held": H}        on held keep-alive connection H (opened on its
                                              first use, never silently reopened)
    {"op": "watch", "targets": [...], "seconds": D, "every": E}
        polls every target every E s for D s, each in its own thread; a target is
        {"name": N, "url": U, "session": S} (-> X-Served-By or "error: ...") or
        {"name": N, "echo": [VIP, PORT]} (-> "ok" or "error" from dcmtk's echoscu);
        answers {N: [[monotonic time, result], ...]}
Answers of "get": {"status": 200, "server": X-Served-By, "peer": X-Client-Address, "body": "..."}
or {"error": "..."}.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHECK_TEXT = {
    "/wpp/srvpacs.asp": "srvPACS OK",
    "/cis/index.html": "OK",
    "/McKessonEmiCRV/Ping.aspx": "OK",
}
TIMEOUT = 2.0
ECHOSCU = "/usr/bin/echoscu"  # dcmtk's, by full path (pynetdicom installs a same-named script)


def serve_http(name: str, cert: str, key: str) -> None:
    sick = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as browsers and the products use

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            status, body = 200, CHECK_TEXT.get(path, f"<h1>{name}</h1><p>{path}</p>\n")
            if path == "/whoami":
                body = name
            elif sick.is_set() and (path in CHECK_TEXT or path == "/"):
                status, body = 503, "DOWN for maintenance\n"
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Served-By", name)
            self.send_header("X-Client-Address", self.client_address[0])  # as the server sees it
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    # The signals are taken synchronously by the main thread (sigwait): blocked here, before
    # any thread starts, so that every thread inherits the block. With handlers and pause()
    # instead, the kernel may hand a signal to a server thread and the main thread never wakes.
    signals = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    plain = ThreadingHTTPServer(("0.0.0.0", 80), Handler)
    secure = ThreadingHTTPServer(("0.0.0.0", 443), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    while (got := signal.sigwait(signals)) != signal.SIGTERM:
        if got == signal.SIGUSR1:
            sick.set()
        else:
            sick.clear()


class Driver:
    def __init__(self) -> None:
        self.jars: dict[str, http.cookiejar.CookieJar] = {}
        self.held: dict[str, http.client.HTTPConnection] = {}
        self.insecure = ssl.create_default_context()
        self.insecure.check_hostname = False
        self.insecure.verify_mode = ssl.CERT_NONE  # the real servers' self-signed certificates

    def get(self, url: str, session: str = "") -> dict[str, Any]:
        """One request on a new connection, with the session's cookies."""
        jar = self.jars.setdefault(session, http.cookiejar.CookieJar())
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(jar),
            urllib.request.HTTPSHandler(context=self.insecure),
        )
        request = urllib.request.Request(url, headers={"Connection": "close"})
        try:
            with opener.open(request, timeout=TIMEOUT) as r:
                body = r.read().decode(errors="replace")
                return {
                    "status": r.status,
                    "server": r.headers["X-Served-By"],
                    "peer": r.headers["X-Client-Address"],
                    "body": body,
                }
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            return {"status": exc.code, "server": exc.headers["X-Served-By"], "body": body}
        except (OSError, http.client.HTTPException) as exc:
            return {"error": f"{exc.__class__.__name__}: {exc}"}

    def get_held(self, url: str, held: str) -> dict[str, Any]:
        """A request on held keep-alive connection `held`; once it breaks it stays broken."""
        parts = urllib.parse.urlsplit(url)
        conn = self.held.get(held)
        if conn is None:
            conn = http.client.HTTPConnection(parts.netloc, timeout=TIMEOUT)
            self.held[held] = conn
        elif conn.sock is None:
            return {"error": "closed"}
        try:
            conn.request("GET", parts.path or "/")
            r = conn.getresponse()
            body = r.read().decode(errors="replace")
            if conn.sock is None:  # the server closed it after answering
                return {"error": "closed"}
            return {"status": r.status, "server": r.headers["X-Served-By"], "body": body}
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conn.sock = None
            self.held[held] = conn
            return {"error": f"{exc.__class__.__name__}: {exc}"}

    def echo(self, vip: str, port: int) -> str:
        argv = [ECHOSCU, "-aec", "PACS", "-to", "2", "-ta", "2", "-td", "2", vip, str(port)]
        env = {**os.environ, "TCP_NODELAY": "1"}
        try:
            done = subprocess.run(argv, capture_output=True, env=env, timeout=5, check=False)
        except subprocess.TimeoutExpired:
            return "error: timeout"
        return "ok" if done.returncode == 0 else f"error: exit {done.returncode}"

    def watch(self, targets: list[dict[str, Any]], seconds: float, every: float) -> dict[str, Any]:
        results: dict[str, list[tuple[float, str]]] = {t["name"]: [] for t in targets}
        end = time.monotonic() + seconds

        def poll(target: dict[str, Any]) -> None:
            out = results[target["name"]]
            while time.monotonic() < end:
                started = time.monotonic()
                if "echo" in target:
                    result = self.echo(target["echo"][0], int(target["echo"][1]))
                else:
                    answer = self.get(target["url"], target.get("session", target["name"]))
                    result = answer.get("server") or answer.get("error", "?")
                out.append((started, result))
                time.sleep(max(0.0, every - (time.monotonic() - started)))

        threads = [threading.Thread(target=poll, args=(t,)) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        return results


def client() -> None:
    driver = Driver()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        answer: object
        if op == "get" and "held" in cmd:
            answer = driver.get_held(cmd["url"], cmd["held"])
        elif op == "get":
            answer = driver.get(cmd["url"], cmd.get("session", ""))
        elif op == "watch":
            answer = driver.watch(cmd["targets"], float(cmd["seconds"]), float(cmd["every"]))
        else:
            answer = {"error": f"unknown op {op}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "http":
        serve_http(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "client":
        client()
