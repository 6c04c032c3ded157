"""The McKesson Radiology and Cardiology deployment: the guide's five virtual services.

Variants:
- `dr`: every service in Layer 4 Direct Routing (the guide's recommended mode; needs root and an
  interface in the real servers' subnet, and the ARP problem solved on each real server).
- `nat-l7`: Layer 4 NAT for DICOM, Web and Cardiology, and the Layer 7 proxy with HTTP cookie
  persistence for Radiology Manager and the Clinical Reference Viewer (the guide's section 12).
- `proxy`: only the built-in Layer 7 proxy: needs no kernel set-up and no root for ports > 1023.

`dicom_mode="l7-dicom"` (`--dicom-mode l7-dicom`), in any variant, puts the Radiology DICOM
service in the DICOM-aware proxy: persistence by the modality's calling AE title (3600 s, as the
guide's source-IP persistence) and a DICOM C-ECHO check, since a TCP connect to an archive says
little about whether it accepts associations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from pacslb.core.validate import IndentedDumper, load_data

VARIANTS = ("dr", "nat-l7", "proxy")
DICOM_MODES = ("l7-dicom",)  # besides each variant's own mode for the DICOM service
SERVICE_KEYS = ("dicom", "web", "manager", "crv", "cardiology")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    key: str
    label: str
    title: str
    ports: tuple[int, ...]
    persistence_timeout: int  # 0 = none
    check: dict[str, Any]
    example_vip: str
    example_rips: tuple[str, str]  # last octets differ per variant: see _example_rips


SERVICES = (
    ServiceSpec(
        "dicom",
        "McK-Radiology_DICOM",
        "Radiology DICOM (image archive): source-IP persistence 3600 s, check on port 5000",
        (4000, 5000),
        3600,
        {"type": "connect", "port": 5000},
        "192.168.85.30",
        ("200", "201"),
    ),
    ServiceSpec(
        "web",
        "McK-Radiology_Web",
        "Radiology Web: no persistence, GET /wpp/srvpacs.asp expecting 'srvPACS OK'",
        (80,),
        0,
        {"type": "http", "port": 80, "path": "/wpp/srvpacs.asp", "expect": "srvPACS OK"},
        "192.168.85.31",
        ("202", "203"),
    ),
    ServiceSpec(
        "manager",
        "McK-RadiologyManager",
        "Radiology Manager: persistence 300 s, GET /cis/index.html expecting 'OK'",
        (80,),
        300,
        {"type": "http", "port": 80, "path": "/cis/index.html", "expect": "OK"},
        "192.168.85.40",
        ("210", "211"),
    ),
    ServiceSpec(
        "crv",
        "McK-ClinicalReferenceViewer",
        "Clinical Reference Viewer: persistence 300 s, GET /McKessonEmiCRV/Ping.aspx for 'OK'",
        (80,),
        300,
        {"type": "http", "port": 80, "path": "/McKessonEmiCRV/Ping.aspx", "expect": "OK"},
        "192.168.85.41",
        ("212", "213"),
    ),
    ServiceSpec(
        "cardiology",
        "McK-Cardiology",
        "Cardiology: ports 80 and 443, persistence 14400 s, HTTP check on port 80",
        (80, 443),
        14400,
        {"type": "http", "port": 80, "path": "/"},
        "192.168.85.50",
        ("220", "221"),
    ),
)

# Mode per service and variant (the guide's section 12 for nat-l7).
_MODES: Mapping[str, Mapping[str, str]] = {
    "dr": dict.fromkeys(SERVICE_KEYS, "l4-dr"),
    "nat-l7": {
        "dicom": "l4-nat",
        "web": "l4-nat",
        "manager": "l7-http",
        "crv": "l7-http",
        "cardiology": "l4-nat",
    },
    # Cardiology carries 443 through as TCP (as HAProxy `mode tcp` would): its TLS stays end to end.
    "proxy": {
        "dicom": "l7-tcp",
        "web": "l7-http",
        "manager": "l7-http",
        "crv": "l7-http",
        "cardiology": "l7-tcp",
    },
}


def _example_rips(spec: ServiceSpec, variant: str) -> list[str]:
    # DR real servers share the VIPs' segment; behind NAT or a proxy they sit on a server subnet.
    prefix = "192.168.85." if variant == "dr" else "10.10.0."
    return [prefix + octet for octet in spec.example_rips]


def service_config(
    spec: ServiceSpec,
    variant: str,
    vip: str,
    rips: Sequence[str],
    dicom_check: str = "connect",
    called_ae: str = "ANY-SCP",
    dicom_mode: str | None = None,
) -> dict[str, Any]:
    mode = _MODES[variant][spec.key]
    if spec.key == "dicom" and dicom_mode is not None:
        mode = dicom_mode
    persistence: dict[str, Any] = {"type": "none"}
    if mode == "l7-http" and spec.persistence_timeout:
        persistence = {"type": "http-cookie", "cookie": "PACSLB_SERVER"}
    elif mode == "l7-dicom" and spec.persistence_timeout:
        persistence = {"type": "calling-ae", "timeout": spec.persistence_timeout}
    elif spec.persistence_timeout:
        persistence = {"type": "source-ip", "timeout": spec.persistence_timeout}
    check = dict(spec.check)
    if spec.key == "dicom" and (dicom_check == "echo" or mode == "l7-dicom"):
        check = {"type": "dicom-echo", "port": 5000, "called_ae": called_ae}
    service: dict[str, Any] = {
        "label": spec.label,
        "vip": vip,
        "ports": list(spec.ports),
        "mode": mode,
        "scheduler": "wlc",
        "persistence": persistence,
        "health_check": check,
        "real_servers": [
            {"label": f"{spec.label.removeprefix('McK-')}_Srv{i}", "address": addr, "weight": 100}
            for i, addr in enumerate(rips, start=1)
        ],
    }
    return service


def build(
    variant: str,
    vips: Mapping[str, str] | None = None,
    rips: Mapping[str, Sequence[str]] | None = None,
    dicom_check: str = "connect",
    called_ae: str = "ANY-SCP",
    state_dir: str | None = None,
    webui_listen: str | None = None,
    dicom_mode: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The config as data, and the keys whose addresses are the guide's examples."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose {', '.join(VARIANTS)})")
    if dicom_mode is not None and dicom_mode not in DICOM_MODES:
        raise ValueError(f"unknown DICOM mode {dicom_mode!r} (choose {', '.join(DICOM_MODES)})")
    vips, rips = vips or {}, rips or {}
    unknown = sorted((set(vips) | set(rips)) - set(SERVICE_KEYS))
    if unknown:
        raise ValueError(f"unknown service {unknown[0]!r} (choose {', '.join(SERVICE_KEYS)})")
    examples = []
    services = []
    for spec in SERVICES:
        if spec.key not in vips or spec.key not in rips:
            examples.append(spec.key)
        services.append(
            service_config(
                spec,
                variant,
                vips.get(spec.key, spec.example_vip),
                rips.get(spec.key) or _example_rips(spec, variant),
                dicom_check,
                called_ae,
                dicom_mode,
            )
        )
    node: dict[str, Any] = {}
    if webui_listen:
        node["webui"] = {"listen": webui_listen}
    if state_dir:
        node["state_dir"] = state_dir
    data: dict[str, Any] = {"version": 1}
    if node:
        data["node"] = node
    data["virtual_services"] = services
    load_data(data, "mckesson profile")  # the profile must always pass `pacslb check`
    return data, examples


def render(
    data: Mapping[str, Any], variant: str, examples: Sequence[str], dicom_check: str = "connect"
) -> str:
    """YAML that reads like the guide: a header, then one commented block per service."""
    dicom = data["virtual_services"][0]  # SERVICES[0]
    if dicom["mode"] == "l7-dicom":
        extra = ", DICOM service in l7-dicom"
    else:
        extra = ", DICOM C-ECHO check" if dicom_check == "echo" else ""
    lines = [
        f"# pacslb: McKesson Radiology and Cardiology (variant {variant}{extra})",
        "# Generated by `pacslb profile mckesson`; check it with `pacslb check FILE`.",
    ]
    if examples:
        lines += [
            "# NOTE: the addresses of these services are the deployment guide's EXAMPLES: replace",
            f"#       them with your own before use: {', '.join(examples)}",
            "#       (or pass --vip KEY=ADDR --rip KEY=ADDR,ADDR).",
        ]
    head = {k: v for k, v in data.items() if k != "virtual_services"}
    out = "\n".join(lines) + "\n" + _dump(head, flow=False) + "virtual_services:\n"
    for service, spec in zip(data["virtual_services"], SERVICES, strict=True):
        out += f"  # {_L7_DICOM_TITLE if service['mode'] == 'l7-dicom' else spec.title}\n"
        out += "".join("  " + ln + "\n" for ln in _dump([service]).splitlines())
    return out


_L7_DICOM_TITLE = (
    "Radiology DICOM (image archive), DICOM-aware: persistence by calling AE title 3600 s, "
    "C-ECHO check on port 5000"
)


def _dump(value: Any, flow: bool | None = None) -> str:
    # flow=None: block style outside, `{a: 1}` for leaf mappings, as the DESIGN example reads.
    text: str = yaml.dump(
        value, Dumper=IndentedDumper, sort_keys=False, default_flow_style=flow, width=4096
    )
    return text


def services(
    variant: str, vips: Mapping[str, str], rips: Mapping[str, Sequence[str]], **options: Any
) -> list[dict[str, Any]]:
    """The five services as data with exactly these addresses, in SERVICES order, not yet
    validated: no example address fills a gap (the WebUI's first-run wizard, control/wizard.py,
    validates them beside the node's own settings and names each empty field). `options` are
    service_config's (dicom_check, called_ae...)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose {', '.join(VARIANTS)})")
    return [
        service_config(spec, variant, vips.get(spec.key, ""), rips.get(spec.key, ()), **options)
        for spec in SERVICES
    ]
