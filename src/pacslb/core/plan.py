"""The Plan: the one contract between the control plane and the data planes (DESIGN §3).

An immutable value built from the config, the health checker's view and the operators' admin
states. Engines see Plans, never the config file, the API or the health checker. It has a JSON
form for the proxy process, and two Plans can be diffed for logs and incremental updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from enum import Enum
from functools import cache
from typing import Any

from pydantic import TypeAdapter

from pacslb import config as c
from pacslb.core.state import AdminState, Health

ServerKey = tuple[str, str]  # (virtual service label, real server label)


@dataclass(frozen=True, slots=True)
class PlanRealServer:
    label: str
    address: str
    port: int | None  # None: the port the client connected to
    weight: int  # as configured
    effective_weight: int  # what schedulers use: 0 when drained, halted or down
    admin: AdminState = AdminState.ONLINE
    health: Health = Health.UNKNOWN
    min_connections: int = 0
    max_connections: int = 0
    reencrypt: bool = False
    ae_title: str | None = None  # l7-dicom: the called AE written into the client's request

    @property
    def takes_new_connections(self) -> bool:
        return self.effective_weight > 0

    @property
    def keeps_existing(self) -> bool:
        """Drained servers keep their connections and persistent clients; halted or down do not,
        nor do removed ones (their connections finish, their persistent clients move on)."""
        return self.admin not in _LOSES_CLIENTS and self.health is not Health.DOWN


_LOSES_CLIENTS = frozenset({AdminState.HALT, AdminState.REMOVING})


@dataclass(frozen=True, slots=True)
class PlanPersistence:
    kind: str = "none"  # none | source-ip | http-cookie | calling-ae
    timeout: int = 0
    granularity: int = 32
    granularity_v6: int = 128
    cookie: str = ""
    cookie_max_age: int | None = None


@dataclass(frozen=True, slots=True)
class PlanTimeouts:
    connect: float
    idle: float
    http_request: float
    http_keepalive: float
    http_response: float = 120.0


@dataclass(frozen=True, slots=True)
class PlanPassive:
    """Passive health of the built-in proxy (config.PassiveHealth); 0 failures = off."""

    consecutive_failures: int = 5
    ejection: float = 30.0
    max_ejection: float = 300.0
    server_errors: bool = False


@dataclass(frozen=True, slots=True)
class PlanEndpoint:
    address: str
    port: int | None


@dataclass(frozen=True, slots=True)
class PlanCertificate:
    certificate: str
    key: str | None


@dataclass(frozen=True, slots=True)
class PlanTls:
    certificates: tuple[PlanCertificate, ...]
    ports: tuple[int, ...]  # the VIP ports that speak TLS


@dataclass(frozen=True, slots=True)
class PlanDicom:
    """l7-dicom: what the proxy does with the client's A-ASSOCIATE-RQ (config.DicomSettings)."""

    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # called AE -> real server labels
    unknown_called_ae: str = "reject"  # reject | any
    request_timeout: float = 10.0
    max_request: int = 65536
    drain_limit: float = 3600.0  # 0: a drained server's associations run until released

    def servers_for(self, called_ae: str) -> tuple[str, ...] | None:
        """The labels an association calling `called_ae` may go to: () = any server, None =
        refuse it (routes are set, none names this title, and unknown titles are refused)."""
        if not self.routes:
            return ()
        for title, labels in self.routes:
            if title == called_ae:
                return labels
        return () if self.unknown_called_ae == "any" else None


@dataclass(frozen=True, slots=True)
class PlanService:
    label: str
    vip: str
    ports: tuple[int, ...]
    protocol: str
    mode: c.Mode
    scheduler: c.SchedulerName
    persistence: PlanPersistence
    timeouts: PlanTimeouts
    real_servers: tuple[PlanRealServer, ...]
    fallback: PlanEndpoint | None = None
    tls: PlanTls | None = None
    passive: PlanPassive = PlanPassive()
    max_connections: int = 0  # client connections per proxy worker; 0: core.budget's share
    source: str = "auto"  # l7: auto | vip | client | an address (proxy/source.py)
    dicom: PlanDicom | None = None  # l7-dicom only

    def server(self, label: str) -> PlanRealServer | None:
        return next((rs for rs in self.real_servers if rs.label == label), None)

    @property
    def available(self) -> tuple[PlanRealServer, ...]:
        return tuple(rs for rs in self.real_servers if rs.takes_new_connections)


@dataclass(frozen=True, slots=True)
class Plan:
    revision: int
    services: tuple[PlanService, ...]

    def service(self, label: str) -> PlanService | None:
        return next((s for s in self.services if s.label == label), None)

    def to_json(self) -> bytes:
        return _adapter().dump_json(self)

    @staticmethod
    def from_json(data: bytes | str) -> Plan:
        return _adapter().validate_json(data)


def plan_from_dict(data: Any) -> Plan:
    """A Plan from its JSON form already parsed (e.g. nested in a control message)."""
    return _adapter().validate_python(data)


@cache
def _adapter() -> TypeAdapter[Plan]:
    return TypeAdapter(Plan)


def effective_weight(weight: int, admin: AdminState, health: Health) -> int:
    """The weight schedulers see: drain, halt and a failed health check all mean 0."""
    if admin is not AdminState.ONLINE or health is Health.DOWN:
        return 0
    return weight


def _persistence(p: c.Persistence) -> PlanPersistence:
    if isinstance(p, c.SourceIPPersistence):
        return PlanPersistence("source-ip", p.timeout, p.granularity, p.granularity_v6)
    if isinstance(p, c.CookiePersistence):
        return PlanPersistence("http-cookie", cookie=p.cookie, cookie_max_age=p.max_age)
    if isinstance(p, c.CallingAEPersistence):
        return PlanPersistence("calling-ae", p.timeout)
    return PlanPersistence()


def build_service(
    vs: c.VirtualService,
    health: Mapping[ServerKey, Health],
    admin: Mapping[ServerKey, AdminState],
    leaving: Mapping[ServerKey, Leaving] | None = None,
) -> PlanService:
    servers = []
    for rs in vs.real_servers:
        key = (vs.label, rs.label)
        state = admin.get(key, AdminState.ONLINE)
        seen = health.get(key, Health.UNKNOWN)
        if isinstance(vs.health_check, c.NoCheck):
            seen = Health.UP  # "none": always up
        servers.append(
            PlanRealServer(
                label=rs.label,
                address=str(rs.address),
                port=rs.port,
                weight=rs.weight,
                effective_weight=effective_weight(rs.weight, state, seen),
                admin=state,
                health=seen,
                min_connections=rs.min_connections,
                max_connections=rs.max_connections,
                reencrypt=rs.reencrypt,
                ae_title=rs.ae_title,
            )
        )
    configured = {rs.label for rs in vs.real_servers}
    for (service, label), gone in (leaving or {}).items():
        if service == vs.label and label not in configured:  # re-added: the config's wins
            servers.append(gone.server)
    t = vs.timeouts
    p = vs.passive
    tls = None
    if vs.tls is not None:
        tls = PlanTls(
            tuple(
                PlanCertificate(str(p.certificate), str(p.key) if p.key else None)
                for p in vs.tls.certificates
            ),
            tuple(vs.tls.ports or vs.ports),
        )
    return PlanService(
        label=vs.label,
        vip=str(vs.vip),
        ports=tuple(vs.ports),
        protocol=vs.protocol,
        mode=vs.mode,
        scheduler=vs.scheduler,
        persistence=_persistence(vs.persistence),
        timeouts=PlanTimeouts(t.connect, t.idle, t.http_request, t.http_keepalive, t.http_response),
        real_servers=tuple(servers),
        fallback=PlanEndpoint(str(vs.fallback.address), vs.fallback.port) if vs.fallback else None,
        tls=tls,
        passive=PlanPassive(
            p.consecutive_failures, p.ejection, max(p.ejection, p.max_ejection), p.server_errors
        ),
        max_connections=vs.max_connections,
        source=vs.source,
        dicom=_dicom(vs),
    )


def _dicom(vs: c.VirtualService) -> PlanDicom | None:
    if vs.mode is not c.Mode.L7_DICOM:
        return None
    d = vs.dicom or c.DicomSettings()
    return PlanDicom(
        routes=tuple((r.called_ae, tuple(r.real_servers)) for r in d.routes),
        unknown_called_ae=d.unknown_called_ae,
        request_timeout=d.request_timeout,
        max_request=d.max_request,
        drain_limit=d.drain_limit,
    )


def build_plan(
    config: c.Config,
    health: Mapping[ServerKey, Health] | None = None,
    admin: Mapping[ServerKey, AdminState] | None = None,
    revision: int = 0,
    leaving: Mapping[ServerKey, Leaving] | None = None,
) -> Plan:
    """Config + health + admin state -> Plan. Unknown health counts as usable (see Health).

    `leaving`: real servers removed from the config that still drain (see Leaving); each
    stays in its service, after the configured ones, as REMOVING."""
    services = config.virtual_services
    return Plan(
        revision, tuple(build_service(vs, health or {}, admin or {}, leaving) for vs in services)
    )


# --- removal: drain first, then gone -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leaving:
    """A real server removed from the config while its open connections finish.

    Removal drains, as DESIGN §8 asks of drain: the engines keep forwarding its connections
    (only HALT cuts them, in the proxy and in the kernel engine alike), no new client goes to
    it (weight 0) and its persistent clients are scheduled anew. It leaves the Plan when the
    engines count no open connection on it, or at `deadline` (the service's
    `timeouts.remove_drain` cap), when the engines cut what is left."""

    server: PlanRealServer  # as Plans carry it now: REMOVING, effective weight 0
    since: float  # `now` of the removal
    deadline: float  # `now` past which it goes even with connections open

    @property
    def cap(self) -> float:
        return self.deadline - self.since


def removals(plan: Plan, old: c.Config, new: c.Config, now: float) -> dict[ServerKey, Leaving]:
    """Real servers that `new` drops from a service it keeps, as they stood in `plan`, each
    to drain for its service's `timeouts.remove_drain`. A halted server (its connections are
    cut already) or a cap of 0 goes at once, as does every server of a removed service (its
    listeners close with it)."""
    out: dict[ServerKey, Leaving] = {}
    for vs in new.virtual_services:
        before, running = old.service(vs.label), plan.service(vs.label)
        cap = vs.timeouts.remove_drain
        if before is None or running is None or cap <= 0:
            continue
        kept = {rs.label for rs in vs.real_servers}
        for rs in before.real_servers:
            current = running.server(rs.label)
            if rs.label in kept or current is None or current.admin is AdminState.HALT:
                continue
            server = replace(current, admin=AdminState.REMOVING, effective_weight=0)
            out[(vs.label, rs.label)] = Leaving(server, now, now + cap)
    return out


def drained(
    leaving: Mapping[ServerKey, Leaving],
    active: Mapping[ServerKey, int],
    now: float,
    settle: float,
) -> dict[ServerKey, str]:
    """The leaving servers to drop now, each with why: no connection open (as the engines
    last counted, at least `settle` seconds after the removal, so that the count postdates
    the Plan that stopped new connections), or the cap passed."""
    out: dict[ServerKey, str] = {}
    for key, gone in leaving.items():
        open_now = active.get(key, 0)
        if now >= gone.deadline:
            noun = "connection" if open_now == 1 else "connections"
            out[key] = f"drain cap of {gone.cap:g} s passed: {open_now} {noun} cut"
        elif open_now == 0 and now - gone.since >= settle:
            out[key] = f"its connections ended after {now - gone.since:.0f} s"
    return out


# --- diff --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanChange:
    """One difference between two Plans, e.g. ('server-changed', 'Web', 'Srv1', 'admin ...')."""

    kind: str  # service-added | service-removed | service-changed | server-added | ...
    service: str
    server: str = ""
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.service}/{self.server}" if self.server else self.service
        return f"{self.kind} {where}" + (f": {self.detail}" if self.detail else "")


def _field_changes(old: Any, new: Any, skip: tuple[str, ...] = ()) -> str:
    """Each differing field as `name old -> new`; a nested value of the same shape (timeouts,
    the same persistence kind, DICOM settings on both sides) as its own differing fields."""
    parts = []
    for f in fields(old):
        if f.name in skip:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if _same_shape(a, b):
            parts.append(f"{f.name} {_field_changes(a, b)}")
        else:
            parts.append(f"{f.name} {_show(a, f.name)} -> {_show(b, f.name)}")
    return ", ".join(parts)


def _same_shape(a: Any, b: Any) -> bool:
    if isinstance(a, PlanPersistence) and isinstance(b, PlanPersistence):
        return a.kind == b.kind
    return is_dataclass(a) and type(a) is type(b) and not isinstance(a, PlanEndpoint)


# Fields counted in seconds, so that a change reads "idle 900 s -> 1800 s".
_SECONDS = frozenset(
    {"timeout", "connect", "idle", "http_request", "http_keepalive", "http_response"}
    | {"ejection", "max_ejection", "request_timeout", "drain_limit", "cookie_max_age"}
)


def _show(value: Any, name: str = "") -> str:
    """A Plan value as an operator reads it: no dataclass reprs, None as "none"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, int | float):
        return f"{value:g} s" if name in _SECONDS else f"{value:g}"
    if isinstance(value, PlanPersistence):
        return _show_persistence(value)
    if isinstance(value, PlanEndpoint):
        return value.address + (f":{value.port}" if value.port is not None else "")
    if isinstance(value, PlanCertificate):
        return value.certificate  # (its key's path follows it; the certificate names it)
    if isinstance(value, PlanTls):
        return f"{_show(value.certificates)} on ports {_show(value.ports)}"
    if name == "routes" or isinstance(value, PlanDicom):
        routes = value if name == "routes" else value.routes
        shown = " ".join(f"{ae}→{','.join(labels) or 'any'}" for ae, labels in routes)
        if name == "routes":
            return shown or "none"
        unknown = ", unknown called AE any" if value.unknown_called_ae == "any" else ""
        return f"routes {shown or 'none'}{unknown}"
    if is_dataclass(value) and not isinstance(value, type):
        return ", ".join(f"{f.name} {_show(getattr(value, f.name), f.name)}" for f in fields(value))
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return str(value)


def _show_persistence(p: PlanPersistence) -> str:
    if p.kind == "source-ip":
        return f"source-ip {p.timeout} s /{p.granularity} /{p.granularity_v6}"
    if p.kind == "http-cookie":
        age = f" max-age {p.cookie_max_age} s" if p.cookie_max_age is not None else ""
        return f"http-cookie {p.cookie}{age}"
    if p.kind == "calling-ae":
        return f"calling-ae {p.timeout} s"
    return p.kind


def diff_plans(old: Plan, new: Plan) -> tuple[PlanChange, ...]:
    """What changed from `old` to `new`, service by service and server by server."""
    changes: list[PlanChange] = []
    before = {s.label: s for s in old.services}
    after = {s.label: s for s in new.services}
    for label in before.keys() - after.keys():
        changes.append(PlanChange("service-removed", label))
    for label, svc in after.items():
        prev = before.get(label)
        if prev is None:
            changes.append(PlanChange("service-added", label))
            continue
        detail = _field_changes(prev, svc, skip=("real_servers",))
        if detail:
            changes.append(PlanChange("service-changed", label, detail=detail))
        old_rs = {rs.label: rs for rs in prev.real_servers}
        new_rs = {rs.label: rs for rs in svc.real_servers}
        for name in old_rs.keys() - new_rs.keys():
            changes.append(PlanChange("server-removed", label, name))
        for name, rs in new_rs.items():
            was = old_rs.get(name)
            if was is None:
                changes.append(PlanChange("server-added", label, name))
            elif was != rs:
                changes.append(PlanChange("server-changed", label, name, _field_changes(was, rs)))
    order: dict[str, int] = {}
    for s in (*new.services, *old.services):
        order.setdefault(s.label, len(order))
    return tuple(sorted(changes, key=lambda ch: (order.get(ch.service, 0), ch.server, ch.kind)))
