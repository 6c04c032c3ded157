"""Write docs/configuration.md from the config models (src/pacslb/config.py).

The models are the one statement of the config file (DESIGN: the file, the REST bodies and
docs/schema.json are the same models); this renders their fields, types, limits, defaults and
descriptions as Markdown, so the reference cannot drift from the code. A test
(tests/unit/test_docs.py) fails when the committed file differs from what this prints.

    python scripts/config_reference.py > docs/configuration.md     (make docs-config)
    python scripts/config_reference.py --check                      (exit 1 when stale)
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pacslb import config as c
from pacslb import config_alerts as ca

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

# (heading, model, where it sits in the file): the order a reader meets them.
SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("The file", c.Config, "the top level"),
    ("node", c.Node, "`node`"),
    ("node.webui", c.WebUI, "`node.webui`"),
    ("node.proxy", c.ProxySettings, "`node.proxy`"),
    ("node.ha", c.HASettings, "`node.ha` (the HA pair: see [ha.md](ha.md))"),
    ("node.ha.gateways[]", c.FloatingAddress, "each item of `node.ha.gateways`"),
    ("node.alerts", ca.AlertSettings, "`node.alerts` (see [alerts.md](alerts.md))"),
    ("node.alerts.email", ca.EmailAlerts, "`node.alerts.email`"),
    ("node.alerts.syslog", ca.SyslogAlerts, "`node.alerts.syslog`"),
    ("node.alerts.webhook", ca.WebhookAlerts, "`node.alerts.webhook`"),
    ("virtual_services[]", c.VirtualService, "each item of `virtual_services`"),
    ("real_servers[]", c.RealServer, "each item of a service's `real_servers`"),
    ("dicom", c.DicomSettings, "a service's `dicom` (l7-dicom: see [dicom.md](dicom.md))"),
    ("dicom.routes[]", c.AERoute, "each item of `dicom.routes`"),
    ("fallback", c.Fallback, "a service's `fallback`"),
    ("timeouts", c.Timeouts, "a service's `timeouts`"),
    ("passive", c.PassiveHealth, "a service's `passive`"),
    ("tls", c.TlsTermination, "a service's `tls` (l7-http)"),
    ("tls.certificates[]", c.CertificatePair, "each item of `tls.certificates`"),
    ("persistence: none", c.NoPersistence, "a service's `persistence`, `type: none`"),
    ("persistence: source-ip", c.SourceIPPersistence, "`persistence`, `type: source-ip`"),
    ("persistence: http-cookie", c.CookiePersistence, "`persistence`, `type: http-cookie`"),
    ("persistence: calling-ae", c.CallingAEPersistence, "`persistence`, `type: calling-ae`"),
    ("health_check: connect", c.ConnectCheck, "`health_check`, `type: connect`"),
    ("health_check: http", c.HttpCheck, "`health_check`, `type: http`"),
    ("health_check: dicom-echo", c.DicomEchoCheck, "`health_check`, `type: dicom-echo`"),
    ("health_check: external", c.ExternalCheck, "`health_check`, `type: external`"),
    ("health_check: all", c.AllChecks, "`health_check`, `type: all`"),
    ("health_check: none", c.NoCheck, "`health_check`, `type: none`"),
]


def reachable(root: type[BaseModel]) -> dict[type[BaseModel], str]:
    """Every model a config can hold, with the first key path where a reader meets it."""
    found: dict[type[BaseModel], str] = {root: ""}

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type):
            return [annotation] if issubclass(annotation, BaseModel) else []
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]

    queue = [root]
    while queue:  # bounded: each model is visited once
        model = queue.pop(0)
        for name, field in model.model_fields.items():
            many = typing.get_origin(field.annotation) is list
            path = f"{found[model]}.{name}".lstrip(".") + ("[]" if many else "")
            for inner in models_in(field.annotation):
                if inner not in found:
                    found[inner] = path
                    queue.append(inner)
    return found


def all_sections() -> list[tuple[str, type[BaseModel], str]]:
    """SECTIONS, then every model the config reaches that SECTIONS forgot, under its key path:
    a model added to config.py is in the reference before anyone writes it a heading."""
    listed = {model for _, model, _ in SECTIONS}
    forgotten = [
        (f"{path} ({model.__name__})", model, f"`{path}`")
        for model, path in reachable(c.Config).items()
        if model not in listed
    ]
    return SECTIONS + forgotten


ANCHORS = {model: heading for heading, model, _ in all_sections()}

# Fields whose meaning the models do not spell out in a description (enums, addresses).
EXTRA = {
    (c.Config, "version"): "the file format's version",
    (c.VirtualService, "label"): "the service's name (unique); 1-64 letters, digits, `_ - .`",
    (c.VirtualService, "vip"): "the virtual IP address clients connect to",
    (c.VirtualService, "mode"): "how traffic is carried (layer 4 in the kernel, or the proxy)",
    (c.VirtualService, "scheduler"): "how a new connection picks a real server",
    (c.RealServer, "label"): "the server's name (unique in its service); as `label` above",
    (c.RealServer, "address"): "the real server's IP address",
    (c.Fallback, "address"): "the sorry server's address",
    (c.Fallback, "port"): "unset = the port the client connected to",
    (c.Node, "state_dir"): "revisions, admin states, events, logins, certificates, sockets",
    (c.HASettings, "enabled"): "this node is one of an HA pair",
    (c.HASettings, "virtual_router_id"): "VRRP router id, the same on both nodes",
    (c.WebUI, "key"): "PEM private key of `certificate`; unset = inside the certificate",
    (c.AllChecks, "checks"): "checks (connect, http, dicom-echo, external); all must pass",
    (c.TlsTermination, "certificates"): "the first is the default; others are chosen by SNI",
    (c.AERoute, "called_ae"): "the AE title the client calls (leading/trailing spaces ignored)",
}


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def link(model: type[BaseModel]) -> str:
    heading = ANCHORS[model]
    return f"[{heading}](#{anchor(heading)})"


def type_text(annotation: Any) -> str:
    """A reader's name for a Python annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        ips = {ipaddress.IPv4Address, ipaddress.IPv6Address}
        nets = {ipaddress.IPv4Network, ipaddress.IPv6Network}
        if set(members) == ips:
            return "IP address"
        if set(members) == nets:
            return "network (`10.0.0.0/24`) or address"
        texts = [type_text(a) for a in members]
        return " or ".join(dict.fromkeys(texts))
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " ".join(f"`{m.value}`" for m in annotation)
        if issubclass(annotation, BaseModel):
            return link(annotation) if annotation in ANCHORS else annotation.__name__
        if issubclass(annotation, Path):
            return "path"
        names = {bool: "true/false", int: "integer", float: "number", str: "text"}
        return names.get(annotation, annotation.__name__)
    return str(annotation)


def limits(field: FieldInfo) -> str:
    """ge/le/length/pattern constraints, from the field and from its Annotated item type."""
    found: list[str] = []
    metadata = list(field.metadata)
    infos = [field]
    for arg in typing.get_args(field.annotation):
        if isinstance(arg, FieldInfo):
            infos.append(arg)
        for inner in typing.get_args(arg):  # list[Annotated[int, Field(ge=1)]]
            if isinstance(inner, FieldInfo):
                infos.append(inner)
    metadata += [item for info in infos[1:] for item in info.metadata]
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            found.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            found.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.MinLen):
            found.append(f"at least {item.min_length} long")
        elif isinstance(item, annotated_types.MaxLen):
            found.append(f"at most {item.max_length} long")
    for info in infos:
        if isinstance(info.json_schema_extra, dict):
            found += schema_limits(info.json_schema_extra)
    return ", ".join(dict.fromkeys(found))


def schema_limits(extra: dict[str, Any]) -> list[str]:
    """Lengths a validator checks with its own message, stated to the schema (config.AETitle)."""
    low, high = extra.get("minLength"), extra.get("maxLength")
    if low is not None and high is not None:
        return [f"{low}-{high} characters"]
    return [f"at least {low} long"] if low is not None else []


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    factory = field.default_factory
    if factory is not None:
        if factory is list:
            return "`[]`"
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            discriminator = factory.model_fields.get("type")
            if discriminator is not None and discriminator.default is not PydanticUndefined:
                return f"`type: {discriminator.default}`"
            return "its defaults"
        return "computed (see the description)"  # e.g. workers: depends on the host's cores
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(heading: str, model: type[BaseModel], where: str) -> str:
    lines = [f"## {heading}", ""]
    doc = (model.__doc__ or "").strip()
    if doc and not doc.startswith("Base:") and model is not c.Config:
        lines += [" ".join(doc.split()), ""]
    lines += [f"Where: {where}.", ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = field.description or EXTRA.get((model, name), "")
        bounds = limits(field)
        if bounds:
            meaning = f"{meaning} ({bounds})" if meaning else bounds
        row = [f"`{name}`", type_text(field.annotation), default_text(field), meaning]
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


def render() -> str:
    head = """\
# Configuration reference

<!-- Generated by scripts/config_reference.py from src/pacslb/config.py: do not edit by hand.
     `make docs-config` writes it again; tests/unit/test_docs.py fails when it is stale. -->

One YAML file (`/etc/pacslb/pacslb.yaml` when installed; any path given to `pacslb run`).
Unknown keys are errors, with "did you mean". `pacslb check FILE` lists every problem at once;
`pacslb schema` prints the same rules as a JSON Schema (`docs/schema.json`), which the REST API
publishes too. Settings under `node` belong to this node and are never replicated to an HA peer.

Ports accept `[4000, 5000]`, `"4000,5000"` and ranges `"8000-8010"`. Durations are seconds.
Rules that relate several fields or services (port translation in Direct Routing, a VIP:port
used twice, ...) are checked by `pacslb check` beyond the per-field limits listed here.

"""
    sections = all_sections()
    toc = "".join(f"- [{h}](#{anchor(h)})\n" for h, _, _ in sections)
    body = "\n".join(section(h, m, w) for h, m, w in sections)
    return head + toc + "\n" + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run `make docs-config`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
