"""Demo mode's failure control: make a demo real server fail its health check, and recover.

`pacslb demo` attaches its real servers (profiles/demo.py: DemoEstate) to its control process;
then `pacslb demo --fail SERVER` (the local control socket), `POST /api/v1/demo/servers/{server}
/{fail|recover|toggle}` and the System Overview's Fail / Recover buttons reach them. The failure
is real: the server answers its check URL with 503 or stops listening, and the health checker
finds out as it would in a hospital. A `pacslb run` has no demo: all of these say so (404).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from pacslb.control import local
from pacslb.control.api import Admin, Reader, process_of
from pacslb.errors import PacslbError

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

Action = Literal["fail", "recover", "toggle"]


class DemoServers(Protocol):
    """What the control plane may do with the demo's real servers (profiles/demo.py)."""

    def labels(self) -> list[str]: ...
    def failing(self) -> list[str]: ...
    def describe(self, name: str) -> str: ...
    async def set_failing(self, name: str, failing: bool) -> bool: ...


_ATTACHED: weakref.WeakKeyDictionary[ControlProcess, DemoServers] = weakref.WeakKeyDictionary()


def attach(process: ControlProcess, servers: DemoServers) -> None:
    """Called by `pacslb demo` only: this process runs a demo."""
    _ATTACHED[process] = servers


def servers_of(process: ControlProcess) -> DemoServers | None:
    return _ATTACHED.get(process)


class NotADemo(PacslbError):
    """The running pacslb is not `pacslb demo`."""


def view(process: ControlProcess) -> dict[str, Any] | None:
    """The demo's servers and which fail; None when this is not a demo."""
    servers = servers_of(process)
    if servers is None:
        return None
    return {"servers": servers.labels(), "failing": servers.failing()}


async def act(process: ControlProcess, server: str, action: Action) -> dict[str, Any]:
    """Fail, recover or toggle one demo real server; what it does now, in words."""
    servers = servers_of(process)
    if servers is None:
        raise NotADemo("this pacslb is not a demo: only `pacslb demo` has servers to fail")
    if action not in ("fail", "recover", "toggle"):
        raise ValueError(f"unknown demo action {action!r} (fail, recover or toggle)")
    failing = server not in servers.failing() if action == "toggle" else action == "fail"
    changed = await servers.set_failing(server, failing)  # ValueError for an unknown server
    if failing:
        message = f"{servers.describe(server)}: its health check fails"
    else:
        message = f"{server} answers its health check again"
    process._record("admin", f"demo: {message}" + ("" if changed else " (it already did)"))
    return {"server": server, "failing": failing, "changed": changed, "message": message}


async def command(process: ControlProcess, request: dict[str, Any]) -> Any:
    """The local control socket's `{"cmd": "demo", ...}` (control/local.py)."""
    if "server" not in request:
        found = view(process)
        if found is None:
            raise NotADemo("this pacslb is not a demo")
        return found
    return await act(process, str(request["server"]), request.get("action", "toggle"))


def cli(state_dir: Path, fail: str | None, recover: str | None) -> int:
    """`pacslb demo --fail SERVER` (toggles) / `--recover SERVER` against the running demo."""
    server, action = (fail, "toggle") if fail else (recover, "recover")
    try:
        done = local.request(state_dir, {"cmd": "demo", "server": server, "action": action})
    except local.NotRunning as exc:
        raise PacslbError(f"no demo runs there: start it with `pacslb demo` ({exc})") from None
    print(done["message"] + ("" if done["changed"] else " (it already did)"))
    if done["failing"]:
        print(
            "watch it turn red (WebUI, or `pacslb status`) and its traffic move to the other "
            f"server; `pacslb demo --fail {server}` again (or --recover) brings it back"
        )
    return 0


router = APIRouter()


def _checked(process: ControlProcess) -> None:
    if servers_of(process) is None:
        raise HTTPException(
            404, "this pacslb is not a demo: only `pacslb demo` has servers to fail"
        )


@router.get("/api/v1/demo", tags=["demo"])
async def demo_status(request: Request, who: Reader) -> dict[str, Any]:
    """The demo's real servers and which of them fail their health check (demo mode only)."""
    process = process_of(request)
    _checked(process)
    return view(process) or {}


@router.post("/api/v1/demo/servers/{server}/{action}", tags=["demo"])
async def demo_action(request: Request, server: str, action: Action, who: Admin) -> dict[str, Any]:
    """Make a demo real server fail its health check for real, recover, or toggle."""
    process = process_of(request)
    _checked(process)
    try:
        return await act(process, server, action)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/demo", include_in_schema=False)
async def demo_form(request: Request, who: Admin) -> Response:
    """The System Overview's Fail / Recover buttons (a form; CSRF checked by `Admin`)."""
    from pacslb.control.webui import done_url, form_of

    process = process_of(request)
    _checked(process)
    form = await form_of(request)
    action = form.get("action", "")
    if action not in ("fail", "recover"):
        raise HTTPException(400, "action must be fail or recover")
    try:
        await act(process, form.get("server", ""), "fail" if action == "fail" else "recover")
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None
    done = "demo-fail" if action == "fail" else "demo-recover"
    return RedirectResponse(done_url("/", done, server=form.get("server", "")), status_code=303)
