"""The WebUI's HA page: this node's role, the peer, replication and split brain; the pair
form, Unpair, and Take over (on the passive node: the active peer is asked to release).

The same calls as the REST API (control/pair_api.py); plain forms with the CSRF field."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from pacslb.control.api import Admin, Reader, process_of
from pacslb.control.auth import Principal
from pacslb.control.pairing import PairingError
from pacslb.control.store import ConfigConflict
from pacslb.control.webui import form_of, page

router = APIRouter(include_in_schema=False)


def _page(
    request: Request, who: Principal, message: str = "", error: str = "", status: int = 200
) -> Response:
    process = process_of(request)
    return page(
        request,
        who,
        "ha.html",
        status=status,
        nav="ha",
        ha=process.replica.status_json(),
        message=message,
        error=error,
    )


@router.get("/ha", response_class=HTMLResponse)
async def ha_page(request: Request, who: Reader) -> Response:
    return _page(request, who)


async def _act(request: Request, who: Principal, action: Any, done: str) -> Response:
    try:
        result = await action()
    except PairingError as exc:
        return _page(request, who, error=str(exc), status=409)
    return _page(request, who, message=done.format(**result))


@router.post("/ha/pair")
async def pair(request: Request, who: Admin) -> Response:
    form = await form_of(request)
    pairing = process_of(request).pairing
    address, token = form.get("address", "").strip(), form.get("token", "").strip()
    fingerprint = form.get("fingerprint", "").strip() or None
    force = bool(form.get("force"))
    done = "Paired with {peer}; its certificate fingerprint {fingerprint} is pinned."
    return await _act(request, who, lambda: pairing.pair(address, token, fingerprint, force), done)


@router.post("/ha/resolve")
async def resolve(request: Request, who: Admin) -> Response:
    try:
        result = process_of(request).replica.resolve()
    except ConfigConflict as exc:
        return _page(request, who, error=str(exc), status=409)
    return _page(request, who, message=f"Kept this node's state (revision {result['revision']}).")


@router.post("/ha/unpair")
async def unpair(request: Request, who: Admin) -> Response:
    done = "Unpaired from {unpaired}."
    return await _act(request, who, process_of(request).pairing.unpair, done)


@router.post("/ha/takeover")
async def takeover(request: Request, who: Admin) -> Response:
    done = "Asked {released_by} to release the floating addresses to this node."
    return await _act(request, who, process_of(request).pairing.takeover, done)
