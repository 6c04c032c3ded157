"""The config models: one set for the YAML file, the REST bodies and docs/schema.json.

Field-level rules (types, ranges, AE title characters) live here; rules that relate several
fields or services (port translation in DR, VIP:port clashes, ...) live in core/validate.py so
that every problem can be reported at once with its path.
"""

from __future__ import annotations

import ipaddress
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from pacslb.config_alerts import AlertSettings


def _ip(value: Any) -> Any:
    """Parse here so a bad address gets one clear message instead of one per union member."""
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None
    if isinstance(value, int | float):  # pydantic would take 5 as 0.0.0.5: never what was meant
        raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address (write it as text)")
    return value


IPAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, BeforeValidator(_ip)]
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Label = Annotated[
    str,
    Field(
        pattern=LABEL_PATTERN,
        description="1-64 letters, digits, '_', '-', '.'; starting with a letter or digit",
    ),
]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Model(BaseModel):
    """Base: unknown keys are an error, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Mode(StrEnum):
    L4_DR = "l4-dr"
    L4_NAT = "l4-nat"
    L4_SNAT = "l4-snat"
    L7_TCP = "l7-tcp"
    L7_HTTP = "l7-http"
    L7_DICOM = "l7-dicom"

    @property
    def is_kernel(self) -> bool:
        return self in (Mode.L4_DR, Mode.L4_NAT, Mode.L4_SNAT)

    @property
    def layer(self) -> int:
        return 4 if self.is_kernel else 7


class SchedulerName(StrEnum):
    WLC = "wlc"
    WRR = "wrr"
    LC = "lc"
    RR = "rr"
    SH = "sh"


# --- persistence -------------------------------------------------------------------------


class NoPersistence(Model):
    type: Literal["none"] = "none"


class SourceIPPersistence(Model):
    """IPVS-style persistence: a client (masked by granularity) sticks to one real server."""

    type: Literal["source-ip"] = "source-ip"
    timeout: int = Field(
        300, ge=1, le=7 * 86400, description="seconds an entry outlives its last connection"
    )
    granularity: int = Field(
        32,
        ge=0,
        le=32,
        description="IPv4 prefix length (or netmask such as 255.255.255.0) clients are grouped by",
    )
    granularity_v6: int = Field(128, ge=0, le=128, description="IPv6 prefix length")

    @field_validator("granularity", mode="before")
    @classmethod
    def _netmask_to_prefix(cls, value: Any) -> Any:
        """Accept `255.255.255.0` and `/24` as well as 24, as ipvsadm and the appliance do."""
        if isinstance(value, str):
            text = value.strip().lstrip("/")
            if text.isdigit():
                return int(text)
            try:
                return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a netmask or prefix length") from exc
        return value


TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2


class CookiePersistence(Model):
    """HTTP cookie insertion (l7-http): the proxy names the real server in a cookie."""

    type: Literal["http-cookie"] = "http-cookie"
    cookie: str = Field("PACSLB_SERVER", description="cookie name (an RFC 9110 token)")
    max_age: int | None = Field(
        None, ge=1, description="seconds; unset = a session cookie that ends with the browser"
    )

    @field_validator("cookie")
    @classmethod
    def _token(cls, value: str) -> str:
        if not TOKEN.match(value):
            raise ValueError(f"{value!r} is not a valid cookie name (RFC 6265 token)")
        return value


class CallingAEPersistence(Model):
    """l7-dicom: a modality (its calling AE title) sticks to one real server, so that a study's
    images are not scattered over the archive nodes. Timeout as source-ip (IPVS templates)."""

    type: Literal["calling-ae"] = "calling-ae"
    timeout: int = Field(
        3600, ge=1, le=7 * 86400, description="seconds an entry outlives its last association"
    )


Persistence = Annotated[
    NoPersistence | SourceIPPersistence | CookiePersistence | CallingAEPersistence,
    Field(discriminator="type"),
]


# --- health checks -----------------------------------------------------------------------


class _CheckCommon(Model):
    port: Port | None = Field(
        None, description="port to check; defaults to the real server's port, else the VIP's"
    )
    interval: Seconds = Field(5.0, description="seconds between checks")
    timeout: Seconds = Field(3.0, description="seconds one check may take")
    rise: int = Field(2, ge=1, le=100, description="successes that bring a server back up")
    fall: int = Field(3, ge=1, le=100, description="failures that take a server down")


class ConnectCheck(_CheckCommon):
    """A TCP connect to the check port."""

    type: Literal["connect"] = "connect"


class HttpCheck(_CheckCommon):
    """GET or HEAD a path; healthy on an expected status and, if given, expected body text."""

    type: Literal["http"] = "http"
    method: Literal["GET", "HEAD"] = "GET"
    path: str = Field(
        "/", pattern=r"^/[\x21-\x7e]*$", description="absolute path: visible ASCII, no spaces"
    )
    host: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9.\-:\[\]]+$",
        description="Host header; defaults to the real server address",
    )
    expect: str | None = Field(None, description="text that must appear in the body")
    expect_regex: str | None = Field(None, description="regular expression the body must match")
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        None, description="acceptable status codes; unset = any 2xx or 3xx"
    )
    tls: bool = Field(False, description="check over HTTPS")
    tls_verify: bool = Field(
        False, description="verify the server certificate (internal servers often self-sign)"
    )

    @field_validator("expect_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _head_has_no_body(self) -> HttpCheck:
        if self.method == "HEAD" and (self.expect or self.expect_regex):
            raise ValueError("a HEAD response has no body: expect/expect_regex need method GET")
        return self


def _ae_title(value: str) -> str:
    """DICOM PS3.5 §6.2 AE: 1-16 characters of the default repertoire, no backslash or controls."""
    if not value.strip():
        raise ValueError("an AE title cannot be empty or only spaces")
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is {len(value)} characters; DICOM allows at most 16")
    if any(ch == "\\" or not (0x20 <= ord(ch) < 0x7F) for ch in value):
        raise ValueError(f"AE title {value!r} may hold only printable ASCII without backslash")
    return value


# The length is checked by _ae_title (each AE field's validator), whose message names DICOM's
# limit; a max_length here would answer a long title with a bare "at most N characters". The
# schema (and the reference) still state the limit: 1-16 characters.
AE_TITLE_LENGTH = {"minLength": 1, "maxLength": 16}
AETitle = Annotated[str, Field(json_schema_extra=AE_TITLE_LENGTH)]


class DicomEchoCheck(_CheckCommon):
    """A DICOM association with the Verification SOP class and a C-ECHO (PS3.7 §9.1.5)."""

    type: Literal["dicom-echo"] = "dicom-echo"
    called_ae: AETitle = Field("ANY-SCP", description="the archive's AE title")
    calling_ae: AETitle = Field("PACSLB_CHECK", description="the AE title pacslb presents")

    @field_validator("called_ae", "calling_ae")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _ae_title(value)


class ExternalCheck(_CheckCommon):
    """Run a program with VIP, VIP port, real server and its port (as ldirectord does)."""

    type: Literal["external"] = "external"
    command: str = Field(min_length=1, description="path of the program; exit 0 means healthy")


class NoCheck(Model):
    """Always up."""

    type: Literal["none"] = "none"


SubCheck = Annotated[
    ConnectCheck | HttpCheck | DicomEchoCheck | ExternalCheck, Field(discriminator="type")
]


class AllChecks(_CheckCommon):
    """Every listed check must pass (e.g. McKesson's three checks for Radiology Web 12.0)."""

    type: Literal["all"] = "all"
    checks: list[SubCheck] = Field(min_length=1)


HealthCheck = Annotated[
    ConnectCheck | HttpCheck | DicomEchoCheck | ExternalCheck | AllChecks | NoCheck,
    Field(discriminator="type"),
]


# --- services ----------------------------------------------------------------------------


class RealServer(Model):
    label: Label
    address: IPAddress
    port: Port | None = Field(None, description="unset = the port the client connected to")
    weight: int = Field(100, ge=0, le=65535, description="0 = takes no new connections")
    min_connections: int = Field(
        0, ge=0, description="after max_connections, take new ones again below this (0 = 3/4 max)"
    )
    max_connections: int = Field(0, ge=0, description="0 = unlimited")
    reencrypt: bool = Field(False, description="l7-http, l7-dicom: TLS to the real server")
    ae_title: AETitle | None = Field(
        None,
        description="l7-dicom: the called AE title this server answers to, written into the "
        "client's A-ASSOCIATE-RQ in place of the one the client called; unset = unchanged",
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _ae_title(value)


class Fallback(Model):
    """The 'sorry' server used when no real server is available."""

    address: IPAddress
    port: Port | None = None


class Timeouts(Model):
    connect: Seconds = Field(5.0, description="seconds to connect to a real server")
    idle: Seconds = Field(
        1800.0, description="seconds a quiet connection is kept (DICOM associations idle for long)"
    )
    http_request: Seconds = Field(
        10.0, description="l7-http: seconds to receive request headers (slowloris)"
    )
    http_keepalive: Seconds = Field(
        60.0, description="l7-http: seconds an idle client keep-alive connection is kept"
    )
    http_response: Seconds = Field(
        120.0,
        description="l7-http: seconds a real server may stay silent mid-request (then 504)",
    )
    remove_drain: float = Field(
        900.0,
        ge=0,
        le=86400,
        description="seconds a removed real server keeps its open connections (no new ones) "
        "before they are cut; 0 = cut at once. The default lets a large study's C-STORE finish",
    )


class PassiveHealth(Model):
    """Built-in proxy: take a real server out of a worker's rotation for a while after
    consecutive failures seen in live traffic (HAProxy `observe` + `error-limit` + `on-error
    mark-down`, Envoy outlier detection). Failures: a refused or timed-out connect, a reset or
    close before any response byte, no response in time (504), a bad response head (502).
    The last available server is never taken out."""

    consecutive_failures: int = Field(
        5, ge=0, le=1000, description="failures in a row that take a server out (0 = off)"
    )
    ejection: Seconds = Field(
        30.0, description="seconds out for a first ejection; each repeat doubles it"
    )
    max_ejection: Seconds = Field(300.0, description="the longest ejection")
    server_errors: bool = Field(
        False, description="l7-http: count the server's own 5xx responses as failures too"
    )


class CertificatePair(Model):
    certificate: Path = Field(description="PEM certificate chain")
    key: Path | None = Field(None, description="PEM private key; unset = inside the certificate")


class TlsTermination(Model):
    """l7-http: terminate TLS on the VIP; the first certificate is the default, others by SNI."""

    certificates: list[CertificatePair] = Field(min_length=1)
    ports: list[Port] | None = Field(None, description="VIP ports that speak TLS; unset = all")


def parse_ports(value: Any) -> Any:
    """Accept `[4000, 5000]`, `"4000,5000"`, `"8000-8010"` and mixtures, as the appliance does."""
    items: list[Any]
    if isinstance(value, int | str):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        return value
    ports: list[Any] = []
    for item in items:
        if not isinstance(item, str):
            ports.append(item)
            continue
        for part in filter(None, (p.strip() for p in item.split(","))):
            low, dash, high = part.partition("-")
            if not (low.isdigit() and (not dash or high.isdigit())):
                raise ValueError(f"{part!r} is not a port or a range such as 8000-8010")
            first, last = int(low), int(high) if dash else int(low)
            if last < first:
                raise ValueError(f"range {part!r} runs backwards")
            if last - first >= 1024:
                raise ValueError(f"range {part!r} holds more than 1024 ports")
            ports.extend(range(first, last + 1))
    return ports


SOURCE_KINDS = ("auto", "vip", "client")


class AERoute(Model):
    """l7-dicom: associations calling this AE title go to these real servers only."""

    called_ae: AETitle
    real_servers: list[Label] = Field(min_length=1, description="labels of the service's servers")

    @field_validator("called_ae")
    @classmethod
    def _ae(cls, value: str) -> str:
        # Leading and trailing spaces are not significant (PS3.5 §6.2), and the proxy reads
        # the request's called AE without them: the route's title is compared so too.
        return _ae_title(value).strip(" ")


class DicomSettings(Model):
    """l7-dicom: how the proxy reads the client's A-ASSOCIATE-RQ before it picks a server."""

    routes: list[AERoute] = Field(
        default_factory=list, description="called AE title -> real servers; none = any server"
    )
    unknown_called_ae: Literal["reject", "any"] = Field(
        "reject",
        description="with routes: a called AE no route names is refused with A-ASSOCIATE-RJ "
        "(called-AE-not-recognised), or balanced over all servers ('any')",
    )
    request_timeout: Seconds = Field(
        10.0, description="seconds a client has to send its whole A-ASSOCIATE-RQ (then A-ABORT)"
    )
    max_request: int = Field(
        65536,
        ge=74,
        le=1 << 20,
        description="bytes an A-ASSOCIATE-RQ may have; a longer one is refused unread",
    )
    drain_limit: float = Field(
        3600.0,
        ge=0,
        le=7 * 86400,
        description="seconds a drained server's associations may run on before they are ended "
        "with A-ABORT; 0 = until the client releases them",
    )


class VirtualService(Model):
    label: Label
    vip: IPAddress
    ports: list[Port] = Field(
        min_length=1, description="e.g. [4000, 5000], '4000,5000', '8000-8010'"
    )
    protocol: Literal["tcp", "udp"] = Field("tcp", description="udp only for layer 4 modes")
    mode: Mode
    scheduler: SchedulerName = SchedulerName.WLC
    persistence: Persistence = Field(default_factory=NoPersistence)
    health_check: HealthCheck = Field(default_factory=ConnectCheck)
    fallback: Fallback | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    passive: PassiveHealth = Field(default_factory=PassiveHealth)
    tls: TlsTermination | None = None
    dicom: DicomSettings | None = Field(None, description="l7-dicom only; unset = the defaults")
    source: str = Field(
        "auto",
        description="l7 modes: the source address of connections to the real servers: 'auto' "
        "(the load balancer's own address towards the server, chosen by the kernel), 'vip', "
        "'client' (transparent: the client's own address; the servers' gateway must be the "
        "load balancer) or a fixed local address",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="l7 modes: client connections this service may hold in each proxy worker; "
        "at the limit it stops accepting (clients wait in the kernel's queue) until one closes."
        " 0 = a fair share of the worker's descriptor limit among the l7 services",
    )
    real_servers: list[RealServer] = Field(default_factory=list)

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        return parse_ports(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value in SOURCE_KINDS:
            return value
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(
                f"{value!r} is not 'auto', 'vip', 'client' or an IP address of this node"
            ) from None


def _network(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an address or network (10.0.0.0/24)") from None
    return value


IPNetwork = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]


class WebUI(Model):
    """The WebUI, REST API and /metrics (HTTPS), served by the control process."""

    enabled: bool = Field(True, description="serve the WebUI and REST API")
    listen: str = Field(
        "0.0.0.0:9443",
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+|[\w.-]+):\d{1,5}$",
        description="address:port, e.g. 0.0.0.0:9443 or [::]:9443",
    )
    certificate: Path | None = Field(None, description="PEM; unset = a generated self-signed one")
    key: Path | None = None
    session_lifetime: int = Field(
        8 * 3600, ge=60, le=7 * 86400, description="seconds a login lasts (default: one shift)"
    )
    metrics_allow: list[IPNetwork] = Field(
        default_factory=list,
        description="networks that may read /metrics without a token (e.g. the Prometheus host)",
    )
    sample_interval: float = Field(
        10.0, ge=1, le=300, description="seconds between samples for the Reports graphs"
    )
    # 4 MiB: the whole config of 1,000 services (four real servers each) is 1.1 MB as the API
    # returns it and 1.8 MB pretty-printed, so this leaves twice that; a larger body is refused
    # (413) before it is read, so no caller can make the control process hold or parse more.
    max_body: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="largest request body in bytes (413 above it, before it is read)",
    )
    trusted_proxies: list[IPNetwork] = Field(
        default_factory=list,
        description="reverse proxies whose X-Forwarded-For names the client, for the login "
        "limit and metrics_allow; empty = the header is ignored",
    )

    def address(self) -> tuple[str, int]:
        """(host, port) of `listen`; brackets of an IPv6 address removed."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class FloatingAddress(Model):
    """An address that moves with the active node besides the VIPs: the real servers' default
    gateway of l4-nat services (the guide: "this IP address should be a floating IP address")."""

    address: str = Field(
        pattern=r"^[0-9A-Fa-f:.]+/\d{1,3}$",
        description="address/prefix on the real servers' segment, e.g. 10.0.1.1/24",
    )
    interface: str | None = Field(None, description="unset = node.ha.interface")

    @field_validator("address")
    @classmethod
    def _interface_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_interface(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an address/prefix such as 10.0.1.1/24") from None


class HASettings(Model):
    """This node's part in an HA pair (keepalived VRRP, unicast). Never replicated: each node
    has its own; `secret` must be the same on every node of the pair."""

    enabled: bool = False
    interface: str | None = Field(None, description="the interface VRRP adverts use")
    address: IPAddress | None = Field(
        None,
        description="this node's own address for VRRP and state sync; unset = the "
        "interface's first address",
    )
    peers: list[IPAddress] = Field(
        default_factory=list, description="the other nodes' addresses (unicast VRRP, no multicast)"
    )
    virtual_router_id: int = Field(51, ge=1, le=255)
    priority: int = Field(100, ge=1, le=254, description="the higher wins the floating addresses")
    advert_int: float = Field(
        1.0, ge=0.01, le=255, description="seconds between VRRP adverts (below 1: VRRPv3)"
    )
    preempt: bool = Field(
        False,
        description="take the addresses back when this node returns with the higher priority "
        "(off: the active node stays active until it fails or is told to hand over)",
    )
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=256,
        description="shared by the nodes of the pair: authenticates VRRP and state sync",
    )
    gateways: list[FloatingAddress] = Field(
        default_factory=list, description="floating addresses besides the VIPs (NAT gateway)"
    )
    sync_port: Port = Field(9445, description="UDP port of state sync between the nodes")

    @model_validator(mode="before")
    @classmethod
    def _one_peer(cls, value: Any) -> Any:
        """`peer: ADDR` (one peer, the earlier reserved spelling) = `peers: [ADDR]`."""
        if isinstance(value, dict) and "peer" in value:
            value = dict(value)
            peer = value.pop("peer")
            if peer is not None:
                value.setdefault("peers", [peer])
        return value


class ProxySettings(Model):
    """The built-in l7 proxy's processes on this node."""

    workers: int = Field(
        default_factory=lambda: default_workers(os.cpu_count()),
        ge=1,
        le=64,
        description="proxy processes sharing every port (SO_REUSEPORT); by default 2 on a "
        "host with two or more cores (1 otherwise), so that one worker's crash costs only the "
        "connections it held while the other serves on",
    )
    spare: bool = Field(
        True,
        description="keep one idle worker started ahead, so that a crashed or hung worker is "
        "replaced in milliseconds rather than after a process start (costs one idle process, "
        "about 40 MB)",
    )


def default_workers(cpus: int | None) -> int:
    """Two workers wherever two cores can run them: a crashed or hung worker is then half the
    listeners, and the kernel deals new connections to the other while it is replaced."""
    return 2 if (cpus or 1) >= 2 else 1


class Node(Model):
    """Settings of this node, never replicated to an HA peer."""

    webui: WebUI = Field(default_factory=WebUI)
    state_dir: Path = Path("/var/lib/pacslb")
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    ha: HASettings | None = None
    alerts: AlertSettings | None = Field(
        None, description="alerts by email, syslog and webhook (docs/alerts.md); unset = none"
    )


class Config(Model):
    version: Literal[1] = 1
    node: Node = Field(default_factory=Node)
    virtual_services: list[VirtualService] = Field(default_factory=list)

    def service(self, label: str) -> VirtualService | None:
        return next((s for s in self.virtual_services if s.label == label), None)


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema written to docs/schema.json (also what the REST API publishes)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pacslb configuration"
    return schema
