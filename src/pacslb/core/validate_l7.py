"""Validation of the l7 modes' own settings: an upstream `source:` and the l7-dicom settings.

Kept apart from core/validate.py, which checks the config's shape and the rules every service
shares; these are the rules of two features a service opts into.
"""

from __future__ import annotations

import ipaddress

from pacslb import config as c
from pacslb.core.wording import did_you_mean
from pacslb.errors import Problem

__all__ = ["dicom_problems", "source_problems"]


def source_problems(base: str, vs: c.VirtualService) -> list[Problem]:
    """`source:` (proxy/source.py). Whether a fixed address is up on this node is doctor's
    question, not the config's: in an HA pair it may float to this node only later."""
    source = vs.source
    if source == "auto":
        return []
    where = f"{base}.source"
    if vs.mode.is_kernel:
        return [
            Problem(
                where,
                f"source needs an l7 mode, not {vs.mode}: l4-nat keeps the client's address "
                "already, and l4-snat uses the load balancer's",
            )
        ]
    if source == "vip" and vs.vip.is_unspecified:
        return [Problem(where, f"source vip needs a specific VIP, not {vs.vip}")]
    if source == "client":
        own = None if vs.vip.is_unspecified else vs.vip.version  # the clients' family
        what = "a transparent connection keeps the client's address, whose family is the VIP's"
    elif source == "vip":
        own, what = vs.vip.version, "connections from the VIP"
    else:
        address = ipaddress.ip_address(source)
        if address.is_unspecified or address.is_multicast:
            return [Problem(where, f"{source} cannot be a source address; use auto")]
        own, what = address.version, f"connections from {source}"
    out = []
    servers = [(f"{base}.real_servers[{j}]", rs.address) for j, rs in enumerate(vs.real_servers)]
    if vs.fallback is not None:
        servers.append((f"{base}.fallback", vs.fallback.address))
    for path, address in servers:
        if own is not None and address.version != own:
            out.append(
                Problem(
                    f"{path}.address",
                    f"source {source}: {what} (IPv{own}), cannot reach an IPv{address.version} "
                    f"server ({address}); use source auto, or servers of the same family",
                )
            )
    return out


def dicom_problems(base: str, vs: c.VirtualService) -> list[Problem]:
    """The l7-dicom settings: only with that mode, and routes that name the service's servers."""
    mode = vs.mode
    out: list[Problem] = []
    dicom = mode is c.Mode.L7_DICOM
    if isinstance(vs.persistence, c.CallingAEPersistence) and not dicom:
        out.append(
            Problem(
                f"{base}.persistence.type",
                f"calling-ae needs mode l7-dicom (the proxy reads the AE title), not {mode}",
            )
        )
    if vs.dicom is not None and not dicom:
        out.append(Problem(f"{base}.dicom", f"DICOM settings need mode l7-dicom, not {mode}"))
    for j, rs in enumerate(vs.real_servers):
        if rs.ae_title is not None and not dicom:
            out.append(
                Problem(
                    f"{base}.real_servers[{j}].ae_title",
                    f"an AE title rewrite needs mode l7-dicom, not {mode}",
                )
            )
    if dicom and vs.fallback is not None:
        out.append(
            Problem(
                f"{base}.fallback",
                "l7-dicom has no fallback server: with no real server the client gets "
                "A-ASSOCIATE-RJ (transient), which a modality retries; an archive it did not "
                "call must not take its images",
            )
        )
    if vs.dicom is None:
        return out
    labels = {rs.label for rs in vs.real_servers}
    seen: dict[str, int] = {}
    for j, route in enumerate(vs.dicom.routes):
        path = f"{base}.dicom.routes[{j}]"
        if route.called_ae in seen:
            out.append(
                Problem(
                    f"{path}.called_ae",
                    f"{route.called_ae!r} is already routed by routes[{seen[route.called_ae]}]",
                )
            )
        seen.setdefault(route.called_ae, j)
        for k, label in enumerate(route.real_servers):
            if label not in labels:
                hint = did_you_mean(label, sorted(labels))
                message = f"no real server {label!r} in this service{hint}"
                out.append(Problem(f"{path}.real_servers[{k}]", message))
    return out
