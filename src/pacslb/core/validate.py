"""Config validation: every problem at once, each with its path and a plain message.

Pure: YAML text or a parsed mapping in, a Config or a ConfigError out. The one question that
needs the file system (does a TLS file exist?) is answered by a callable the caller passes in.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pacslb import config as c
from pacslb import config_alerts as ca
from pacslb.core.validate_alerts import alert_file_problems
from pacslb.core.validate_l7 import dicom_problems, source_problems
from pacslb.core.wording import did_you_mean, format_path, located, plain
from pacslb.errors import ConfigError, Problem

__all__ = ["dump_text", "format_path", "load_data", "load_text", "parse_yaml"]

FileExists = Callable[[Path], bool]

# DICOM TLS (PS3.15 Annex B) is terminated by the proxy so that it can read the A-ASSOCIATE-RQ.
_TLS_MODES = (c.Mode.L7_HTTP, c.Mode.L7_DICOM)

# Field name (or tagged-union tag) in an error location -> the model found there; used to list
# the settings allowed where an unknown one was written.
_CHECK_TAGS: dict[str, type[BaseModel]] = {
    "connect": c.ConnectCheck,
    "http": c.HttpCheck,
    "dicom-echo": c.DicomEchoCheck,
    "external": c.ExternalCheck,
    "all": c.AllChecks,
    "none": c.NoCheck,
}
_PERSISTENCE_TAGS: dict[str, type[BaseModel]] = {
    "none": c.NoPersistence,
    "source-ip": c.SourceIPPersistence,
    "http-cookie": c.CookiePersistence,
    "calling-ae": c.CallingAEPersistence,
}
_MODEL_AT: dict[str, type[BaseModel]] = {
    "node": c.Node,
    "webui": c.WebUI,
    "ha": c.HASettings,
    "proxy": c.ProxySettings,
    "virtual_services": c.VirtualService,
    "real_servers": c.RealServer,
    "fallback": c.Fallback,
    "timeouts": c.Timeouts,
    "tls": c.TlsTermination,
    "certificates": c.CertificatePair,
    "dicom": c.DicomSettings,
    "routes": c.AERoute,
    "alerts": ca.AlertSettings,
    "email": ca.EmailAlerts,
    "syslog": ca.SyslogAlerts,
    "webhook": ca.WebhookAlerts,
}
_UNION_FIELDS = {
    "health_check": _CHECK_TAGS,
    "checks": _CHECK_TAGS,
    "persistence": _PERSISTENCE_TAGS,
}


# --- YAML --------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one, and a
    doubled `real_servers:` block that quietly replaces the first is an outage waiting to happen."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str = "") -> Any:
    """YAML text -> plain data, or ConfigError naming the line and column."""
    return parse_yaml_node(text, source)[0]


def parse_yaml_node(text: str, source: str = "") -> tuple[Any, yaml.Node | None]:
    """YAML text -> plain data and its node tree (whose marks give each setting's line)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        message = str(exc.problem or exc)
        if mark is None:
            raise ConfigError([Problem("", f"not valid YAML: {message}")], source) from None
        where = f"column {mark.column + 1}: {message}"
        raise ConfigError([Problem("", where, line=mark.line + 1)], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"not valid YAML: {exc}")], source) from None
    finally:
        loader.dispose()


EMPTY = (
    "the file holds no settings (it is empty, or only comments): a config starts with "
    "`version: 1`; to run with no virtual services, write `virtual_services: []`"
)


def load_text(text: str, source: str = "", file_exists: FileExists | None = None) -> c.Config:
    """YAML text -> a valid Config, or ConfigError listing every problem with its line."""
    data, node = parse_yaml_node(text, source)
    if data is None:
        # An emptied file (a failed `show > FILE`, a full disk, a truncated copy) is the most
        # common bad file: read as a config with no services, a reload would stop every one.
        raise ConfigError([Problem("", EMPTY)], source)
    return load_data(data, source, file_exists, node=node)


def dump_data(config: c.Config) -> dict[str, Any]:
    """The config as plain data holding only what differs from the defaults (what an operator
    would have written), each health check and persistence keeping its `type` tag."""
    data: dict[str, Any] = {"version": config.version}
    data.update(config.model_dump(mode="json", exclude_defaults=True))
    for vs, raw in zip(config.virtual_services, data.get("virtual_services", []), strict=True):
        for name in ("health_check", "persistence"):
            if name in raw:
                raw[name] = {"type": getattr(vs, name).type, **raw[name]}
        check = vs.health_check
        if isinstance(check, c.AllChecks) and "checks" in raw.get("health_check", {}):
            raw["health_check"]["checks"] = [
                {"type": sub.type, **dumped}
                for sub, dumped in zip(check.checks, raw["health_check"]["checks"], strict=True)
            ]
    return data


class IndentedDumper(yaml.SafeDumper):
    """Nested lists indented under their key (`real_servers:` then `  - ...`), as the top-level
    list is: one indentation throughout, which is what core/yaml_edit keeps when it edits a
    file (a file that mixes both is re-indented by its first edit)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


class _Dumper(IndentedDumper):
    """Lays YAML out as DESIGN.md's examples do: nested lists indented, short lists and
    mappings of plain values on one line (`ports: [4000, 5000]`, `- {label: Srv1, ...}`)."""


def flow_style(value: list[Any] | dict[str, Any]) -> bool:
    """Whether a list or mapping is written on one line (`ports: [4000, 5000]`): plain values
    only, and short. Shared by dump_text and core/yaml_edit, so that both lay a config out
    alike."""
    items = value.values() if isinstance(value, dict) else value
    plain = all(v is None or isinstance(v, str | int | float | bool) for v in items)
    return plain and len(str(value)) < 80


def _represent_list(dumper: _Dumper, data: list[Any]) -> Any:
    flow = flow_style(data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: _Dumper, data: dict[str, Any]) -> Any:
    flow = flow_style(data)
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def dump_text(data: dict[str, Any] | c.Config) -> str:
    """YAML text for a config (or its plain data) in the order of the models."""
    if isinstance(data, c.Config):
        data = dump_data(data)
    return str(yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100))


# --- structure ---------------------------------------------------------------------------


def _strip_tags(
    loc: Sequence[int | str], root: type[BaseModel] = c.Config
) -> tuple[list[int | str], type[BaseModel] | None]:
    """Drop the tag pydantic inserts after a tagged-union field; return the model at the parent
    (`root` is the model the location starts from: Config, or VirtualService for a service)."""
    out: list[int | str] = []
    model: type[BaseModel] | None = root
    union: dict[str, type[BaseModel]] | None = None
    for part in loc:
        if union is not None and isinstance(part, str) and part in union:
            model, union = union[part], None
            continue
        if isinstance(part, str):
            union = _UNION_FIELDS.get(part)
            model = _MODEL_AT.get(part, model) if union is None else None
        out.append(part)
    return out, model


# Where each kind of setting lives, in words: to answer a setting written at the wrong level.
_PLACES: dict[str, tuple[str, type[BaseModel]]] = {
    "": ("the top level", c.Config),
    "node": ("node", c.Node),
    "webui": ("node.webui", c.WebUI),
    "ha": ("node.ha", c.HASettings),
    "proxy": ("node.proxy", c.ProxySettings),
    "virtual_services": ("a virtual service", c.VirtualService),
    "real_servers": ("a real server", c.RealServer),
    "fallback": ("a service's fallback", c.Fallback),
    "timeouts": ("a service's timeouts", c.Timeouts),
    "tls": ("a service's tls", c.TlsTermination),
    "certificates": ("tls.certificates", c.CertificatePair),
    "dicom": ("a service's dicom", c.DicomSettings),
    "routes": ("dicom.routes", c.AERoute),
    "alerts": ("node.alerts", ca.AlertSettings),
    "email": ("node.alerts.email", ca.EmailAlerts),
    "syslog": ("node.alerts.syslog", ca.SyslogAlerts),
    "webhook": ("node.alerts.webhook", ca.WebhookAlerts),
    **{f"check:{t}": ("a health check", m) for t, m in _CHECK_TAGS.items()},
    **{f"persistence:{t}": (f"{t} persistence", m) for t, m in _PERSISTENCE_TAGS.items()},
}


def _unknown_setting(name: str, model: type[BaseModel] | None) -> str:
    """An unknown key, answered with the keys allowed where it was written and a hint: where a
    setting of that very name belongs (a line indented at the wrong level), else the closest
    key here, else the closest key anywhere."""
    allowed = sorted(model.model_fields) if model else []
    listing = f" (allowed here: {', '.join(allowed)})" if allowed else ""
    elsewhere = [(w, set(m.model_fields)) for w, m in _PLACES.values() if m is not model]
    homes = list(dict.fromkeys(w for w, fields in elsewhere if name in fields))
    hint = f"; {name!r} is a setting of {' or '.join(homes)}, not here" if homes else ""
    hint = hint or did_you_mean(name, allowed)
    if not hint:
        close = difflib.get_close_matches(name, {f for _, fs in elsewhere for f in fs}, n=1)
        if close:
            homes = list(dict.fromkeys(w for w, fields in elsewhere if close[0] in fields))
            hint = f"; did you mean {close[0]!r} (a setting of {' or '.join(homes)}, not here)?"
    return f"unknown setting {name!r}{hint}{listing}"


def _description(loc: Sequence[int | str], root: type[BaseModel]) -> str | None:
    """The description a field is declared with, to word a pattern that has no words yet."""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None
    model = _strip_tags(loc[: len(loc) - 1 - loc[::-1].index(names[-1])], root)[1]
    field = model.model_fields.get(names[-1]) if model else None
    return field.description if field else None


def _message(
    error: Any, loc: Sequence[int | str], root: type[BaseModel]
) -> tuple[list[int | str], str]:
    kind = error["type"]
    clean = _strip_tags(loc, root)[0]
    if kind == "extra_forbidden" and clean:
        return clean, _unknown_setting(str(clean[-1]), _strip_tags(loc[:-1], root)[1])
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        written = error["input"].get("type")
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        hint = did_you_mean(written, tags)
        return clean, f"unknown type {written!r}{hint} (choose one of {', '.join(tags)})"
    if kind == "union_tag_not_found":
        return clean, "a 'type' is required here"
    return clean, plain(error, _description(loc, root))


_INTERNAL = re.compile(r"[\w-]+")  # field names and union tags; pydantic's own steps are not


def _structure_problems(
    exc: ValidationError,
    prefix: Sequence[int | str] = (),
    root: type[BaseModel] = c.Config,
) -> tuple[list[Problem], list[list[int | str]]]:
    """Problems with paths, and the tag-free locations (relative to prefix) for patching."""
    problems: list[Problem] = []
    locs: list[list[int | str]] = []
    for error in exc.errors(include_url=False):
        loc = [
            p
            for p in error["loc"]
            if isinstance(p, int) or (_INTERNAL.fullmatch(p) and not p.startswith("function-"))
        ]
        clean, message = _message(error, loc, root)
        problem = Problem(format_path([*prefix, *clean]), message)
        if problem in problems:  # one address, refused by both the IPv4 and the IPv6 parser
            continue
        problems.append(problem)
        locs.append(clean if error["type"] != "missing" else clean[:-1])
    return problems, locs


_PLACEHOLDER_VIP = {4: "192.0.2.1", 6: "2001:db8::1"}  # documentation ranges, never bound


def _patched_service(
    raw: Any, locs: list[list[int | str]]
) -> tuple[dict[str, Any], set[str]] | None:
    """A copy of a service with each invalid part removed (defaults apply) or neutralised, so that
    its remaining rules can still be checked; None when too little is left to judge.

    Returns the copy and the names of top-level fields that hold placeholders (excluded from the
    cross-service rules)."""
    if not isinstance(raw, dict):
        return None
    service: dict[str, Any] = copy.deepcopy(raw)
    placeholders: set[str] = set()
    dropped: dict[str, set[int]] = {}
    for loc in locs:
        if not loc or loc[0] == "mode":
            return None
        if loc[0] == "label":
            service["label"] = "unnamed"
            placeholders.add("label")
        elif loc[0] == "vip":
            family = (
                6
                if any(":" in str(rs.get("address", "")) for rs in _dicts(raw, "real_servers"))
                else 4
            )
            service["vip"] = _PLACEHOLDER_VIP[family]
            placeholders.add("vip")
        elif loc[0] in ("health_check", "persistence"):
            # Neutral rather than the default, whose own rules would add noise (e.g. a check port).
            service[str(loc[0])] = {"type": "none"}
        elif len(loc) >= 2 and loc[0] in ("real_servers", "ports") and isinstance(loc[1], int):
            if len(loc) == 2 or loc[2] in ("label", "address"):
                dropped.setdefault(str(loc[0]), set()).add(loc[1])
            else:
                _delete(service, loc)
        else:
            _delete(service, loc)
    for key, indexes in dropped.items():
        if isinstance(service.get(key), list):
            service[key] = [v for i, v in enumerate(service[key]) if i not in indexes]
    return service, placeholders


def _dicts(raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = raw.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _delete(data: Any, loc: Sequence[int | str]) -> None:
    """Remove the deepest existing key along loc (a list item's field, a setting)."""
    parent, last = None, None
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and (isinstance(part, int) and 0 <= part < len(node))
        ):
            parent, last, node = node, part, node[part]  # type: ignore[index]
        else:
            break
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and isinstance(last, int):
        parent[last] = None


def load_data(
    data: Any,
    source: str = "",
    file_exists: FileExists | None = None,
    node: yaml.Node | None = None,
) -> c.Config:
    """Plain data -> a valid Config, or ConfigError listing every structural and rule problem,
    each named by label and (given the YAML `node` the data came from) with its line.

    Services are parsed one by one, and a service with a structural mistake is checked again with
    that part removed, so that one typo does not hide the other mistakes: the operator sees the
    whole list in one go.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem("", "the config must be a mapping of settings")], source)
    problems: list[Problem] = []
    root = {k: v for k, v in data.items() if k != "virtual_services"}
    try:
        problems += node_problems(c.Config.model_validate(root).node, file_exists)
    except ValidationError as exc:
        found, _ = _structure_problems(exc)
        problems += found
        settings = root.get("node")
        if file_exists is not None and isinstance(settings, dict):  # named in this pass too
            refused = {p.path for p in found}
            problems += alert_file_problems(settings.get("alerts"), file_exists, refused)

    raw_services = data.get("virtual_services") or []
    if not isinstance(raw_services, list):
        problems.append(Problem("virtual_services", "must be a list of virtual services"))
        raw_services = []
    checked: list[tuple[int, c.VirtualService, set[str]]] = []
    for index, raw in enumerate(raw_services):
        try:
            checked.append((index, c.VirtualService.model_validate(raw), set()))
            continue
        except ValidationError as exc:
            found, locs = _structure_problems(exc, ("virtual_services", index), c.VirtualService)
            problems += found
        patched = _patched_service(raw, locs)
        if patched is not None:
            # Too broken to judge further when this fails: its structural problems are listed.
            with contextlib.suppress(ValidationError):
                checked.append((index, c.VirtualService.model_validate(patched[0]), patched[1]))

    for index, service, _ in checked:
        problems += service_problems(index, service, file_exists)
    problems += cross_service_problems(checked)
    if problems:
        raise ConfigError(sorted(located(problems, data, node), key=_order), source)
    return c.Config.model_validate(data)


def _order(problem: Problem) -> tuple[Any, ...]:
    """Node settings first, then service by service, each in the file's order when it came
    from a file (a stable sort keeps the order found otherwise)."""
    match = re.match(r"virtual_services\[(\d+)\]", problem.path)
    return (int(match.group(1)) + 1 if match else 0, problem.line or 0)


# --- rules -------------------------------------------------------------------------------


def _ports_text(ports: Iterable[int]) -> str:
    return ", ".join(str(p) for p in ports)


def _check_port_problems(
    path: str, service: c.VirtualService, check: c.HealthCheck, outer_port: int | None = None
) -> list[Problem]:
    """A check needs one port per real server: its own, the server's, or the single VIP port."""
    if isinstance(check, c.NoCheck):
        return []
    if isinstance(check, c.AllChecks):
        out: list[Problem] = []
        for j, sub in enumerate(check.checks):
            out += _check_port_problems(f"{path}.checks[{j}]", service, sub, check.port)
        return out
    if check.port or outer_port or len(service.ports) == 1:
        return []
    portless = [rs.label for rs in service.real_servers if rs.port is None]
    if not portless:
        return []
    return [
        Problem(
            f"{path}.port",
            f"the virtual service listens on several ports ({_ports_text(service.ports)}) and "
            f"real server {portless[0]} sets none: say which port the {check.type} check uses",
        )
    ]


def _dicom_all_tls(vs: c.VirtualService) -> bool:
    """An l7-dicom service whose every port terminates TLS (proxy/dicom_tls.py relays those)."""
    if vs.mode is not c.Mode.L7_DICOM or vs.tls is None:
        return False
    return not vs.tls.ports or set(vs.ports) <= set(vs.tls.ports)


def service_problems(
    index: int, vs: c.VirtualService, file_exists: FileExists | None = None
) -> list[Problem]:
    """Rules inside one virtual service."""
    base = f"virtual_services[{index}]"
    mode = vs.mode
    out: list[Problem] = []

    if len(set(vs.ports)) != len(vs.ports):
        dup = sorted({p for p in vs.ports if vs.ports.count(p) > 1})
        out.append(Problem(f"{base}.ports", f"port {_ports_text(dup)} is listed twice"))
    if vs.protocol == "udp" and not mode.is_kernel:
        out.append(Problem(f"{base}.protocol", f"udp needs a layer 4 mode, not {mode}"))
    if mode.is_kernel and (vs.vip.is_unspecified or vs.vip.is_multicast):
        out.append(Problem(f"{base}.vip", f"{vs.vip} cannot be a layer 4 virtual IP"))
    if mode is c.Mode.L4_DR and vs.vip.version == 6:
        # nftables 1.0.6 mis-assembles a per-flow map key that holds an IPv6 address next to
        # other fields (the key takes bytes of the MAC value; measured): no DR flow table.
        out.append(
            Problem(
                f"{base}.vip",
                "l4-dr over IPv6 is not supported with this nftables (1.0.6); use l4-nat, "
                "l4-snat or l7-tcp for an IPv6 VIP",
            )
        )
    if vs.max_connections and mode.is_kernel:
        out.append(
            Problem(
                f"{base}.max_connections",
                f"a connection budget needs an l7 mode, not {mode} (the kernel holds no "
                "descriptor per connection); set it per real server instead",
            )
        )
    if isinstance(vs.persistence, c.CookiePersistence) and mode is not c.Mode.L7_HTTP:
        out.append(
            Problem(f"{base}.persistence.type", f"http-cookie needs mode l7-http, not {mode}")
        )
    out += dicom_problems(base, vs)
    if vs.tls is not None:
        if mode not in _TLS_MODES:
            out.append(
                Problem(
                    f"{base}.tls", f"TLS termination needs mode l7-http or l7-dicom, not {mode}"
                )
            )
        for port in vs.tls.ports or []:
            if port not in vs.ports:
                out.append(
                    Problem(f"{base}.tls.ports", f"port {port} is not one of the VIP's ports")
                )
        for j, pair in enumerate(vs.tls.certificates):
            for field in ("certificate", "key"):
                path = getattr(pair, field)
                if path is not None and file_exists is not None and not file_exists(path):
                    out.append(
                        Problem(f"{base}.tls.certificates[{j}].{field}", f"no such file: {path}")
                    )

    check = vs.health_check
    if not isinstance(check, c.NoCheck):
        if check.timeout > check.interval:
            out.append(
                Problem(
                    f"{base}.health_check.timeout",
                    f"{check.timeout:g} s is longer than the interval ({check.interval:g} s): "
                    "checks would overlap",
                )
            )
        commands = [check] if isinstance(check, c.ExternalCheck) else []
        if isinstance(check, c.AllChecks):
            commands = [s for s in check.checks if isinstance(s, c.ExternalCheck)]
        for cmd in commands:
            if file_exists is not None and not file_exists(Path(cmd.command)):
                out.append(
                    Problem(f"{base}.health_check", f"external check: no such file {cmd.command}")
                )
    out += _check_port_problems(f"{base}.health_check", vs, check)

    out += _duplicate_labels(
        (
            (j, rs.label, f"real server {j + 1} ({rs.address})")
            for j, rs in enumerate(vs.real_servers)
        ),
        f"{base}.real_servers",
    )
    endpoints: dict[tuple[str, int | None], str] = {}
    for j, rs in enumerate(vs.real_servers):
        path = f"{base}.real_servers[{j}]"
        endpoint = (str(rs.address), rs.port)
        if endpoint in endpoints:
            where = f"{rs.address}" + (f":{rs.port}" if rs.port else "")
            out.append(
                Problem(
                    f"{path}.address",
                    f"{where} is already in this service as real server {endpoints[endpoint]}",
                )
            )
        endpoints.setdefault(endpoint, rs.label)
        if mode is c.Mode.L4_DR and rs.port is not None and vs.ports != [rs.port]:
            out.append(
                Problem(
                    f"{path}.port",
                    f"l4-dr cannot translate ports (VIP port{'s' if len(vs.ports) > 1 else ''} "
                    f"{_ports_text(vs.ports)}, real server port {rs.port}); leave it unset",
                )
            )
        if mode.is_kernel and rs.address.version != vs.vip.version:
            out.append(
                Problem(
                    f"{path}.address",
                    f"{mode} cannot mix IPv4 and IPv6 (VIP {vs.vip}, real server {rs.address})",
                )
            )
        if rs.reencrypt and mode is not c.Mode.L7_HTTP and not _dicom_all_tls(vs):
            why = (
                "re-encryption needs mode l7-http, or l7-dicom with TLS on every port (a "
                "plaintext l7-dicom port relays with splice, which cannot encrypt)"
            )
            out.append(Problem(f"{path}.reencrypt", f"{why}; not {mode}"))
        if rs.min_connections and not rs.max_connections:
            out.append(
                Problem(f"{path}.min_connections", "needs max_connections (the upper threshold)")
            )
        elif rs.max_connections and rs.min_connections > rs.max_connections:
            out.append(
                Problem(
                    f"{path}.min_connections",
                    f"{rs.min_connections} is above max_connections ({rs.max_connections})",
                )
            )

    fb = vs.fallback
    if fb is not None:
        if mode is c.Mode.L4_DR and fb.port is not None and vs.ports != [fb.port]:
            out.append(Problem(f"{base}.fallback.port", "l4-dr cannot translate ports"))
        if mode.is_kernel and fb.address.version != vs.vip.version:
            out.append(Problem(f"{base}.fallback.address", f"{mode} cannot mix IPv4 and IPv6"))
    return out + source_problems(base, vs)


def _duplicate_labels(items: Iterable[tuple[int, str, str]], list_path: str) -> list[Problem]:
    """A label used twice in one list: the later entry is told which earlier one has it
    (items: index, label, how to name that entry without its label)."""
    first: dict[str, str] = {}
    out = []
    for index, label, name in items:
        if label in first:
            out.append(
                Problem(
                    f"{list_path}[{index}].label",
                    f"{label!r} is already the label of {first[label]}: labels must be unique",
                )
            )
        first.setdefault(label, name)
    return out


def cross_service_problems(
    services: Sequence[tuple[int, c.VirtualService, set[str]]],
) -> list[Problem]:
    """Rules across services: unique labels, one service per VIP:port/protocol.

    A VIP:port clash is told on both services, each naming the other: validation cannot know
    which of the two the operator just added or edited, and each one's form must say it.
    The third item of each entry names fields that hold placeholders (skipped here)."""
    out = _duplicate_labels(
        (
            (i, vs.label, f"virtual service {i + 1} (VIP {vs.vip})")
            for i, vs, placeholders in services
            if "label" not in placeholders
        ),
        "virtual_services",
    )
    real = [(i, vs) for i, vs, placeholders in services if "vip" not in placeholders]
    # Two services overlap on the same address, or when one is a proxy listener on the
    # wildcard address of the same family (it would take the other's traffic). Indexes of the
    # services seen so far check each one against the earlier ones in one pass (comparing every
    # pair took minutes for a few thousand services, and the API validates what any readonly
    # caller sends); the first earlier service that overlaps on a shared port is named.
    Ports = dict[int, int]  # port -> position in `real` of the first service that uses it
    by_vip: dict[tuple[str, Any], Ports] = {}
    by_family: dict[tuple[str, int], Ports] = {}
    wildcards: dict[tuple[str, int], Ports] = {}  # proxy listeners on 0.0.0.0 / ::
    told: set[int] = set()
    for pos, (index, vs) in enumerate(real):
        wild = not vs.mode.is_kernel and vs.vip.is_unspecified
        family = (vs.protocol, vs.vip.version)
        tables = [by_vip.get((vs.protocol, vs.vip), {}), wildcards.get(family, {})]
        if wild:
            tables.append(by_family.get(family, {}))
        earlier = [table[p] for table in tables for p in vs.ports if p in table]
        if earlier:
            other_index, other = real[min(earlier)]
            shared = [p for p in vs.ports if p in other.ports]
            for at, here, there in ((index, vs, other), (other_index, other, vs)):
                if at in told:
                    continue
                told.add(at)
                out.append(
                    Problem(
                        f"virtual_services[{at}].ports",
                        f"{ipaddress.ip_address(here.vip)} port {_ports_text(shared)}/"
                        f"{vs.protocol} is already used by the virtual service {there.label} "
                        f"(VIP {there.vip}, ports {_ports_text(there.ports)})",
                    )
                )
        for port in vs.ports:
            by_vip.setdefault((vs.protocol, vs.vip), {}).setdefault(port, pos)
            by_family.setdefault(family, {}).setdefault(port, pos)
            if wild:
                wildcards.setdefault(family, {}).setdefault(port, pos)
    return out


def node_problems(node: c.Node, file_exists: FileExists | None = None) -> list[Problem]:
    out: list[Problem] = []
    if node.ha is not None and node.ha.enabled:
        out += ha_problems(node.ha)
    webui = node.webui
    if not 1 <= webui.address()[1] <= 65535:
        out.append(Problem("node.webui.listen", "the port must be 1-65535"))
    if webui.key is not None and webui.certificate is None:
        out.append(Problem("node.webui.key", "a key needs its certificate"))
    for field in ("certificate", "key"):
        path = getattr(webui, field)
        if path is not None and file_exists is not None and not file_exists(path):
            out.append(Problem(f"node.webui.{field}", f"no such file: {path}"))
    if node.alerts is not None and file_exists is not None:
        out += alert_file_problems(node.alerts.model_dump(), file_exists)
    return out


def ha_problems(ha: c.HASettings) -> list[Problem]:
    """What an enabled HA pair needs before keepalived can be started for it."""
    out: list[Problem] = []
    if not ha.interface:
        out.append(Problem("node.ha.interface", "an HA node needs the interface VRRP adverts use"))
    if not ha.peers:
        out.append(Problem("node.ha.peers", "an HA node needs its peer's address (unicast VRRP)"))
    if ha.secret is None:
        out.append(
            Problem("node.ha.secret", "an HA node needs the pair's shared secret (16+ characters)")
        )
    if ha.address is not None and ha.address in ha.peers:
        out.append(Problem("node.ha.peers", f"{ha.address} is this node's own address"))
    if len(set(ha.peers)) != len(ha.peers):
        out.append(Problem("node.ha.peers", "a peer is listed twice"))
    families = {p.version for p in ha.peers} | ({ha.address.version} if ha.address else set())
    if len(families) > 1:  # one VRRP instance speaks one address family
        out.append(
            Problem("node.ha.peers", "node.ha.address and every peer must be all IPv4 or all IPv6")
        )
    return out
