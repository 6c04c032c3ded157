"""The REST API (`/api/v1`): the config models of config.py are the request bodies.

Every change goes through `ControlProcess.apply_config`: validated as a whole (every problem
with its path, 422), recorded as a revision, written into the config file (keeping its
comments and layout), applied. A refused change changes nothing: 409 when the config file was
edited by hand since the running revision (the edit is never overwritten). A change that
leaves the config as it was makes no revision ("applied": false, "changed": false).
`?dry_run=true` on a change only validates it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from pacslb import config as c
from pacslb.control.auth import (
    DEVICE_COOKIE,
    DEVICE_LIFETIME,
    SESSION_COOKIE,
    Principal,
    RateLimited,
    admin,
    reader,
    security,
)
from pacslb.control.auth import LoginRefused as _LoginRefused
from pacslb.control.store import file_exists as files_in
from pacslb.core.auth import Role
from pacslb.core.state import AdminState
from pacslb.core.validate import FileExists, dump_text, format_path, load_data, load_text
from pacslb.errors import ConfigError

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

router = APIRouter(prefix="/api/v1")
Reader = Annotated[Principal, Depends(reader)]
Admin = Annotated[Principal, Depends(admin)]
DryRun = Annotated[bool, Query(description="only validate; change nothing")]


def process_of(request: Request) -> ControlProcess:
    proc: ControlProcess = request.app.state.process
    return proc


def file_exists(process: ControlProcess) -> FileExists:
    """Whether a file named in a config exists, as applying it will judge (relative paths are
    relative to the config file)."""
    return files_in(process.config_path.resolve().parent)


BODY_TIMEOUT = 30.0  # seconds to send a config to validate (a slow sender must not hold a lane)


def validation_lane(request: Request, who: Principal) -> asyncio.Semaphore:
    """Validating a config is pure CPU (seconds for thousands of services): it runs in a thread,
    one at a time per role, so that health checks and other requests go on meanwhile and a
    readonly caller cannot make an admin's dry run wait."""
    lanes: dict[Role, asyncio.Semaphore] = request.app.state.validations
    return lanes[who.role]


async def change(
    request: Request,
    who: Principal,
    new: c.Config,
    comment: str,
    dry_run: bool,
    created: Response | None = None,
) -> dict[str, Any]:
    """Apply a whole new config (or, dry run, only validate it); ConfigError -> 422.

    `created`: the response of an endpoint that answers 201, which a dry run turns into 200
    (nothing was created)."""
    process = process_of(request)
    if dry_run:
        if created is not None:
            created.status_code = 200
        async with validation_lane(request, who):
            await asyncio.to_thread(_validate_model, new, file_exists(process))
        return {"valid": True, "problems": [], "applied": False}
    result = await process.apply_config(new, comment, by=who.name)
    if not result["changed"]:  # nothing to save: no revision, the file untouched
        if created is not None:
            created.status_code = 200
        note = f"nothing changed: the config is revision {result['revision']} as it was"
        return {"valid": True, "problems": [], "applied": False, "detail": note, **result}
    return {"valid": True, "problems": [], "applied": True, **result}


def _validate_model(new: c.Config, exists: FileExists) -> None:
    load_text(dump_text(new), "dry run", exists)


def _service(process: ControlProcess, label: str) -> tuple[int, c.VirtualService]:
    for i, vs in enumerate(process.config.virtual_services):
        if vs.label == label:
            return i, vs
    raise HTTPException(404, f"no virtual service {label!r}")


def _server(vs: c.VirtualService, label: str) -> int:
    for i, rs in enumerate(vs.real_servers):
        if rs.label == label:
            return i
    raise HTTPException(404, f"{vs.label} has no real server {label!r}")


def _with_services(config: c.Config, services: list[c.VirtualService]) -> c.Config:
    return config.model_copy(update={"virtual_services": services})


def _with_servers(vs: c.VirtualService, servers: list[c.RealServer]) -> c.VirtualService:
    return vs.model_copy(update={"real_servers": servers})


def dump(model: BaseModel) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump(mode="json")
    return data


# --- session --------------------------------------------------------------------------------


class Login(BaseModel):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


@router.post("/session", tags=["session"])
async def login(request: Request, body: Login, response: Response) -> dict[str, Any]:
    """Log in; sets the session cookie and returns the CSRF token for changing requests.

    Also sets a device cookie: failed logins from elsewhere do not lock this client out."""
    from pacslb.control.auth import client_address

    sec = security(request)
    device = request.cookies.get(DEVICE_COOKIE)
    try:
        session = sec.login(body.username, body.password, client_address(request), device)
    except RateLimited as exc:
        raise HTTPException(429, str(exc), {"Retry-After": str(int(exc.retry_after) + 1)}) from None
    except _LoginRefused as exc:
        raise HTTPException(401, str(exc)) from None
    set_session_cookie(response, session.id, sec.sessions.lifetime)
    set_device_cookie(response, sec.new_device(session.user))
    return {"user": session.user, "role": str(session.role), "csrf_token": sec.csrf(session)}


def set_session_cookie(response: Response, session_id: str, lifetime: float) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(lifetime),
        secure=True,
        httponly=True,
        samesite="strict",
        path="/",
    )


def set_device_cookie(response: Response, value: str) -> None:
    response.set_cookie(
        DEVICE_COOKIE,
        value,
        max_age=DEVICE_LIFETIME,
        secure=True,
        httponly=True,
        samesite="strict",
        path="/",
    )


@router.get("/session", tags=["session"])
async def whoami(request: Request, who: Reader) -> dict[str, Any]:
    csrf = security(request).csrf(who.session) if who.session else None
    return {"user": who.name, "role": str(who.role), "csrf_token": csrf}


@router.delete("/session", tags=["session"])
async def logout(request: Request, who: Reader, response: Response) -> dict[str, Any]:
    if who.session is not None:
        security(request).sessions.end(who.session.id)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return {"logged_out": True}


# --- status and admin state -----------------------------------------------------------------


@router.get("/status", tags=["status"])
async def status(request: Request, who: Reader) -> dict[str, Any]:
    """Every VIP and real server: health, admin state, connections, last check and reason."""
    return process_of(request).status()


@router.post("/virtual_services/{service}/real_servers/{server}/{action}", tags=["admin state"])
async def set_admin_state(
    request: Request,
    service: str,
    server: str,
    action: Literal["drain", "halt", "online"],
    who: Admin,
) -> dict[str, Any]:
    """Drain (no new connections), halt (no traffic at all) or bring a real server online."""
    return await process_of(request).set_admin(service, server, AdminState(action), by=who.name)


# --- virtual services and real servers ------------------------------------------------------


@router.get("/virtual_services", tags=["virtual services"])
async def list_services(request: Request, who: Reader) -> list[dict[str, Any]]:
    return [dump(vs) for vs in process_of(request).config.virtual_services]


@router.post("/virtual_services", status_code=201, tags=["virtual services"])
async def create_service(
    request: Request,
    response: Response,
    body: c.VirtualService,
    who: Admin,
    dry_run: DryRun = False,
) -> dict[str, Any]:
    config = process_of(request).config
    if config.service(body.label) is not None:
        raise HTTPException(409, f"virtual service {body.label!r} exists already")
    new = _with_services(config, [*config.virtual_services, body])
    comment = f"add virtual service {body.label}"
    return await change(request, who, new, comment, dry_run, created=response)


@router.get("/virtual_services/{service}", tags=["virtual services"])
async def get_service(request: Request, service: str, who: Reader) -> dict[str, Any]:
    return dump(_service(process_of(request), service)[1])


@router.put("/virtual_services/{service}", tags=["virtual services"])
async def update_service(
    request: Request, service: str, body: c.VirtualService, who: Admin, dry_run: DryRun = False
) -> dict[str, Any]:
    config = process_of(request).config
    index, _ = _service(process_of(request), service)
    services = list(config.virtual_services)
    services[index] = body
    new = _with_services(config, services)
    return await change(request, who, new, f"change virtual service {service}", dry_run)


@router.delete("/virtual_services/{service}", tags=["virtual services"])
async def delete_service(
    request: Request, service: str, who: Admin, dry_run: DryRun = False
) -> dict[str, Any]:
    config = process_of(request).config
    index, _ = _service(process_of(request), service)
    services = [vs for i, vs in enumerate(config.virtual_services) if i != index]
    new = _with_services(config, services)
    return await change(request, who, new, f"delete virtual service {service}", dry_run)


@router.get("/virtual_services/{service}/real_servers", tags=["real servers"])
async def list_servers(request: Request, service: str, who: Reader) -> list[dict[str, Any]]:
    return [dump(rs) for rs in _service(process_of(request), service)[1].real_servers]


@router.post("/virtual_services/{service}/real_servers", status_code=201, tags=["real servers"])
async def create_server(
    request: Request,
    response: Response,
    service: str,
    body: c.RealServer,
    who: Admin,
    dry_run: DryRun = False,
) -> dict[str, Any]:
    config = process_of(request).config
    index, vs = _service(process_of(request), service)
    if any(rs.label == body.label for rs in vs.real_servers):
        raise HTTPException(409, f"{service} has a real server {body.label!r} already")
    services = list(config.virtual_services)
    services[index] = _with_servers(vs, [*vs.real_servers, body])
    new = _with_services(config, services)
    comment = f"add real server {service}/{body.label}"
    return await change(request, who, new, comment, dry_run, created=response)


@router.get("/virtual_services/{service}/real_servers/{server}", tags=["real servers"])
async def get_server(request: Request, service: str, server: str, who: Reader) -> dict[str, Any]:
    _, vs = _service(process_of(request), service)
    return dump(vs.real_servers[_server(vs, server)])


@router.put("/virtual_services/{service}/real_servers/{server}", tags=["real servers"])
async def update_server(
    request: Request,
    service: str,
    server: str,
    body: c.RealServer,
    who: Admin,
    dry_run: DryRun = False,
) -> dict[str, Any]:
    config = process_of(request).config
    index, vs = _service(process_of(request), service)
    servers = list(vs.real_servers)
    servers[_server(vs, server)] = body
    services = list(config.virtual_services)
    services[index] = _with_servers(vs, servers)
    new = _with_services(config, services)
    return await change(request, who, new, f"change real server {service}/{server}", dry_run)


@router.delete("/virtual_services/{service}/real_servers/{server}", tags=["real servers"])
async def delete_server(
    request: Request, service: str, server: str, who: Admin, dry_run: DryRun = False
) -> dict[str, Any]:
    config = process_of(request).config
    index, vs = _service(process_of(request), service)
    gone = _server(vs, server)
    services = list(config.virtual_services)
    services[index] = _with_servers(vs, [rs for i, rs in enumerate(vs.real_servers) if i != gone])
    new = _with_services(config, services)
    return await change(request, who, new, f"delete real server {service}/{server}", dry_run)


# --- the whole config and its revisions -----------------------------------------------------


@router.get("/config", tags=["config"])
async def get_config(request: Request, who: Reader) -> dict[str, Any]:
    return dump(process_of(request).config)


@router.put("/config", tags=["config"])
async def put_config(
    request: Request, body: c.Config, who: Admin, dry_run: DryRun = False
) -> dict[str, Any]:
    return await change(request, who, body, "replace the config", dry_run)


MAX_NESTING = 32  # a config nests some 8 levels; a parser and validator recurse on each one
READONLY_NOTE = (
    "files named in the config (certificates, keys, external check commands) are not looked "
    "up for a readonly caller; they are checked when an admin validates or applies it"
)
VALIDATE_BODY = {
    "requestBody": {
        "required": True,
        "description": "a config as JSON (any shape)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


class BadBody(Exception):
    """The body is no JSON we will validate (400)."""


def nesting_path(data: Any, limit: int) -> str | None:
    """Where `data` nests deeper than `limit` levels (its path), or None. Iterative: the check
    must not itself run out of stack."""
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > limit:
            return format_path(path[: limit + 1]) or "(top)"
        if isinstance(value, dict):
            stack += [(v, (*path, str(k))) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, (*path, i)) for i, v in enumerate(value)]
    return None


def _validate_body(raw: bytes, exists: FileExists | None) -> list[dict[str, Any]]:
    """The problems of a config sent as JSON; BadBody when it is no JSON we will look at."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadBody(f"JSON nested too deep (more than {MAX_NESTING} levels)") from None
    except ValueError as exc:
        raise BadBody(f"not JSON: {exc}") from None
    where = nesting_path(data, MAX_NESTING)
    if where is not None:
        raise BadBody(f"JSON nested too deep (more than {MAX_NESTING} levels) at {where}")
    try:
        load_data(data, "request", exists)
    except ConfigError as exc:
        return [p.to_json() for p in exc.problems]
    return []


@router.post("/config/validate", tags=["config"], openapi_extra=VALIDATE_BODY)
async def validate(request: Request, who: Reader) -> dict[str, Any]:
    """Validate without applying: every problem, each with its path.

    For a readonly caller the files a config names are not looked up (this endpoint must not
    tell who may only look whether a path exists on this host); an admin gets the full check."""
    exists = file_exists(process_of(request)) if who.is_admin else None
    # The lane first, then the body: callers that wait hold no body (uvicorn stops reading a
    # connection whose request is not being read), so memory holds one body per lane at most.
    async with validation_lane(request, who):
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                raw = await request.body()  # at most node.webui.max_body (FrontDoor)
        except TimeoutError:
            raise HTTPException(408, f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
        try:
            problems = await asyncio.to_thread(_validate_body, raw, exists)
        except BadBody as exc:
            raise HTTPException(400, str(exc)) from None
    notes = [] if who.is_admin else [READONLY_NOTE]
    return {"valid": not problems, "problems": problems, "notes": notes}


@router.get("/config/text", tags=["config"], response_class=PlainTextResponse)
async def config_text(request: Request, who: Reader) -> str:
    """The YAML text of the revision in force."""
    process = process_of(request)
    return process.store.text(process.revision)


@router.get("/config/revisions", tags=["config"])
async def revisions(request: Request, who: Reader) -> list[dict[str, Any]]:
    process = process_of(request)
    return [
        {**rev.to_json(), "current": rev.number == process.revision}
        for rev in process.store.revisions()
    ]


@router.get("/config/revisions/{number}", tags=["config"], response_class=PlainTextResponse)
async def revision_text(request: Request, number: int, who: Reader) -> str:
    return process_of(request).store.text(number)


@router.get("/config/diff", tags=["config"], response_class=PlainTextResponse)
async def diff(request: Request, a: int, b: int, who: Reader) -> str:
    """Unified diff between two revisions."""
    return process_of(request).store.diff(a, b)


@router.post("/config/rollback/{number}", tags=["config"])
async def rollback(request: Request, number: int, who: Admin) -> dict[str, Any]:
    """Apply revision `number` again, as a new revision (history is append-only)."""
    process = process_of(request)
    text = process.store.text(number)
    result = await process.apply_config(text, f"rollback to revision {number}", by=who.name)
    return {"applied": result["changed"], **result}  # to the revision in force: nothing to do


# --- events and engines ---------------------------------------------------------------------


@router.get("/events", tags=["events"])
async def events(
    request: Request,
    who: Reader,
    kind: str | None = None,
    service: str | None = None,
    server: str | None = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> list[dict[str, Any]]:
    found = process_of(request).events.query(kind or None, service or None, server or None, limit)
    return [json.loads(e.to_json()) for e in found]


@router.get("/alerts", tags=["alerts"])
async def alert_channels(request: Request, who: Reader) -> dict[str, Any]:
    """Per alert channel: messages delivered, failed (given up), dropped (queue full), queued,
    waiting for a retry, held by the rate limit, and the last failure's reason."""
    return {"channels": process_of(request).alerts.status()}


@router.post("/alerts/test", tags=["alerts"])
async def alert_test(request: Request, who: Admin) -> dict[str, Any]:
    """Send a test message through every alert channel now; per channel whether it was
    delivered and, if not, why (409 when no channel is configured)."""
    from pacslb.control.alerts import NoAlertChannels

    process = process_of(request)
    try:
        return {"channels": await process.alerts.test(by=who.name)}
    except NoAlertChannels as exc:
        raise HTTPException(409, str(exc)) from None


def engines_json(process: ControlProcess) -> list[dict[str, Any]]:
    out = []
    for engine in process.engines:
        record = process.engine_records.get(engine.name)
        out.append(
            {
                "name": engine.name,
                "applied_at": record.applied_at if record else None,
                "error": record.error if record else None,
                "error_at": record.error_at if record else None,
                "has_ruleset": callable(getattr(engine, "ruleset_text", None)),
            }
        )
    return out


@router.get("/engines", tags=["engines"])
async def engines(request: Request, who: Reader) -> list[dict[str, Any]]:
    return engines_json(process_of(request))


@router.post("/engines/apply", tags=["engines"])
async def reapply(request: Request, who: Admin) -> list[dict[str, Any]]:
    """Hand the current Plan to every engine again, even if nothing changed."""
    process = process_of(request)
    await process.publish(force=True)
    return engines_json(process)


# --- API tokens -----------------------------------------------------------------------------


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w .@-]+$")
    role: Role = Role.READONLY


@router.get("/tokens", tags=["tokens"])
async def list_tokens(request: Request, who: Admin) -> list[dict[str, str]]:
    return [t.to_json() for t in security(request).store.tokens()]


@router.post("/tokens", status_code=201, tags=["tokens"])
async def create_token(request: Request, body: NewToken, who: Admin) -> dict[str, str]:
    """A new API token; the token itself is in this answer only (only its hash is kept)."""
    info, token = security(request).store.create_token(body.name, body.role, who.name)
    process_of(request)._record("auth", f"API token {info.id} ({info.name}, {info.role}) created")
    return {**info.to_json(), "token": token}


@router.delete("/tokens/{token_id}", tags=["tokens"])
async def revoke_token(request: Request, token_id: str, who: Admin) -> dict[str, Any]:
    if not security(request).store.revoke(token_id):
        raise HTTPException(404, f"no token {token_id!r}")
    process_of(request)._record("auth", f"API token {token_id} revoked by {who.name}")
    return {"revoked": token_id, "at": time.time()}


# --- metrics --------------------------------------------------------------------------------

metrics_router = APIRouter()


@metrics_router.get("/metrics", tags=["metrics"], response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text format; a token or session, or a client in node.webui.metrics_allow."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from pacslb.control.metrics import exposition

    if not security(request).anonymous_metrics(request):
        await reader(request)
    return Response(exposition(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
