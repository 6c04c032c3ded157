"""The first-run wizard's pure core: its form fields -> a ready deployment's services as data,
and the validator's problems -> messages on those fields.

The deployment's knowledge (labels, ports, modes, checks, persistence) stays in the profile
(profiles/mckesson.py); the wizard only collects the addresses an operator types, one field
per VIP and per real server, and puts every message where the operator typed the value:
`virtual_services[1].real_servers[0].address` is the field `rip_web_1`, and a VIP:port clash
(`virtual_services[2].ports`; the ports are the profile's, the VIP was typed) is told on the
VIP. No I/O: control/wizard.py validates, shows and applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pacslb.errors import Problem
from pacslb.profiles import mckesson

ROWS = 4  # real server fields offered per service; blank ones are left out
DICOM_CHECKS = ("connect", "echo")  # the profile's: TCP connect (the guide's) or C-ECHO
VARIANT_MODE = "same as the variant"  # the DICOM service's mode: the variant's, or the profile's
DICOM_MODES = (VARIANT_MODE, *mckesson.DICOM_MODES)  # others (l7-dicom: AE-title routing)
# What the operator picks on the first page: a McKesson variant, in the guide's words.
VARIANT_TITLES = {
    "dr": "Direct Routing (l4-dr): the guide's recommended mode; each real server holds the "
    "VIPs on its loopback (the page after this one says how)",
    "nat-l7": "NAT + Layer 7: Layer 4 NAT for DICOM, Web and Cardiology (the load balancer is "
    "the real servers' gateway), the proxy with cookie persistence for Manager and the Viewer",
    "proxy": "Layer 7 proxy only: every service through the built-in proxy; the real servers "
    "need no change",
}
_PATH = re.compile(r"^virtual_services\[(\d+)\](?:\.(\w+))?(?:\[(\d+)\])?(?:\.(\w+))?")


def vip_field(key: str) -> str:
    return f"vip_{key}"


def rip_field(key: str, row: int) -> str:
    """Rows count from 1, as the labels the profile gives (Radiology_Web_Srv1)."""
    return f"rip_{key}_{row}"


@dataclass(frozen=True, slots=True)
class WizardForm:
    """What the operator typed, as typed (blanks kept, so each row keeps its field)."""

    variant: str
    vips: dict[str, str]
    rips: dict[str, tuple[str, ...]]  # ROWS entries per service key
    dicom_check: str = "connect"
    called_ae: str = ""
    dicom_mode: str = VARIANT_MODE

    @classmethod
    def parse(cls, variant: str, fields: Mapping[str, str]) -> WizardForm:
        """From the submitted fields; ValueError for a variant or check no form offers."""
        if variant not in mckesson.VARIANTS:
            raise ValueError(f"unknown deployment {variant!r}")
        check = fields.get("dicom_check", "connect")
        if check not in DICOM_CHECKS:
            raise ValueError(f"unknown DICOM check {check!r}")
        dicom_mode = fields.get("dicom_mode", VARIANT_MODE)
        if dicom_mode not in DICOM_MODES:
            raise ValueError(f"unknown DICOM mode {dicom_mode!r}")
        keys = mckesson.SERVICE_KEYS
        return cls(
            variant,
            {k: fields.get(vip_field(k), "").strip() for k in keys},
            {
                k: tuple(fields.get(rip_field(k, r), "").strip() for r in range(1, ROWS + 1))
                for k in keys
            },
            check,
            fields.get("called_ae", "").strip(),
            dicom_mode,
        )

    def fields(self) -> dict[str, str]:
        """Every field with its value: the review page carries them to the apply."""
        out = {vip_field(k): v for k, v in self.vips.items()}
        for key, rows in self.rips.items():
            out |= {rip_field(key, r): v for r, v in enumerate(rows, start=1)}
        out |= {"dicom_check": self.dicom_check, "called_ae": self.called_ae}
        return out | {"dicom_mode": self.dicom_mode}


@dataclass(frozen=True, slots=True)
class Built:
    """The services the form gives, where each real server came from, and the fields left
    empty that must not be."""

    services: list[dict[str, Any]]
    rows: dict[str, list[int]]  # service key -> the form row of each real server, in order
    missing: dict[str, str] = field(default_factory=dict)


def build(form: WizardForm) -> Built:
    rows = {k: [r for r, v in enumerate(form.rips[k], start=1) if v] for k in form.rips}
    missing: dict[str, str] = {}
    for key in mckesson.SERVICE_KEYS:
        if not form.vips[key]:
            missing[vip_field(key)] = "enter the virtual service's IP address (VIP)"
        if not rows[key]:
            missing[rip_field(key, 1)] = "enter at least one real server's IP address"
    options: dict[str, Any] = {"dicom_check": form.dicom_check}
    if form.called_ae:
        options["called_ae"] = form.called_ae
    if form.dicom_mode != VARIANT_MODE:
        options["dicom_mode"] = form.dicom_mode
    services = mckesson.services(
        form.variant,
        form.vips,
        {k: [v for v in form.rips[k] if v] for k in form.rips},
        **options,
    )
    return Built(services, rows, missing)


def config_data(running: Mapping[str, Any], services: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The running config (as data) with the wizard's services after any it has: the node's
    own settings are kept as they are."""
    data = dict(running)
    data["virtual_services"] = [*running.get("virtual_services", []), *services]
    return data


def field_errors(
    problems: Sequence[Problem], built: Built, first: int = 0
) -> tuple[dict[str, str], list[str]]:
    """Each problem on the wizard's field it is about (by path; the wizard's services start at
    `first` in the config), the rest (the node's settings, services it did not make) as a list.
    A field left empty keeps its own message: "'' is not a valid address" would say less."""
    errors = dict(built.missing)
    other: list[str] = []
    keys = mckesson.SERVICE_KEYS
    for p in problems:
        name = _field_of(p.path, built, first, keys)
        if name is None:
            other.append(str(p))
        elif name not in built.missing:
            errors[name] = f"{errors[name]}; {p.message}" if name in errors else p.message
    return errors, other


def _field_of(path: str, built: Built, first: int, keys: Sequence[str]) -> str | None:
    m = _PATH.match(path)
    if m is None or not first <= int(m[1]) < first + len(keys):
        return None
    key, part, index, sub = keys[int(m[1]) - first], m[2], m[3], m[4]
    if part in ("vip", "ports"):  # a clash on a VIP:port: the ports are the profile's
        return vip_field(key)
    if part == "real_servers" and index is not None and int(index) < len(built.rows[key]):
        return rip_field(key, built.rows[key][int(index)])
    if part == "health_check" and sub == "called_ae":
        return "called_ae"
    return None
