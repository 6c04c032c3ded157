"""The WebUI: server-rendered pages (Jinja2) over the same ControlProcess calls as the REST API.

Pages work without JavaScript (plain forms with a CSRF field, redirects after POST); app.js only
adds the live System Overview and in-place Drain/Halt/Online. Nothing is fetched from elsewhere.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from pacslb import config as c
from pacslb.control.api import (
    Admin,
    Reader,
    engines_json,
    process_of,
    set_device_cookie,
    set_session_cookie,
)
from pacslb.control.auth import (
    DEVICE_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginRefused,
    Principal,
    RateLimited,
    client_address,
    security,
)
from pacslb.control.doctor import reach
from pacslb.control.events import EVENT_KINDS
from pacslb.control.status import byte_size
from pacslb.control.store import ConfigConflict, HandEdited, StorageError
from pacslb.control.web import WEBUI_DIR
from pacslb.core.auth import Role
from pacslb.core.state import AdminState
from pacslb.core.validate import dump_data
from pacslb.engines.host import Host
from pacslb.errors import ConfigError, Problem

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(WEBUI_DIR / "templates"))
# The choices come from the config model itself: a mode or persistence type added there is
# offered here too (a form that lacks the service's own value would save another one).
MODES = [mode.value for mode in c.Mode]
SCHEDULERS = [name.value for name in c.SchedulerName]
PERSISTENCE_MODELS = {
    model.model_fields["type"].default: model for model in get_args(get_args(c.Persistence)[0])
}
PERSISTENCE = list(PERSISTENCE_MODELS)
# Persistence types with a timeout (source-ip, calling-ae): the form's one timeout field.
TIMED_PERSISTENCE = [
    kind for kind, model in PERSISTENCE_MODELS.items() if "timeout" in model.model_fields
]
CHECKS = [model.model_fields["type"].default for model in get_args(get_args(c.HealthCheck)[0])]
LOG_PAGE = 100  # events on one page of the log


def when(value: Any) -> str:
    """A time as a date an operator reads (UTC, as the log's), from unix seconds, an ISO
    string or a datetime; "" for none."""
    if value is None or value == "":
        return ""
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(value, UTC)
        elif isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.env.filters["when"] = when
templates.env.filters["size"] = byte_size  # as `pacslb status` writes byte counts

# What a redirect after a change says on the page it lands on (`?done=...`): fixed sentences,
# so that a link cannot make the WebUI say anything else; names are filled in escaped.
NOTICES = {
    "added": "Added {what}: revision {revision} is in force.",
    "saved": "Saved {what}: revision {revision} is in force.",
    "deleted": "Deleted {what}: revision {revision} is in force.",
    "drain": "{server} of {service} is draining: no new connections, open ones finish.",
    "halt": "{server} of {service} is halted: no traffic at all.",
    "online": "{server} of {service} is online.",
    "applied": "The current plan was applied again to every engine.",
    "rolledback": "Rolled back: revision {revision} is in force.",
    "unchanged": "Nothing changed: revision {revision} is in force.",
    "demo-fail": "Demo: {server} now fails its health check: watch it turn red, traffic move.",
    "demo-recover": "Demo: {server} answers its health check again: green once enough checks pass.",
}
STATE_WORDS = {  # the word beside each colour: colour alone is not enough
    "up": "up",
    "down": "down",
    "drain": "drain",
    "halt": "halt",
    "unknown": "not checked",
    "partial": "some down",
}


def notice_of(request: Request) -> str:
    params = request.query_params
    text = NOTICES.get(params.get("done", ""))
    if text is None:
        return ""
    service, server = params.get("service", ""), params.get("server", "")
    what = f"{server} of {service}" if server else service or "the change"
    return text.format(
        service=service or "the virtual service",
        server=server,
        what=what,
        revision=process_of(request).revision,
    )


def done_url(path: str, done: str, service: str = "", server: str = "") -> str:
    query = {"done": done, **({"service": service} if service else {})}
    query |= {"server": server} if server else {}
    return f"{path}?{urlencode(query)}"


def page(
    request: Request, who: Principal, name: str, status: int = 200, **context: Any
) -> Response:
    sec = security(request)
    csrf = sec.csrf(who.session) if who.session else ""
    return templates.TemplateResponse(
        request,
        name,
        {
            "who": who,
            "csrf": csrf,
            "is_admin": who.is_admin,
            "notice": notice_of(request),
            "state_words": STATE_WORDS,
            **context,
        },
        status_code=status,
    )


def back(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def form_of(request: Request) -> dict[str, str]:
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.get("/favicon.ico")
async def favicon() -> Response:
    """Browsers ask for it on every page; the icon is an SVG (no login needed)."""
    return FileResponse(WEBUI_DIR / "static/favicon.svg", media_type="image/svg+xml")


# --- login ----------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path on this server (never //elsewhere): no open redirect after login."""
    ok = target and re.fullmatch(r"/[\w\-./]*", target) and not target.startswith("//")
    return target if ok and target else "/"


@router.get("/login")
async def login_page(request: Request, next: str = "/") -> Response:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, "login.html", {"login_csrf": token, "next": _safe_next(next), "error": ""}
    )
    response.set_cookie(LOGIN_COOKIE, token, secure=True, httponly=True, samesite="strict")
    return response


@router.post("/login")
async def login_submit(request: Request) -> Response:
    form = await form_of(request)
    sec = security(request)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    error, status = "", 200
    if not cookie or not secrets.compare_digest(cookie, form.get("csrf_token", "")):
        error, status = "The login form expired; please try again.", 403
    else:
        try:
            session = sec.login(
                form.get("username", ""),
                form.get("password", ""),
                client_address(request),
                request.cookies.get(DEVICE_COOKIE),
            )
        except RateLimited as exc:
            error, status = str(exc), 429
        except LoginRefused as exc:
            error, status = str(exc), 401
        else:
            done = back(_safe_next(form.get("next")))
            set_session_cookie(done, session.id, sec.sessions.lifetime)
            set_device_cookie(done, sec.new_device(session.user))
            done.delete_cookie(LOGIN_COOKIE)
            return done
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"login_csrf": token, "next": _safe_next(form.get("next")), "error": error},
        status_code=status,
    )
    response.set_cookie(LOGIN_COOKIE, token, secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, who: Reader) -> Response:
    if who.session is not None:
        security(request).sessions.end(who.session.id)
    response = back("/login")
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


# --- System Overview ------------------------------------------------------------------------


def colour(rs: dict[str, Any]) -> str:
    """The appliance's colours: green up, red down, blue drain, grey halt, amber not checked."""
    if rs["admin"] == AdminState.HALT:
        return "halt"
    if rs["health"] == "down":
        return "down"
    if rs["admin"] in (AdminState.DRAIN, AdminState.REMOVING):  # removing: draining, then gone
        return "drain"
    return "up" if rs["health"] == "up" else "unknown"


def service_colour(servers: list[dict[str, Any]]) -> str:
    """Red when no real server takes new connections, amber when some are down or not checked
    yet, else green: a drain or halt is the operator's choice, not a fault of the service (and
    "degraded" is the word for a node running its last good revision)."""
    colours = [colour(rs) for rs in servers]
    if not any(c in ("up", "unknown") for c in colours):
        return "down"
    return "partial" if any(c in ("down", "unknown") for c in colours) else "up"


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, who: Reader) -> Response:
    status = process_of(request).status()
    for svc in status["services"]:
        svc["colour"] = service_colour(svc["real_servers"])
        servers = svc["real_servers"]
        svc["active"] = sum((rs["connections"] or {}).get("active", 0) for rs in servers)
        for rs in svc["real_servers"]:
            rs["colour"] = colour(rs)
    from pacslb.control.demo import view

    demo = view(process_of(request))  # `pacslb demo`: a Fail / Recover button per server
    return page(request, who, "overview.html", nav="overview", data=status, demo=demo)


@router.post("/admin-state")
async def admin_state(request: Request, who: Admin) -> Response:
    form = await form_of(request)
    await process_of(request).set_admin(
        form.get("service", ""), form.get("server", ""), AdminState(form["action"]), by=who.name
    )
    return back(done_url("/", form["action"], form.get("service", ""), form.get("server", "")))


# --- virtual services and real servers ------------------------------------------------------

_NUMERIC = re.compile(r"^-?\d+(\.\d+)?$")


def _value(text: str) -> Any:
    """Form text as the YAML an operator would write: numbers as numbers."""
    text = text.strip()
    if _NUMERIC.match(text):
        return float(text) if "." in text else int(text)
    return text


def _put(target: dict[str, Any], key: str, text: str | None) -> None:
    if text is None:
        return
    if text.strip() == "":
        target.pop(key, None)  # empty: the default
    else:
        target[key] = text.strip() if key in TEXT_FIELDS else _value(text)


SERVICE_FIELDS = ["label", "vip", "ports", "mode", "scheduler"]
CHECK_FIELDS = [
    "port",
    "path",
    "expect",
    "called_ae",
    "calling_ae",
    "interval",
    "timeout",
    "rise",
    "fall",
]
# Fields that belong to one kind of check only (the others are common to every kind).
CHECK_KIND_FIELDS = {
    "path": "http",
    "expect": "http",
    "called_ae": "dicom-echo",
    "calling_ae": "dicom-echo",
}
TEXT_FIELDS = {"called_ae", "calling_ae", "ae_title"}  # an AE title "1234" stays text
SERVER_FIELDS = ["label", "address", "port", "weight", "min_connections", "max_connections"]
DICOM_SERVER_FIELDS = ["ae_title"]  # on the form of an l7-dicom service's real server only


def service_from_form(old: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
    """The service as the form leaves it: the existing service's data (every setting the form
    does not show: dicom, source, tls, timeouts, passive, ...) with only the form's fields laid
    over it. A field the form does not send is left as it is."""
    svc = dict(old)
    for key in SERVICE_FIELDS:
        _put(svc, key, form.get(key))
    if isinstance(svc.get("ports"), int):
        svc["ports"] = [svc["ports"]]
    persistence = dict(old.get("persistence", {}))
    kind = form.get("persistence.type", persistence.get("type", "none"))
    if persistence.get("type", "none") != kind:
        persistence = {}
    persistence["type"] = kind
    if kind in TIMED_PERSISTENCE:
        _put(persistence, "timeout", form.get("persistence.timeout"))
    if persistence != {"type": "none"} or "persistence" in old:
        svc["persistence"] = persistence
    check = dict(old.get("health_check", {}))
    kind = form.get("health_check.type", check.get("type", "connect"))
    if check.get("type", "connect") != kind:
        check = {}
    check["type"] = kind
    if kind != "none":
        for key in CHECK_FIELDS:
            if CHECK_KIND_FIELDS.get(key, kind) != kind:
                continue
            _put(check, key, form.get(f"health_check.{key}"))
    svc["health_check"] = check
    return svc


def server_from_form(old: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
    rs = dict(old)  # what the form does not show (reencrypt, ...) stays as it is
    for key in SERVER_FIELDS + DICOM_SERVER_FIELDS:
        _put(rs, key, form.get(key))
    return rs


def field_errors(
    problems: tuple[Problem, ...], prefix: str, known: set[str]
) -> tuple[dict[str, str], list[str]]:
    """Problems under `prefix` by form field (`health_check.path`, `ports`), the rest as a list.

    `virtual_services[2].ports[1]` -> field `ports`; a list index inside a field is dropped."""
    fields: dict[str, str] = {}
    other: list[str] = []
    for p in problems:
        if p.path.startswith(prefix + ".") or p.path == prefix:
            name = re.sub(r"\[\d+\]$", "", p.path[len(prefix) + 1 :])
            if name in known:
                fields[name] = f"{fields[name]}; {p.message}" if name in fields else p.message
                continue
        other.append(str(p))
    return fields, other


def _service_index(process: ControlProcess, label: str) -> int:
    for i, vs in enumerate(process.config.virtual_services):
        if vs.label == label:
            return i
    raise HTTPException(404, f"no virtual service {label!r}")


def dicom_settings(svc: dict[str, Any]) -> c.DicomSettings | None:
    """An l7-dicom service's DICOM settings with the defaults filled in (the page shows them
    read-only); None for another mode, or settings too broken to read (the form's problems
    say why)."""
    if svc.get("mode") != c.Mode.L7_DICOM.value:
        return None
    try:
        return c.DicomSettings.model_validate(svc.get("dicom") or {})
    except ValueError:
        return None


def _form_context(svc: dict[str, Any]) -> dict[str, Any]:
    ports = svc.get("ports", [])
    return {
        "svc": svc,
        "dicom": dicom_settings(svc),
        "timed_persistence": TIMED_PERSISTENCE,
        "timeout_defaults": {  # each type's own default timeout, as the model has it
            kind: str(PERSISTENCE_MODELS[kind].model_fields["timeout"].default)
            for kind in TIMED_PERSISTENCE
        },
        "ports_text": ",".join(str(p) for p in ports) if isinstance(ports, list) else ports,
        "modes": MODES,
        "schedulers": SCHEDULERS,
        "persistences": PERSISTENCE,
        "checks": CHECKS,
        "check_fields": CHECK_KIND_FIELDS,
    }


async def interfaces(svc: dict[str, Any]) -> dict[str, str]:
    """How this host reaches the service's VIP and each real server, in words (its routing
    table, as `pacslb plan --routes` says it): an operator sees which interface each uses."""
    vip = str(svc.get("vip", ""))
    servers = [str(rs.get("address", "")) for rs in svc["real_servers"]]
    kernel = str(svc.get("mode", "")).startswith("l4")

    def look() -> dict[str, str]:
        host = Host()
        out = {vip: reach(vip, host).text(vip=True, kernel=kernel)} if vip else {}
        for address in dict.fromkeys(a for a in servers if a and a not in out):
            out[address] = reach(address, host).text()
        return out

    return await asyncio.to_thread(look)


@router.get("/services/new", response_class=HTMLResponse)
async def new_service(request: Request, who: Reader) -> Response:
    blank = {"mode": "l7-http", "health_check": {"type": "connect"}}
    return page(request, who, "service.html", nav="services", new=True, **_form_context(blank))


def live_service(process: ControlProcess, label: str) -> dict[str, Any] | None:
    """The service as status shows it now (figures), or None when it is not in force yet."""
    return next((s for s in process.status()["services"] if s["label"] == label), None)


@router.get("/services/{label}", response_class=HTMLResponse)
async def edit_service(request: Request, label: str, who: Reader) -> Response:
    process = process_of(request)
    index = _service_index(process, label)
    svc = dump_data(process.config)["virtual_services"][index]
    svc.setdefault("real_servers", [])
    return page(
        request,
        who,
        "service.html",
        nav="overview",  # an existing service is edited from the System Overview
        new=False,
        label=label,
        reached=await interfaces(svc),
        live=live_service(process, label),  # the figures (l7-dicom: associations)
        **_form_context(svc),
    )


async def _apply_form(
    request: Request,
    who: Principal,
    data: dict[str, Any] | str,
    comment: str,
    prefix: str,
    template: str,
    context: dict[str, Any],
    done: str,
) -> Response:
    """Apply a whole config built from a form (plain data, written into the config file's own
    text; or a revision's text); on problems show the page again with each message beside its
    field (422) and nothing changed. A config file edited by hand is named in a box of its
    own (409): the operator must reload or discard that edit first."""
    try:
        result = await process_of(request).apply_config(data, comment, by=who.name)
    except ConfigError as exc:
        errors, other = field_errors(exc.problems, prefix, set(await form_of(request)))
        return page(request, who, template, 422, errors=errors, other=other, **context)
    except HandEdited as exc:
        conflict = {"conflict": str(exc), "conflict_broken": exc.broken}
        return page(request, who, template, 409, errors={}, other=[], **conflict, **context)
    except (StorageError, ConfigConflict) as exc:  # refused whole, with its reason
        status = 409 if isinstance(exc, ConfigConflict) else 507 if exc.disk_full else 500
        return page(request, who, template, status, errors={}, other=[str(exc)], **context)
    if not result["changed"]:  # no revision made: "Saved" would claim one
        return back(done_url(done.split("?", 1)[0], "unchanged"))
    return back(done)


@router.post("/services/new")
async def create_service(request: Request, who: Admin) -> Response:
    form = await form_of(request)
    data = dump_data(process_of(request).config)
    services = data.setdefault("virtual_services", [])
    svc = service_from_form({}, form)
    services.append(svc)
    prefix = f"virtual_services[{len(services) - 1}]"
    comment = f"add virtual service {svc.get('label', '')}"
    context = {"nav": "services", "new": True, **_form_context(svc)}
    done = done_url("/", "added", str(svc.get("label", "")))
    return await _apply_form(request, who, data, comment, prefix, "service.html", context, done)


@router.post("/services/{label}")
async def update_service(request: Request, label: str, who: Admin) -> Response:
    form = await form_of(request)
    process = process_of(request)
    index = _service_index(process, label)
    data = dump_data(process.config)
    svc = service_from_form(data["virtual_services"][index], form)
    data["virtual_services"][index] = svc
    context = {"nav": "overview", "new": False, "label": label, **_form_context(svc)}
    new_label = str(svc.get("label", label))
    return await _apply_form(
        request,
        who,
        data,
        f"change virtual service {label}",
        f"virtual_services[{index}]",
        "service.html",
        context,
        done_url(f"/services/{new_label}", "saved", new_label),
    )


@router.post("/services/{label}/delete")
async def delete_service(request: Request, label: str, who: Admin) -> Response:
    process = process_of(request)
    index = _service_index(process, label)
    data = dump_data(process.config)
    svc = data["virtual_services"].pop(index)
    context = {"nav": "overview", "new": False, "label": label, **_form_context(svc)}
    comment = f"delete virtual service {label}"
    done = done_url("/", "deleted", label)
    return await _apply_form(request, who, data, comment, "", "service.html", context, done)


@router.get("/services/{label}/servers/{server}", response_class=HTMLResponse)
async def edit_server(request: Request, label: str, server: str, who: Reader) -> Response:
    process = process_of(request)
    svc = dump_data(process.config)["virtual_services"][_service_index(process, label)]
    rs = next((r for r in svc.get("real_servers", []) if r["label"] == server), None)
    if rs is None and server != "new":
        raise HTTPException(404, f"{label} has no real server {server!r}")
    live = live_service(process, label) or {}
    figures = next((r for r in live.get("real_servers", []) if r["label"] == server), None)
    return page(
        request,
        who,
        "server.html",
        nav="overview",
        label=label,
        rs=rs or {},
        new=rs is None,
        live=figures,
        dicom=svc.get("mode") == c.Mode.L7_DICOM.value,
    )


@router.post("/services/{label}/servers/{server}")
async def save_server(request: Request, label: str, server: str, who: Admin) -> Response:
    form = await form_of(request)
    process = process_of(request)
    index = _service_index(process, label)
    data = dump_data(process.config)
    service = data["virtual_services"][index]
    servers = service.setdefault("real_servers", [])
    dicom = service.get("mode") == c.Mode.L7_DICOM.value  # the form has the AE title field
    at = next((i for i, r in enumerate(servers) if r["label"] == server), None)
    if at is None and server != "new":
        raise HTTPException(404, f"{label} has no real server {server!r}")
    if form.get("delete"):
        rs = servers.pop(at or 0)
        context = {"nav": "overview", "label": label, "rs": rs, "new": False, "dicom": dicom}
        comment = f"delete {label}/{server}"
        done = done_url(f"/services/{label}", "deleted", label, server)
        return await _apply_form(request, who, data, comment, "", "server.html", context, done)
    rs = server_from_form(servers[at] if at is not None else {}, form)
    if at is None:
        servers.append(rs)
        at = len(servers) - 1
    else:
        servers[at] = rs
    context = {"nav": "overview", "label": label, "rs": rs, "new": server == "new", "dicom": dicom}
    prefix = f"virtual_services[{index}].real_servers[{at}]"
    comment = f"{'add' if server == 'new' else 'change'} real server {label}/{rs.get('label')}"
    done = done_url(
        f"/services/{label}", "added" if server == "new" else "saved", label, str(rs.get("label"))
    )
    return await _apply_form(request, who, data, comment, prefix, "server.html", context, done)


# --- configuration, revisions, logs, reports, tokens ----------------------------------------


@router.get("/config", response_class=HTMLResponse)
async def view_config(request: Request, who: Reader) -> Response:
    process = process_of(request)
    rulesets = []
    for engine in process.engines:
        render = getattr(engine, "ruleset_text", None)  # the kernel engine offers its nftables
        if callable(render):
            try:
                text = str(await asyncio.to_thread(render))  # nft's lock: off the loop
                if text.strip():  # no Layer 4 service, no tables: no empty box either
                    rulesets.append((engine.name, text))
            except Exception as exc:  # a view must not fail because an engine could not render
                rulesets.append((engine.name, f"(cannot render: {exc})"))
    return page(
        request,
        who,
        "config.html",
        nav="config",
        text=process.store.text(process.revision),
        revision=process.revision,
        rulesets=rulesets,
        engines=engines_json(process),
    )


@router.post("/engines/apply")
async def reapply(request: Request, who: Admin) -> Response:
    await process_of(request).publish(force=True)
    return back(done_url("/config", "applied"))


@router.get("/revisions", response_class=HTMLResponse)
async def revisions(
    request: Request, who: Reader, a: int | None = None, b: int | None = None
) -> Response:
    process = process_of(request)
    diff = process.store.diff(a, b) if a is not None and b is not None else None
    return page(request, who, "revisions.html", **_revisions_context(process), diff=diff, a=a, b=b)


def _revisions_context(process: ControlProcess) -> dict[str, Any]:
    revs = list(reversed(process.store.revisions()))
    return {"nav": "revisions", "revs": revs, "current": process.revision}


@router.post("/revisions/{number}/rollback")
async def rollback(request: Request, number: int, who: Admin) -> Response:
    process = process_of(request)
    text = process.store.text(number)
    context = {**_revisions_context(process), "diff": None, "a": None, "b": None}
    comment = f"rollback to revision {number}"
    done = done_url("/revisions", "rolledback")
    return await _apply_form(request, who, text, comment, "", "revisions.html", context, done)


@router.get("/logs", response_class=HTMLResponse)
async def logs(
    request: Request,
    who: Reader,
    service: str = "",
    server: str = "",
    kind: str = "",
    page_number: int = Query(1, alias="page"),
) -> Response:
    """Newest first, LOG_PAGE events a page, over every event kept in memory."""
    process = process_of(request)
    found = process.events.query(
        kind or None, service or None, server or None, len(process.events.recent)
    )
    pages = max(1, -(-len(found) // LOG_PAGE))
    number = min(max(1, page_number), pages)
    newest_first = list(reversed(found))
    shown = newest_first[(number - 1) * LOG_PAGE : number * LOG_PAGE]
    link = {k: v for k, v in {"service": service, "server": server, "kind": kind}.items() if v}
    return page(
        request,
        who,
        "logs.html",
        nav="logs",
        events=shown,
        total=len(found),
        page_number=number,
        pages=pages,
        first=(number - 1) * LOG_PAGE + 1,
        newer=f"/logs?{urlencode({**link, 'page': number - 1})}" if number > 1 else "",
        older=f"/logs?{urlencode({**link, 'page': number + 1})}" if number < pages else "",
        service=service,
        server=server,
        kind=kind,
        kinds=EVENT_KINDS,
        services=process.config.virtual_services,
        alert_channels=[ch.name for ch in process.alerts.channels],
        alert_results=None,
    )


@router.post("/alerts/test", response_class=HTMLResponse)
async def alert_test(request: Request, who: Admin) -> Response:
    """The Logs page's "Send test alert": the result per channel, shown on the page."""
    process = process_of(request)
    results = await process.alerts.test(by=who.name) if process.alerts.channels else None
    return page(
        request,
        who,
        "alert_test.html",
        nav="logs",
        alert_channels=[ch.name for ch in process.alerts.channels],
        alert_results=results,
    )


@router.get("/reports", response_class=HTMLResponse)
async def reports(request: Request, who: Reader, span: str = "hour") -> Response:
    process = process_of(request)
    sampler = request.app.state.sampler
    span = span if span in ("hour", "day") else "hour"
    now = time.time()
    charts = []
    for vs in process.config.virtual_services:
        vip = sampler.charts(vs.label, [""], span, now)
        servers = sampler.charts(vs.label, [rs.label for rs in vs.real_servers], span, now)
        charts.append({"label": vs.label, "vip": vip, "servers": servers})
    return page(request, who, "reports.html", nav="reports", charts=charts, span=span)


@router.get("/tokens", response_class=HTMLResponse)
async def tokens(request: Request, who: Admin) -> Response:
    listing = security(request).store.tokens()
    return page(request, who, "tokens.html", nav="tokens", tokens=listing, new=None)


@router.post("/tokens")
async def create_token(request: Request, who: Admin) -> Response:
    form = await form_of(request)
    name = form.get("name", "").strip()[:64] or "token"
    role = Role(form.get("role", "readonly"))
    store = security(request).store
    info, token = store.create_token(name, role, who.name)
    process_of(request)._record("auth", f"API token {info.id} ({info.name}, {info.role}) created")
    return page(request, who, "tokens.html", nav="tokens", tokens=store.tokens(), new=token)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: str, who: Admin) -> Response:
    if security(request).store.revoke(token_id):
        process_of(request)._record("auth", f"API token {token_id} revoked by {who.name}")
    return back("/tokens")
