"""The l7-http data plane (pacslb.proxy.http) end to end on loopback.

Listeners run in this process on a uvloop loop in a background thread (ProxyThread); the real
servers are EchoBackends (raw HTTP/1.1 servers on threads that answer with the request head
they received), nginx and curl. The flat-memory download runs the proxy in a subprocess
(_http_proxy_runner.py) to measure that process's RSS. The framing and header rules, side by
side with HAProxy, are in test_http_rules.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration._http_proxy_runner import (
    Client,
    EchoBackend,
    Proxy,
    ProxyThread,
    Response,
    runtime_for,
    service,
)
from tests.peers.procs import ROOT, free_port, running, stop, wait_port

from pacslb.core.plan import build_plan
from pacslb.core.state import AdminState
from pacslb.core.validate import load_data
from pacslb.proxy.runtime import FALLBACK, NO_SERVER, cookie_id
from pacslb.proxy.tls import tls_context

pytestmark = pytest.mark.timeout(60)
GET = b"GET %s HTTP/1.1\r\nHost: vip\r\n%s\r\n"


def get(path: str = "/", extra: str = "") -> bytes:
    return GET % (path.encode(), extra.encode())


def who(resp: Response | None) -> str:
    """Which backend answered: `A conn=3` -> 'A'."""
    assert resp is not None
    return resp.body.split(b" ", 1)[0].decode()


def conn_of(resp: Response | None) -> str:
    assert resp is not None
    return resp.body.split(b"\n", 1)[0].decode()


def one(proxy: Proxy, data: bytes, source: str | None = None) -> Response:
    sock = socket.socket()
    if source:
        sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((proxy.host, proxy.port))
    client = Client.__new__(Client)
    client.sock, client.buf = sock, b""
    with client:
        client.send(data)
        resp = client.response()
    assert resp is not None, "no response"
    return resp


@pytest.fixture(scope="module")
def loop() -> Iterator[ProxyThread]:
    thread = ProxyThread()
    yield thread
    thread.close()


@pytest.fixture
def backends() -> Iterator[tuple[EchoBackend, EchoBackend]]:
    a, b = EchoBackend("A"), EchoBackend("B")
    yield a, b
    a.close()
    b.close()


def two(a: EchoBackend, b: EchoBackend) -> list[tuple[str, str, int]]:
    return [("A", "127.0.0.1", a.port), ("B", "127.0.0.1", b.port)]


def test_keep_alive_pooling_and_counters(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.41")
    with Client(proxy.host, proxy.port) as client:
        for _ in range(5):
            client.send(get())
            resp = client.response()
            assert resp is not None and resp.status == 200
            assert resp.header("connection") == []  # HTTP/1.1: persistent without saying so
    first = conn_of(resp)
    second = one(proxy, get())
    assert conn_of(second) == first == "A conn=1", "the pooled upstream connection is reused"
    assert a.connections == 1

    stats = proxy.call(lambda: proxy.runtime.stats["A"].as_dict())
    assert stats["requests"] == 6 and stats["responses"] == {"2xx": 6}
    assert stats["bytes_in"] > 6 * 40 and stats["bytes_out"] > 6 * 100
    assert stats["active"] == 0 and stats["total"] == 6


def test_a_keep_alive_client_goes_to_uvloop_and_a_one_exchange_client_stays_plain(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    """The transport is chosen by the first request (HttpListener._hand_over), whenever it
    comes; both serve every rule alike (test_http_rules.py runs on both), and pipelined
    requests that came in the first read keep their order across the hand-over."""
    a, _ = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.41")

    def transports() -> set[str]:
        return proxy.call(lambda: {type(c.transport).__name__ for c in proxy.listener.clients})

    for late in (False, True):  # bytes there at the accept, or only later
        with Client(proxy.host, proxy.port) as client:
            if late:
                for _ in range(200):  # until accepted (bounded: 2 s)
                    if transports():
                        break
                    time.sleep(0.01)
                assert transports() == {"PlainTransport"}  # nothing read yet: no choice
            client.send(get("/1") + get("/2"))  # one read, two requests, then the hand-over
            assert [conn_of(client.response()), conn_of(client.response())] == ["A conn=1"] * 2
            assert [r.head.split(b" ")[1] for r in a.received[-2:]] == [b"/1", b"/2"]
            assert transports() == {"TCPTransport"}
    with Client(proxy.host, proxy.port) as client:
        client.send(get("/slow/0.3", "Connection: close\r\n"))
        time.sleep(0.1)  # the backend answers after 0.3 s: the client waits meanwhile
        kinds = transports()
        resp = client.response()
        assert resp is not None and resp.status == 200
        assert kinds == {"PlainTransport"}


def test_requests_are_scheduled_one_by_one(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    proxy = loop.listen(service(two(*backends), scheduler="rr"), host="127.0.0.41")
    with Client(proxy.host, proxy.port) as client:
        answered = []
        for _ in range(4):
            client.send(get())
            answered.append(who(client.response()))
    assert answered == ["A", "B", "A", "B"]


def test_forwarded_for_is_the_client_address(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.41")
    one(proxy, get("/", "X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\n"), "127.0.0.9")
    (seen,) = a.received
    assert seen.header("x-forwarded-for") == ["127.0.0.9"]
    assert seen.header("x-forwarded-proto") == ["http"]


def test_cookie_persistence(loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]) -> None:
    a, b = backends
    svc = service(two(a, b), scheduler="rr", persistence={"type": "http-cookie", "max_age": 600})
    proxy = loop.listen(svc, host="127.0.0.42")
    first = one(proxy, get())
    server = who(first)
    (cookie,) = first.header("set-cookie")
    value = cookie_id("Web", server)
    assert cookie == f"PACSLB_SERVER={value}; Path=/; HttpOnly; Max-Age=600"
    assert first.header("cache-control") == ["private"]  # `nocache`
    assert server not in value and "127.0.0.1" not in cookie  # opaque

    for _ in range(4):  # new connections, the scheduler would alternate: the cookie pins
        resp = one(proxy, get("/", f"Cookie: a=1; PACSLB_SERVER={value}; b=2\r\n"))
        assert who(resp) == server
        assert resp.header("set-cookie") == []  # the right cookie: the response is untouched
    backend = a if server == "A" else b
    assert backend.received[-1].header("cookie") == ["a=1; b=2"]  # `indirect`
    one(proxy, get("/", f"Cookie: PACSLB_SERVER={value}\r\n"))
    assert backend.received[-1].header("cookie") == []

    unknown = one(proxy, get("/", "Cookie: PACSLB_SERVER=nonsense\r\n"))
    assert unknown.header("set-cookie")[0].startswith("PACSLB_SERVER=")
    forged = one(proxy, get("/setcookie", f"Cookie: PACSLB_SERVER={value}\r\n"))
    assert forged.header("set-cookie") == ["app=1; Path=/"]  # the server's own is removed


def test_cookie_follows_drain_not_halt(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    svc = service(two(*backends), persistence={"type": "http-cookie"})
    proxy = loop.listen(svc, host="127.0.0.42")
    value = cookie_id("Web", "A")
    with_cookie = get("/", f"Cookie: PACSLB_SERVER={value}\r\n")
    assert who(one(proxy, with_cookie)) == "A"

    def admin(state: AdminState) -> None:
        plan = build_plan(load_data({"virtual_services": [svc]}), admin={("Web", "A"): state})
        proxy.call(lambda: proxy.runtime.update(plan.services[0]))

    admin(AdminState.DRAIN)
    drained = one(proxy, with_cookie)
    assert who(drained) == "A" and drained.header("set-cookie") == []  # keeps its clients
    assert who(one(proxy, get())) == "B"  # but takes no new ones

    admin(AdminState.HALT)
    moved = one(proxy, with_cookie)
    assert who(moved) == "B"
    assert moved.header("set-cookie")[0].startswith(f"PACSLB_SERVER={cookie_id('Web', 'B')};")


def test_source_ip_persistence(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    svc = service(two(*backends), scheduler="rr", persistence={"type": "source-ip", "timeout": 60})
    proxy = loop.listen(svc, host="127.0.0.43")
    for source in ("127.0.0.9", "127.0.0.10"):
        seen = {who(one(proxy, get(), source)) for _ in range(4)}
        assert len(seen) == 1, f"{source} moved between servers: {seen}"


def test_failed_connect_goes_to_the_next_server(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    _, b = backends
    dead = free_port()
    svc = service([("A", "127.0.0.1", dead), ("B", "127.0.0.1", b.port)], scheduler="rr")
    proxy = loop.listen(svc, host="127.0.0.44")
    assert [who(one(proxy, get())) for _ in range(4)] == ["B"] * 4
    stats = proxy.call(lambda: proxy.runtime.stats["A"].as_dict())
    assert stats["connect_failures"] >= 1 and stats["active"] == 0


def test_no_server_is_503_and_fallback_answers(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, sorry = backends
    admin = {("Web", "A"): AdminState.HALT}
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.44", admin=admin)
    resp = one(proxy, get())
    assert resp.status == 503 and resp.header("connection") == ["close"]
    # counted in the service's no-server row (status `no_server`), not a server's or the
    # fallback's
    no_server = proxy.call(lambda: proxy.runtime.stats[NO_SERVER].as_dict())
    assert no_server["responses"] == {"5xx": 1}
    assert FALLBACK not in proxy.call(lambda: set(proxy.runtime.stats))

    svc = service(
        [("A", "127.0.0.1", a.port)], fallback={"address": "127.0.0.1", "port": sorry.port}
    )
    proxy = loop.listen(svc, host="127.0.0.44", admin=admin)
    assert who(one(proxy, get())) == "B"  # the fallback server
    assert proxy.call(lambda: proxy.runtime.stats[FALLBACK].requests) == 1


def test_bad_gateway_and_gateway_timeout(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    svc = service([("A", "127.0.0.1", a.port)], timeouts={"http_response": 0.5})
    proxy = loop.listen(svc, host="127.0.0.45")
    assert one(proxy, get("/garbage")).status == 502
    started = time.monotonic()
    assert one(proxy, get("/slow/3")).status == 504
    assert time.monotonic() - started < 2.5


def test_header_timeout_and_idle_keep_alive(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    svc = service(
        [("A", "127.0.0.1", a.port)], timeouts={"http_request": 0.5, "http_keepalive": 0.5}
    )
    proxy = loop.listen(svc, host="127.0.0.45")
    with Client(proxy.host, proxy.port) as client:  # slowloris: a head that never ends
        client.send(b"GET / HTTP/1.1\r\nHost: vip\r\nX-Slow: 1\r\n")
        resp = client.response()
        assert resp is not None and resp.status == 408 and client.closed()
    with Client(proxy.host, proxy.port) as client:  # keep-alive: closed quietly when idle
        client.send(get())
        assert client.response() is not None
        assert client.closed(3.0) and client.buf == b""
    with Client(proxy.host, proxy.port) as client:  # a connection that never sends a byte
        assert client.closed(3.0) and client.buf == b""


def test_request_bodies_are_streamed(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.46")
    chunked = b"6\r\nhello \r\n5;x=y\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n"
    resp = one(
        proxy, b"POST /c HTTP/1.1\r\nHost: vip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    )
    assert resp.status == 200 and a.received[-1].body == b"hello world"
    assert a.received[-1].header("transfer-encoding") == ["chunked"]  # re-chunked

    big = os.urandom(8 << 20)
    with Client(proxy.host, proxy.port, timeout=20) as client:
        client.send(b"PUT /big HTTP/1.1\r\nHost: vip\r\nContent-Length: %d\r\n\r\n" % len(big))
        client.sock.sendall(big)
        resp = client.response()
    assert resp is not None and resp.status == 200
    assert a.received[-1].body == big and resp.body.endswith(big[-1000:])


def test_pipelined_then_half_closed(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.46")
    with Client(proxy.host, proxy.port) as client:
        client.send(get("/1") + get("/2") + b"HEAD /3 HTTP/1.1\r\nHost: vip\r\n\r\n")
        client.sock.shutdown(socket.SHUT_WR)  # no more requests: the answers still come
        answers = [client.response(), client.response(), client.response(head_request=True)]
        assert [r.status for r in answers if r] == [200, 200, 200]
        assert [r.body.split(b"\n")[1][:6] for r in answers[:2] if r] == [b"GET /1", b"GET /2"]
        assert client.closed()


def test_http10_client(loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]) -> None:
    a, _ = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.46")
    with Client(proxy.host, proxy.port) as client:
        for _ in range(2):
            client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = client.response()
            assert resp is not None and resp.status == 200
            assert resp.header("connection") == ["keep-alive"]
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        resp = client.response()
        assert resp is not None and resp.header("connection") == ["close"] and client.closed()


def test_halt_closes_connections_and_drain_keeps_them(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    svc = service([("A", "127.0.0.1", a.port)])
    proxy = loop.listen(svc, host="127.0.0.47")

    def slow_request(out: list[Any]) -> None:
        with Client(proxy.host, proxy.port) as client:
            client.send(get("/slow/1.5"))
            out.append(client.response())

    def admin(state: AdminState) -> None:
        plan = build_plan(load_data({"virtual_services": [svc]}), admin={("Web", "A"): state})
        proxy.call(lambda: proxy.runtime.update(plan.services[0]))

    results: list[Any] = []
    worker = threading.Thread(target=slow_request, args=(results,))
    worker.start()
    time.sleep(0.5)
    admin(AdminState.DRAIN)
    worker.join(5)
    assert results[0] is not None and results[0].status == 200  # drain: finishes

    admin(AdminState.ONLINE)
    results.clear()
    started = time.monotonic()
    worker = threading.Thread(target=slow_request, args=(results,))
    worker.start()
    time.sleep(0.5)
    admin(AdminState.HALT)
    worker.join(5)
    assert results == [None] and time.monotonic() - started < 1.4  # halt: closed now
    assert proxy.call(lambda: proxy.runtime.stats["A"].active) == 0


def test_upstream_pool_ages_out(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, _ = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.47")
    proxy.call(lambda: setattr(proxy.listener.pool, "timeout", 0.2))
    assert conn_of(one(proxy, get())) == "A conn=1"
    assert conn_of(one(proxy, get())) == "A conn=1"
    time.sleep(0.8)
    assert conn_of(one(proxy, get())) == "A conn=2"


def test_listener_close_lets_the_current_request_finish(
    loop: ProxyThread, backends: tuple[EchoBackend, EchoBackend]
) -> None:
    a, b = backends
    proxy = loop.listen(service([("A", "127.0.0.1", a.port)]), host="127.0.0.48")
    proxy.call(lambda: setattr(proxy.listener, "runtime", runtime_for(service(two(a, b)[1:]))))
    assert who(one(proxy, get())) == "B"  # a swapped runtime takes the next request

    with Client(proxy.host, proxy.port) as client:
        client.send(get("/slow/0.5"))
        time.sleep(0.2)
        proxy.call(proxy.listener.close)
        resp = client.response()
        assert resp is not None and resp.status == 200
        assert resp.header("connection") == ["close"] and client.closed()
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()


# --- TLS ---------------------------------------------------------------------------------


def certificate(tmp: Path, name: str) -> tuple[str, str]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return str(cert), str(key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("certs")
    return {name: certificate(tmp, name) for name in ("test", "b.test")}


def insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_tls_termination(
    loop: ProxyThread,
    backends: tuple[EchoBackend, EchoBackend],
    certs: dict[str, tuple[str, str]],
) -> None:
    a, _ = backends
    svc = service([("A", "127.0.0.1", a.port)], persistence={"type": "http-cookie"})
    tls = tls_context([certs["test"], certs["b.test"]])
    proxy = loop.listen(svc, host="127.0.0.49", tls=tls)
    with Client(proxy.host, proxy.port, tls=insecure()) as client:
        client.send(get())
        resp = client.response()
    assert resp is not None and resp.status == 200
    assert resp.header("set-cookie")[0].endswith("; HttpOnly; Secure")
    assert a.received[-1].header("x-forwarded-proto") == ["https"]

    for sni, expected in (("b.test", "b.test"), ("test", "test"), ("other", "test")):
        with (
            socket.create_connection((proxy.host, proxy.port), timeout=5) as raw,
            insecure().wrap_socket(raw, server_hostname=sni) as tls_sock,
        ):
            der = tls_sock.getpeercert(binary_form=True)
        assert der == ssl.PEM_cert_to_DER_cert(Path(certs[expected][0]).read_text()), sni

    out = subprocess.run(
        ["curl", "-sk", f"https://{proxy.host}:{proxy.port}/curl"],
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert out.stdout.startswith(b"A conn=")


def test_reencrypt_to_the_real_server(loop: ProxyThread, certs: dict[str, tuple[str, str]]) -> None:
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(*certs["test"])
    secure = EchoBackend("S", tls=server_tls)
    try:
        svc = service([("S", "127.0.0.1", secure.port)])
        svc["real_servers"][0]["reencrypt"] = True
        proxy = loop.listen(svc, host="127.0.0.49")
        assert who(one(proxy, get())) == "S"
        assert who(one(proxy, get())) == "S"
        assert secure.connections == 1  # pooled like plain connections
    finally:
        secure.close()


# --- a 1 GiB download with flat memory ---------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def nginx(tmp: Path, host: str) -> Iterator[int]:
    port = free_port(host)
    (tmp / "www").mkdir()
    with open(tmp / "www" / "big", "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB of zeros, no disk
    conf = tmp / "nginx.conf"
    temp = {k: tmp / k for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    # as root, workers would run as nobody and could not read pytest's private tmp dir
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {temp["body"]};
  proxy_temp_path {temp["proxy"]};
  fastcgi_temp_path {temp["fastcgi"]};
  uwsgi_temp_path {temp["uwsgi"]};
  scgi_temp_path {temp["scgi"]};
  server {{ listen {host}:{port}; root {tmp}/www; }}
}}
"""
    )
    with running(["nginx", "-c", str(conf), "-e", str(tmp / "error.log")], host, port):
        yield port


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_one_gib_download_keeps_memory_flat(tmp_path: Path) -> None:
    host = "127.0.0.50"
    with nginx(tmp_path, host) as backend:
        port = free_port(host)
        svc = service([("N", host, backend)], vip=host, port=port)
        runner = Path(__file__).with_name("_http_proxy_runner.py")
        argv = [sys.executable, str(runner), "--listen", f"{host}:{port}", "--service"]
        proc = subprocess.Popen(
            [*argv, __import__("json").dumps(svc)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_port(host, port, proc=proc)  # type: ignore[arg-type]
            one_small = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", f"http://{host}:{port}/"], timeout=10
            )
            assert one_small.returncode == 0
            baseline = rss_kib(proc.pid)
            samples = []
            curl = subprocess.Popen(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download}",
                    f"http://{host}:{port}/big",
                ],
                stdout=subprocess.PIPE,
            )
            deadline = time.monotonic() + 40
            while curl.poll() is None and time.monotonic() < deadline:
                samples.append(rss_kib(proc.pid))
                time.sleep(0.05)
            out, _ = curl.communicate(timeout=5)
        finally:
            stop(proc)  # type: ignore[arg-type]
            if proc.stderr is not None:
                proc.stderr.close()
    assert out.decode() == f"200 {1 << 30}"
    growth = max(samples) - baseline
    print(f"RSS {baseline} KiB before, max {max(samples)} KiB during ({len(samples)} samples)")
    assert growth < 16 * 1024, f"RSS grew by {growth} KiB while relaying 1 GiB"
