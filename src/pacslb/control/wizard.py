"""The WebUI's first-run wizard: a ready deployment from a few addresses, as one revision.

Three pages of plain forms (no script needed), admin only, each POST with the session's CSRF
token: pick a deployment (/wizard), type the VIPs and real servers (/wizard/addresses), see
the resulting config file and what the real servers must do (/wizard/review), apply
(/wizard/apply). Nothing is kept between the pages but the form's own fields: the review page
carries them, and the apply builds and validates the config again from them, so what is applied
is what the operator saw, checked against the config then in force.

The apply is an ordinary change (ControlProcess.apply_config, as an edit on any other page or
the REST API): one revision, the config file edited in place, refused whole with the
validator's messages on the fields, refused on the passive node of an HA pair and replicated
by the active one. The config it makes comes from the profile (profiles/mckesson.py), the
field mapping from core/wizard.py.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from pacslb import config as c
from pacslb.control.api import Admin, file_exists, process_of
from pacslb.control.auth import Principal
from pacslb.control.doctor import reach
from pacslb.control.store import ConfigConflict, HandEdited, StorageError
from pacslb.control.webui import back, done_url, form_of, page
from pacslb.core import realserver
from pacslb.core import wizard as w
from pacslb.core.validate import dump_data, load_data
from pacslb.engines.host import Host
from pacslb.errors import ConfigError
from pacslb.profiles import mckesson

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

router = APIRouter(include_in_schema=False)
SOURCE = "first-run wizard"


def _locked(process: ControlProcess) -> str:
    """Why this node refuses changes now (the passive node of an HA pair, a split brain), in
    the HA guard's own words; "" when it takes them. Asked of the guard itself
    (control/replica.py), so the page says what the apply would meet."""
    try:
        process.replica.refuse_if_not_allowed(replicated=False)
    except ConfigConflict as exc:
        return str(exc)
    return ""


def _context(process: ControlProcess, **more: Any) -> dict[str, Any]:
    return {
        "nav": "overview",
        "existing": len(process.config.virtual_services),
        "locked": _locked(process),
        **more,
    }


@router.get("/wizard", response_class=HTMLResponse)
async def choose(request: Request, who: Admin) -> Response:
    process = process_of(request)
    return page(request, who, "wizard.html", titles=w.VARIANT_TITLES, **_context(process))


def dicom_mode_words(variant: str, mode: str, title: str) -> dict[str, str]:
    """The DICOM service's legend and line while its mode is the operator's choice on the
    page (server-side words, no script): what each choice gives, from the profile itself."""
    chosen = mckesson.services(variant, {}, {}, dicom_mode="l7-dicom")[0]
    persistence = chosen.get("persistence", {})
    other = (
        f"{chosen['mode']}: the proxy reads the association, {persistence.get('type', 'no')} "
        f"persistence{' ' + str(persistence['timeout']) + ' s' if 'timeout' in persistence else ''}"
    )
    return {"mode": "mode as chosen below", "title": f"{mode} (the variant's): {title}; {other}"}


def _addresses_page(
    request: Request, who: Principal, form: w.WizardForm, status: int = 200, **more: Any
) -> Response:
    """The address form: per service (the profile's label, mode, ports), its VIP and rows."""
    process = process_of(request)
    shape = mckesson.services(form.variant, {}, {})
    services = [
        {"key": spec.key, "title": spec.title, "label": svc["label"], "mode": svc["mode"]}
        | {"ports": svc["ports"], "vip": w.vip_field(spec.key)}
        | {"rows": [w.rip_field(spec.key, r) for r in range(1, w.ROWS + 1)]}
        for spec, svc in zip(mckesson.SERVICES, shape, strict=True)
    ]
    for service in services:
        if service["key"] == "dicom":  # its Mode select may change the mode: claim none
            service |= dicom_mode_words(form.variant, service["mode"], service["title"])
    context = _context(process, services=services, form=form, values=form.fields())
    context |= {"variant_title": w.VARIANT_TITLES[form.variant], "checks": w.DICOM_CHECKS}
    context |= {"dicom_modes": w.DICOM_MODES}
    context |= {"errors": {}, "other": []} | more
    return page(request, who, "wizard_addresses.html", status, **context)


@router.get("/wizard/addresses", response_class=HTMLResponse)
async def addresses(request: Request, who: Admin, variant: str = "proxy") -> Response:
    if variant == "empty":  # the node has the empty config: services are added one by one
        return back("/services/new")
    try:
        form = w.WizardForm.parse(variant, {})
    except ValueError:
        return back("/wizard")
    return _addresses_page(request, who, form)


@router.post("/wizard/addresses", response_class=HTMLResponse)
async def change_addresses(request: Request, who: Admin) -> Response:
    """Back from the review page: the address form as the operator left it."""
    fields = await form_of(request)
    try:
        form = w.WizardForm.parse(fields.get("variant", ""), fields)
    except ValueError:
        return back("/wizard")
    return _addresses_page(request, who, form)


async def _checked(
    request: Request, who: Principal
) -> tuple[w.WizardForm, dict[str, Any], c.Config] | Response:
    """The form's config, validated against the running one; or the address page again with
    each problem on its field (422), nothing applied."""
    process = process_of(request)
    fields = await form_of(request)
    try:
        form = w.WizardForm.parse(fields.get("variant", ""), fields)
    except ValueError:
        return back("/wizard")
    built = w.build(form)
    data = w.config_data(dump_data(process.config), built.services)
    exists = file_exists(process)
    try:
        config = await asyncio.to_thread(load_data, data, SOURCE, exists)
        problems: tuple[Any, ...] = ()
    except ConfigError as exc:
        problems = exc.problems
    if problems or built.missing:
        first = len(process.config.virtual_services)
        errors, other = w.field_errors(problems, built, first)
        return _addresses_page(request, who, form, 422, errors=errors, other=other)
    return form, data, config


@router.post("/wizard/review", response_class=HTMLResponse)
async def review(request: Request, who: Admin) -> Response:
    checked = await _checked(request, who)
    if isinstance(checked, Response):
        return checked
    return await _review_page(request, who, *checked)


async def _review_page(
    request: Request,
    who: Principal,
    form: w.WizardForm,
    data: dict[str, Any],
    config: c.Config,
    status: int = 200,
    **more: Any,
) -> Response:
    """The config file as the apply will write it (the running file edited in place, as any
    change), and the real servers' set-up for Linux and Windows (`pacslb realserver`)."""
    process = process_of(request)
    text = await process.preview_text(config, SOURCE)
    gateways = await asyncio.to_thread(_gateways, realserver.nat_servers(config))
    setup = {os: _realserver_text(config, os, gateways) for os in ("linux", "windows")}
    context = _context(process, form=form, values=form.fields(), yaml=text, setup=setup)
    context |= {"variant_title": w.VARIANT_TITLES[form.variant], "errors": {}, "other": []}
    return page(request, who, "wizard_review.html", status, **(context | more))


def _gateways(nat: list[realserver.NatServer]) -> dict[str, str]:
    """This host's address on each l4-nat real server's segment (its routing table's answer),
    where it has one: the gateway those servers need."""
    host, out = Host(), {}
    for server in nat:
        r = reach(server.address, host)
        if r.source and not (r.gateway or r.local or r.error):
            out[server.address] = r.source
    return out


def _realserver_text(config: c.Config, os: str, gateways: dict[str, str]) -> str:
    return realserver.for_config(
        realserver.dr_servers(config),
        os,
        "eth0",
        "net",
        "loopback",
        nat=realserver.nat_servers(config),
        gateways=gateways,
        snat=realserver.snat_services(config),
        proxied=realserver.proxied_services(config),
    )


@router.post("/wizard/apply")
async def apply(request: Request, who: Admin) -> Response:
    checked = await _checked(request, who)
    if isinstance(checked, Response):
        return checked
    form, data, config = checked
    process = process_of(request)
    comment = f"{SOURCE}: McKesson Radiology and Cardiology, variant {form.variant}"
    try:
        await process.apply_config(data, comment, by=who.name)
    except ConfigError as exc:  # the config changed since the review: say so on the fields
        built = w.build(form)
        errors, other = w.field_errors(exc.problems, built, len(process.config.virtual_services))
        return _addresses_page(request, who, form, 422, errors=errors, other=other)
    except (StorageError, ConfigConflict) as exc:  # refused whole (passive node, hand edit...)
        status = 409 if isinstance(exc, ConfigConflict) else 507 if exc.disk_full else 500
        broken = isinstance(exc, HandEdited) and exc.broken
        refused = {"refused": str(exc), "refused_broken": broken}
        return await _review_page(request, who, form, data, config, status, **refused)
    what = f"McKesson Radiology and Cardiology ({form.variant})"
    return back(done_url("/", "added", what))
