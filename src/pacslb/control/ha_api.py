"""The REST API of this node's HA part (`/api/v1/ha`): the manual hand-over.

`POST /api/v1/ha/release` (admin): hand the floating addresses to the peer for maintenance
(control/ha.py KeepalivedSupervisor.release); the peer's `pacslb ha takeover` calls it through
its PeerClient. 409 with the reason when it cannot be done now (not active, no keepalived).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from pacslb.control.api import Admin, Reader, process_of
from pacslb.control.ha import HaError

router = APIRouter(prefix="/api/v1/ha", tags=["ha"])


@router.get("/role")
async def role(request: Request, who: Reader) -> dict[str, Any]:
    """This node's role (standalone, starting, active, passive, fault, stopped) and since when."""
    return process_of(request).keepalived.status()


@router.post("/release")
async def release(request: Request, who: Admin) -> dict[str, Any]:
    """Hand the floating addresses to the peer; this node stays passive (nopreempt)."""
    try:
        return await process_of(request).keepalived.release(by=who.name)
    except HaError as exc:
        raise HTTPException(409, str(exc)) from None
