"""`pacslb proxy`: the built-in data plane process (l7-tcp, l7-dicom and l7-http listeners).

It runs apart from the control process so that forwarding never stalls behind WebUI or health
check work and survives a control-plane crash: it keeps serving its last Plan, and the next
`pacslb run` adopts it through its control socket. It learns Plans and reports counters over a
Unix socket (JSON lines):

    {"cmd": "apply", "plan": {...}}  -> {"ok": true}  | {"ok": false, "error": "..."}
    {"cmd": "counters"}              -> {"ok": true, "result": {service: {server: {...}}}}
    {"cmd": "notices"}               -> {"ok": true, "result": [{message, service, server, at}]}
    {"cmd": "report"}                -> {"ok": true, "result": {"counters": ..., "notices": [...]}}
    {"cmd": "serve-as", "socket": PATH, "log": PATH}  -> {"ok": true}
    {"cmd": "sticky-export", "since": CURSOR} -> {"ok": true, "result": {"entries": [...],
                                                                       "cursor": CURSOR}}
    {"cmd": "sticky-import", "entries": [...]} -> {"ok": true, "result": {"taken": N}}
    {"cmd": "ping"} / {"cmd": "stop"}

`serve-as` makes a spare worker (started ahead, idle, all imports done) take over the name of
one that crashed: its control socket moves to PATH (an atomic rename over the dead worker's
file) and its output to that worker's log. The replacement then serves in milliseconds rather
than after an interpreter start.

An apply may carry "workers": N, how many workers share the listening ports; the listeners of
source-ip services then steer each client to one worker by its address (proxy/steering.py).
The sticky commands share persistence entries (proxy/sticky_share.py).

Server states in a Plan always take effect; listeners change address by address, each new
one bound before the old one closes, and an address that cannot be bound keeps its previous
listener and is reported (one bad VIP never freezes the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pacslb.config import Mode
from pacslb.core.budget import connection_budgets, service_needs
from pacslb.core.plan import Plan, PlanService, plan_from_dict
from pacslb.proxy import notices, source, sticky_share
from pacslb.proxy.budget import (
    TRIM_INTERVAL,
    FloodTrimmer,
    ServiceBudget,
    raise_descriptor_limit,
)
from pacslb.proxy.runtime import STOPPING, ServiceRuntime
from pacslb.proxy.steering import steer

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
BACKLOG = 4096


class Listener(Protocol):
    runtime: ServiceRuntime

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """What a listening address serves; a change in any field means a new listener."""

    service: str
    mode: Mode
    tls: tuple[tuple[str, str | None], ...]  # certificates when this port terminates TLS


def listen_socket(address: str, port: int) -> socket.socket:
    """A non-blocking listening socket. IP_FREEBIND lets an HA backup bind a VIP it does not
    hold yet; SO_REUSEPORT lets worker processes share the port and a changed listener be
    bound before the old one closes (no window without a listener)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND (Linux >= 4.15)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def wanted_listeners(plan: Plan) -> dict[tuple[str, int], ListenerSpec]:
    out: dict[tuple[str, int], ListenerSpec] = {}
    for svc in plan.services:
        if svc.mode.is_kernel:
            continue
        for port in svc.ports:
            tls: tuple[tuple[str, str | None], ...] = ()
            if svc.tls is not None and port in svc.tls.ports:
                tls = tuple((c.certificate, c.key) for c in svc.tls.certificates)
            out[(svc.vip, port)] = ListenerSpec(svc.label, svc.mode, tls)
    return out


class ProxyProcess:
    def __init__(self, descriptor_limit: int) -> None:
        self.plan: Plan | None = None
        self.runtimes: dict[str, ServiceRuntime] = {}
        self.listeners: dict[tuple[str, int], tuple[ListenerSpec, Listener]] = {}
        self.stopping = asyncio.Event()
        self.descriptor_limit = descriptor_limit  # what budgets share (serve() raised it)
        self.budgets: dict[str, ServiceBudget] = {}
        self.workers: int | None = None  # workers sharing the ports (None: no steering)
        self.sockets: dict[tuple[str, int], socket.socket] = {}  # each listener's socket
        self._steered: dict[tuple[str, int], tuple[int, int, int | None]] = {}
        self.pending_sticky: list[sticky_share.SharedEntry] = []  # learnt before their service
        self._segments_for: tuple[str, ...] = ()  # transparent servers the subnets are for

    async def _hairpin(self, services: Iterable[PlanService]) -> None:
        """Which subnet of this host each transparent service's server is on (proxy/source.py:
        a client on it is not transparent), looked up when those servers change."""
        servers = source.transparent_servers(services)
        if servers == self._segments_for:
            return
        self._segments_for = servers
        networks: list[source.Network] = []
        if servers:
            try:
                done = await asyncio.to_thread(
                    subprocess.run,
                    ["ip", "-j", "addr", "show"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                )
                networks = source.host_networks(json.loads(done.stdout))
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                notices.notice(f"cannot read this host's subnets (hairpin clients): {exc}")
        source.set_segments(source.segments_for(servers, networks))

    def _update_budgets(self, plan: Plan) -> None:
        """Each l7 service's connection budget in this worker (core.budget). The control
        process warns when the descriptor limit is low for these services (at start)."""
        from pacslb.proxy.tcp import HAVE_SPLICE

        limits = connection_budgets(
            self.descriptor_limit, service_needs(plan.services), HAVE_SPLICE
        )
        budgets = {}
        for label, limit in limits.items():
            budget = self.budgets.get(label) or ServiceBudget(label, limit)
            budget.set_limit(limit)
            budgets[label] = budget
        self.budgets = budgets

    async def apply(self, plan: Plan) -> None:
        """Apply a Plan; raise OSError naming every listener that could not be opened.

        Server states (drain, halt, health, weights) always take effect. Listeners are changed
        address by address, each new one bound before its old one is closed: an address that
        cannot be bound (port in use, bad certificate) keeps its previous listener, if any, and
        is reported, so one bad VIP never freezes the others."""
        services = {s.label: s for s in plan.services if not s.mode.is_kernel}
        wanted = wanted_listeners(plan)
        await self._hairpin(services.values())
        runtimes = {
            label: self.runtimes.get(label) or ServiceRuntime(svc)
            for label, svc in services.items()
        }
        for label, runtime in runtimes.items():
            runtime.update(services[label])
        if self.pending_sticky:  # learnt before this worker ran their service: before it listens
            _, self.pending_sticky = sticky_share.learn(runtimes, self.pending_sticky)
        self._update_budgets(plan)

        errors: list[str] = []
        for addr, spec in wanted.items():
            current = self.listeners.get(addr)
            if current is not None and current[0] == spec:
                current[1].runtime = runtimes[spec.service]
                continue
            try:
                listener = await self._listen(addr, spec, runtimes[spec.service])
            except (OSError, ssl.SSLError, ValueError) as exc:
                errors.append(f"cannot listen on {addr[0]}:{addr[1]}: {exc}")
                if current is not None and current[0].service in runtimes:
                    current[1].runtime = runtimes[current[0].service]
                continue
            if current is not None:
                current[1].close()  # stops accepting; its connections finish
            self.listeners[addr] = (spec, listener)
        for addr in [a for a in self.listeners if a not in wanted]:
            self.listeners.pop(addr)[1].close()  # a removed VIP: its connections finish
            self.sockets.pop(addr, None)
            self._steered.pop(addr, None)
        self.runtimes, self.plan = runtimes, plan
        errors += self._steer(services)
        if errors:
            raise OSError("; ".join(errors))

    def _steer(self, services: dict[str, PlanService]) -> list[str]:
        """Steer each listener's clients to one worker by address when its service keeps
        source-ip persistence (each worker has its own table), all of them to one worker for
        calling-ae persistence; the kernel's 4-tuple hash otherwise, which spreads one busy
        client's connections over every worker."""
        if self.workers is None:
            return []
        errors = []
        for addr, (spec, _) in self.listeners.items():
            sock, svc = self.sockets.get(addr), services.get(spec.service)
            if sock is None or svc is None:
                continue
            p = svc.persistence
            granularity = None
            if p.kind == "source-ip":
                granularity = p.granularity_v6 if sock.family == socket.AF_INET6 else p.granularity
            elif p.kind == "calling-ae":
                # Every client to one worker (all addresses masked to nothing): the kernel
                # cannot steer by AE title, and one worker's table keeps a modality on one
                # archive from its first association (sharing between workers lags ~1 s).
                granularity = 0
            want = (id(sock), self.workers, granularity)
            if self._steered.get(addr) == want:
                continue
            try:
                steer(sock, self.workers, granularity)
            except OSError as exc:
                errors.append(f"cannot steer clients of {addr[0]}:{addr[1]} by address: {exc}")
                continue
            self._steered[addr] = want
        return errors

    async def _listen(
        self, addr: tuple[str, int], spec: ListenerSpec, runtime: ServiceRuntime
    ) -> Listener:
        sock = listen_socket(*addr)
        old = self.sockets.get(addr)
        self.sockets[addr] = sock  # the new one from now (the old one closes once it is bound)
        try:
            if spec.mode is Mode.L7_TCP:
                from pacslb.proxy.tcp import TcpListener

                tcp = TcpListener(sock, runtime, addr[1], budget=self.budgets[spec.service])
                tcp.start()
                return tcp
            if spec.mode is Mode.L7_DICOM and spec.tls:  # DICOM TLS: splice cannot carry it
                from pacslb.proxy.dicom_tls import DicomTlsListener
                from pacslb.proxy.tls import tls_context

                budget = self.budgets[spec.service]
                dicom_tls = DicomTlsListener(
                    sock, runtime, addr[1], tls_context(list(spec.tls)), budget
                )
                dicom_tls.start()
                return dicom_tls
            if spec.mode is Mode.L7_DICOM:
                from pacslb.proxy.dicom import DicomListener

                dicom = DicomListener(sock, runtime, addr[1], budget=self.budgets[spec.service])
                dicom.start()
                return dicom
            from pacslb.proxy.http import HttpListener
            from pacslb.proxy.tls import tls_context

            context = tls_context(list(spec.tls)) if spec.tls else None
            http = HttpListener(sock, runtime, addr[1], context, self.budgets[spec.service])
            await http.start()
            return http
        except BaseException:
            if old is not None:
                self.sockets[addr] = old  # its listener stays
            else:
                self.sockets.pop(addr, None)
            sock.close()
            raise

    def counters(self) -> dict[str, dict[str, dict[str, object]]]:
        return {
            label: {server: stats.as_dict() for server, stats in runtime.stats.items()}
            for label, runtime in self.runtimes.items()
        }

    def close(self) -> None:
        for _, listener in self.listeners.values():
            listener.close()
        self.listeners.clear()
        for runtime in self.runtimes.values():
            for server in list(runtime.connections):
                runtime.close_server(server, STOPPING)


class ProxyControl:
    """The proxy process's side of its control socket."""

    def __init__(self, proxy: ProxyProcess, path: Path) -> None:
        self.proxy = proxy
        self.path = path

    async def start(self) -> asyncio.AbstractServer:
        # Listeners use SO_REUSEPORT, so a second proxy on the same state would silently share
        # every port with the first and serve a different Plan: refuse to start instead.
        if self.path.exists():
            if socket_answers(self.path):
                raise SystemExit(f"pacslb proxy: another proxy already answers on {self.path}")
            self.path.unlink()
        old = os.umask(0o177)
        try:
            return await asyncio.start_unix_server(self._client, str(self.path), limit=64 << 20)
        finally:
            os.umask(old)

    def serve_as(self, path: Path, log: Path) -> None:
        """Move this process's control socket to `path` and its output to `log`."""
        if path.parent != self.path.parent:
            raise ValueError(f"{path} is not beside {self.path}")
        os.rename(self.path, path)  # the listening socket lives on under its new name
        self.path = path
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self.handle(json.loads(line))
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError):
            pass
        except asyncio.CancelledError:
            # Shutting down. Not re-raised: on 3.11 the streams callback would log the
            # cancelled task's exception as an error on every stop.
            pass
        finally:
            writer.close()

    async def _learn(self, request: dict[str, Any]) -> int:
        """sticky-import: all entries checked first (nothing is taken from a bad list), then
        learnt in slices, so that 10,000 of them (~0.2 s) do not stall the data plane."""
        learnt = sticky_share.parse_entries(request.get("entries"))
        taken = 0
        for start in range(0, len(learnt), 1000):
            await asyncio.sleep(0)  # connections waiting meanwhile are served
            n, waiting = sticky_share.learn(self.proxy.runtimes, learnt[start : start + 1000])
            taken += n
            if self.proxy.plan is None:  # a spare: its services come with its first Plan
                self.proxy.pending_sticky += waiting
        del self.proxy.pending_sticky[:-200_000]  # bounded: the newest are kept
        return taken

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        try:
            if cmd == "apply":
                workers = request.get("workers")
                if workers is not None and (type(workers) is not int or workers < 1):
                    raise ValueError(f"workers must be a positive integer, got {workers!r}")
                if workers is not None:
                    self.proxy.workers = workers  # the steering modulus (_steer)
                await self.proxy.apply(plan_from_dict(request["plan"]))
                return {"ok": True}
            if cmd == "sticky-export":
                since = request.get("since") or {}
                if not isinstance(since, dict):
                    raise ValueError(f"since must be a cursor object, got {since!r}")
                entries, cursor = sticky_share.export(self.proxy.runtimes, since)
                return {"ok": True, "result": {"entries": entries, "cursor": cursor}}
            if cmd == "sticky-import":
                return {"ok": True, "result": {"taken": await self._learn(request)}}
            if cmd == "counters":
                return {"ok": True, "result": self.proxy.counters()}
            if cmd == "notices":
                return {"ok": True, "result": notices.take()}
            if cmd == "report":  # the watchdog's one read a second: counters and notices
                report = {"counters": self.proxy.counters(), "notices": notices.take()}
                return {"ok": True, "result": report}
            if cmd == "ping":
                plan = self.proxy.plan
                return {
                    "ok": True,
                    "result": {"pid": os.getpid(), "revision": plan and plan.revision},
                }
            if cmd == "stop":
                self.proxy.stopping.set()
                return {"ok": True}
            if cmd == "serve-as":
                self.serve_as(Path(request["socket"]), Path(request["log"]))
                return {"ok": True}
        except (OSError, ValueError, KeyError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def socket_answers(path: Path) -> bool:
    """Whether a live process listens on this Unix socket (a stale file after a crash: no)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def tune_gc() -> None:
    """Fewer, later garbage collections in the data plane. Every connection allocates a few
    objects that refer to each other, and with CPython's default threshold (700) the cyclic
    collector ran so often that py-spy found it in 44 % of the user time of new l7-tcp
    connections. What start-up created is frozen out of every future collection; young
    objects are collected after 50,000 allocations instead of 700 (memory stays bounded:
    the cycles are still collected, only in bigger batches)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def serve(path: Path) -> None:
    tune_gc()
    # Every client connection holds descriptors: use all the hard limit allows (the control
    # process does the same; a worker started otherwise, e.g. by hand, must not depend on it).
    proxy = ProxyProcess(raise_descriptor_limit())
    control = ProxyControl(proxy, path)
    server = await control.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proxy.stopping.set)
    trimmer = FloodTrimmer()
    timer: asyncio.TimerHandle | None = None

    def trim() -> None:
        nonlocal timer
        trimmer.observe(proxy.budgets.values())
        timer = loop.call_later(TRIM_INTERVAL, trim)

    timer = loop.call_later(TRIM_INTERVAL, trim)
    try:
        await proxy.stopping.wait()
    finally:
        if timer is not None:
            timer.cancel()
        server.close()
        proxy.close()
        with contextlib.suppress(FileNotFoundError):
            control.path.unlink()  # its name now, after a serve-as


def main(path: Path) -> None:
    import uvloop

    uvloop.run(serve(path))
