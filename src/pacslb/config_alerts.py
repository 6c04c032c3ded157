"""The `node.alerts` models: where alerts go (email, syslog, webhook) and which events alert.

A node setting, never replicated to an HA peer: the guide lists the SMTP relay among the
settings each node keeps for itself. Secrets (the SMTP password, a webhook's bearer token)
are named by a file path, never written in the config: the config is kept as revisions, shown
by the WebUI and the API and replicated in part, and a password in it would travel with them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Port = Annotated[int, Field(ge=1, le=65535)]
Timeout = Annotated[float, Field(gt=0, le=300)]
# Every channel retries a delivery that failed for a passing reason (core/alert_outbox.py)
Retries = Annotated[
    int,
    Field(
        ge=0,
        le=10,
        description="attempts after a passing failure (refused, reset, timeout, SMTP 4xx, "
        "HTTP 5xx/408/429); other messages go out meanwhile",
    ),
]
Backoff = Annotated[
    float,
    Field(gt=0, le=300, description="seconds before the first retry, doubled for each next"),
]

# An address as RFC 5321 carries it (local@domain), not every RFC 5322 form: a relay given a
# display name or a comment in MAIL FROM refuses it, and the error would come only at 3 a.m.
_MAILBOX = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}@[A-Za-z0-9.\-]{1,253}$")
_HOST = re.compile(r"^([A-Za-z0-9.\-]{1,253}|[0-9A-Fa-f:.]+)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.6.2 token
# RFC 5424 §6.2.5: APP-NAME is 1-48 PRINTUSASCII (33-126)
_APP_NAME = re.compile(r"^[\x21-\x7e]{1,48}$")

Topic = Literal["health", "admin", "engine", "ha", "certificate"]
ALERT_TOPICS: tuple[Topic, ...] = get_args(Topic)
# RFC 5424 §6.2.1 table 1, in code order (0..23)
Facility = Literal[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]  # fmt: skip
FACILITIES: tuple[str, ...] = get_args(Facility)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


def _host(value: str) -> str:
    value = value.strip()
    if not _HOST.match(value):
        raise ValueError(f"{value!r} is not a host name or address")
    return value


class EmailAlerts(_Model):
    """Mail through the site's SMTP relay (RFC 5321), with STARTTLS (RFC 3207) or implicit
    TLS (RFC 8314) and AUTH (RFC 4954) when the relay asks for them."""

    host: str = Field(description="the SMTP relay's name or address")
    port: Port | None = Field(None, description="unset = 25 (none), 587 (starttls), 465 (tls)")
    security: Literal["none", "starttls", "tls"] = Field(
        "starttls", description="none, starttls (upgrade after EHLO) or tls (implicit, port 465)"
    )
    tls_verify: bool = Field(True, description="verify the relay's certificate and name")
    ca_file: Path | None = Field(None, description="PEM CA bundle; unset = the system's")
    username: str | None = Field(None, min_length=1, description="AUTH user; unset = no AUTH")
    password_file: Path | None = Field(
        None,
        description="file holding the AUTH password (mode 0600), read at each delivery",
        validate_default=True,  # unset is checked too: a username needs it
    )
    sender: str = Field(description="envelope and From address, e.g. pacslb@hospital.example")
    recipients: list[str] = Field(min_length=1, description="To addresses")
    timeout: Timeout = Field(15.0, description="seconds one attempt may take, all steps")
    retries: Retries = 3
    backoff: Backoff = 2.0

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        return _host(value)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _mailbox(value)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_mailbox(v) for v in value]

    # The rules between fields are field validators reading the fields declared before them
    # (info.data holds those that were valid), not a model validator: pydantic runs that only
    # once every field is valid, so `pacslb check` would name these mistakes one pass later.

    @field_validator("username")
    @classmethod
    def _auth_encrypted(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("security") == "none":
            raise ValueError(
                "AUTH over an unencrypted connection would send the password in clear: "
                "use security: starttls or tls"
            )
        return value

    @field_validator("password_file")
    @classmethod
    def _credentials(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "username" in info.data and (info.data["username"] is None) != (value is None):
            raise ValueError("username and password_file go together (AUTH needs both)")
        return value

    def effective_port(self) -> int:
        return self.port or {"none": 25, "starttls": 587, "tls": 465}[self.security]


def _mailbox(value: str) -> str:
    value = value.strip()
    if not _MAILBOX.match(value):
        raise ValueError(f"{value!r} is not a mail address such as pacslb@hospital.example")
    return value


class SyslogAlerts(_Model):
    """Syslog to the local socket (the format glibc's syslog(3) writes, which journald and
    rsyslog parse there) or RFC 5424 to a collector: UDP (RFC 5426), TCP with octet counting
    (RFC 6587 §3.4.1) or TLS (RFC 5425)."""

    transport: Literal["local", "udp", "tcp", "tls"] = Field(
        "local", description="local (the socket below), udp, tcp or tls to `host`"
    )
    socket: Path = Field(Path("/dev/log"), description="transport local: the syslog socket")
    host: str | None = Field(
        None,
        description="the collector (udp, tcp, tls)",
        validate_default=True,  # unset is checked too: a collector's transport needs it
    )
    port: Port | None = Field(None, description="unset = 514 (udp, tcp), 6514 (tls)")
    tls_verify: bool = Field(True, description="tls: verify the collector's certificate")
    ca_file: Path | None = Field(None, description="tls: PEM CA bundle; unset = the system's")
    facility: Facility = Field(
        "daemon", description="RFC 5424 facility, e.g. daemon, local0 … local7"
    )
    app_name: str = Field(
        "pacslb", description="RFC 5424 APP-NAME, the TAG on the local socket (1-48 visible ASCII)"
    )
    timeout: Timeout = Field(5.0, description="seconds one attempt may take")
    retries: Retries = 3
    backoff: Backoff = 2.0

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str | None, info: ValidationInfo) -> str | None:
        transport = info.data.get("transport", "local")  # before the host, as _credentials
        if value is None and transport != "local":
            raise ValueError(f"transport {transport} needs the collector's host")
        return None if value is None else _host(value)

    @field_validator("app_name")
    @classmethod
    def _app(cls, value: str, info: ValidationInfo) -> str:
        if not _APP_NAME.match(value):
            raise ValueError(f"{value!r}: APP-NAME is 1-48 visible ASCII characters, no spaces")
        if info.data.get("transport", "local") == "local" and any(ch in value for ch in ":[]"):
            # the local format's TAG ends at ':' or '[' (TAG[PID]: MSG)
            raise ValueError(f"app_name {value!r}: no ':', '[' or ']' with transport local")
        return value

    def effective_port(self) -> int:
        return self.port or (6514 if self.transport == "tls" else 514)


class WebhookAlerts(_Model):
    """An HTTP POST of the alert as JSON (retried with back-off, as every channel)."""

    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", description="an http:// or https:// URL")
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra request headers (no secrets: see token_file)"
    )
    token_file: Path | None = Field(
        None, description="file holding a bearer token, sent as 'Authorization: Bearer …'"
    )
    tls_verify: bool = Field(True, description="verify the receiver's certificate")
    ca_file: Path | None = Field(None, description="PEM CA bundle; unset = the system's")
    timeout: Timeout = Field(10.0, description="seconds one attempt may take")
    retries: Retries = 3
    backoff: Backoff = 2.0

    @field_validator("url")
    @classmethod
    def _no_userinfo(cls, value: str) -> str:
        if "@" in value.split("/", 3)[2]:
            raise ValueError(
                "no user or password in the url: the config is shown and kept as "
                "revisions; put a bearer token in token_file"
            )
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name (an RFC 9110 token)")
            if name.lower() in ("authorization", "proxy-authorization", "cookie"):
                raise ValueError(f"{name}: a credential does not go in the config: use token_file")
            if any(ch in text for ch in "\r\n\0"):
                raise ValueError(f"header {name}: a value must not hold CR, LF or NUL")
        return value


class AlertSettings(_Model):
    """Alerts that reach a person: grouped, rate-limited, to email, syslog and a webhook."""

    email: EmailAlerts | None = Field(None, description="mail through an SMTP relay")
    syslog: SyslogAlerts | None = Field(
        None, description="syslog: the local socket, or RFC 5424 to a collector"
    )
    webhook: WebhookAlerts | None = Field(None, description="an HTTP POST of JSON")
    events: list[Topic] = Field(
        default_factory=lambda: list(ALERT_TOPICS),
        description="what alerts: health (server down/up), admin (drain/halt/online), engine "
        "(apply failures), ha (role changes), certificate (expiry); default: all of them",
    )
    group_window: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="seconds changes are gathered into one message (a rack going down: one "
        "mail listing the servers); 0 = a message for each change",
    )
    rate_limit: int = Field(
        30,
        ge=0,
        le=10000,
        description="messages a channel may send an hour; beyond it changes are held and sent "
        "as one summary when it allows again; 0 = no limit",
    )
    queue: int = Field(
        100, ge=1, le=10000, description="messages a channel holds while it is slow or down"
    )
    certificate_days: list[Annotated[int, Field(ge=1, le=3650)]] = Field(
        default_factory=lambda: [30, 7, 1],
        description="days before a certificate expires that it alerts (the WebUI's, services' "
        "tls); default: 30, 7, 1",
    )

    def channels(self) -> list[str]:
        return [n for n in ("email", "syslog", "webhook") if getattr(self, n) is not None]
