"""The REST API of an HA pair (`/api/v1/ha/*`): status, pairing, and the calls between the nodes.

For operators: `GET /api/v1/ha/status` (any reader), `POST /api/v1/ha/pair {address, token,
fingerprint?}`, `POST /api/v1/ha/unpair`, `POST /api/v1/ha/takeover` (admins). Between the nodes:
`hello` and `join` (the pairing handshake, with an admin token of this node), and `prepare`,
`replica` and `leave`, which only the paired peer may call (with the token this node minted for
it at pairing; no other token, admin or not). `POST /api/v1/ha/resolve` (admins): a
replication conflict is resolved by keeping this node's state. `POST /api/v1/ha/release` is
the keepalived side's (control/ha.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from pacslb.control.api import Admin, Reader, process_of
from pacslb.control.auth import Principal, admin
from pacslb.control.pairing import PairingError
from pacslb.core.auth import token_id

router = APIRouter(prefix="/api/v1/ha", tags=["ha"])


class PairRequest(BaseModel):
    address: str = Field(
        min_length=1, max_length=300, description="the peer's WebUI/API: ADDR or ADDR:PORT"
    )
    token: str = Field(min_length=1, max_length=512, description="an admin API token of the peer")
    fingerprint: str | None = Field(
        None,
        max_length=200,
        description="the SHA-256 fingerprint of the peer's certificate, to check (unset: "
        "trusted on first use and returned)",
    )
    force: bool = Field(
        False,
        description="pair even when the peer is active or holds other services (they are "
        "replaced by this node's)",
    )


def bearer(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


async def the_peer(request: Request) -> Principal:
    """The paired peer, calling with the token this node gave it at pairing (403 otherwise)."""
    who = await admin(request)
    record = process_of(request).replica.record
    if record is None:
        raise HTTPException(409, "this node is not paired")
    if token_id(bearer(request)) != record.given_token_id:
        raise HTTPException(403, "only the paired peer may call this (with its pairing token)")
    return who


Peer = Annotated[Principal, Depends(the_peer)]


def _refused(exc: PairingError) -> HTTPException:
    return HTTPException(409, str(exc))


@router.get("/status")
async def status(request: Request, who: Reader) -> dict[str, Any]:
    """This node's role, its peer and the peer's role, replication state, split brain."""
    return process_of(request).replica.status_json()


@router.post("/pair")
async def pair(request: Request, body: PairRequest, who: Admin) -> dict[str, Any]:
    """Pair with the peer (run on the node that is to be active): pins its certificate."""
    try:
        return await process_of(request).pairing.pair(
            body.address, body.token, body.fingerprint, body.force
        )
    except PairingError as exc:
        raise _refused(exc) from None


@router.post("/unpair")
async def unpair(request: Request, who: Admin) -> dict[str, Any]:
    try:
        return await process_of(request).pairing.unpair()
    except PairingError as exc:
        raise _refused(exc) from None


@router.post("/resolve")
async def resolve(request: Request, who: Admin) -> dict[str, Any]:
    """A replication conflict (both nodes changed): keep this node's state; it is pushed."""
    return process_of(request).replica.resolve()


@router.post("/takeover")
async def takeover(request: Request, who: Admin) -> dict[str, Any]:
    """On the passive node: ask the active peer to release the floating addresses."""
    try:
        return await process_of(request).pairing.takeover()
    except PairingError as exc:
        raise _refused(exc) from None


# --- between the nodes ---------------------------------------------------------------------


@router.post("/hello")
async def hello(
    request: Request, who: Admin, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Pairing, step 2: whether HA is enabled here, and the proof of the shared secret."""
    nonce = body.get("nonce")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
        raise HTTPException(422, "nonce: 16 to 128 characters expected")
    try:
        return process_of(request).pairing.hello(nonce)
    except PairingError as exc:  # this node's certificate unreadable, say
        raise _refused(exc) from None


@router.post("/join")
async def join(
    request: Request, who: Admin, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Pairing, step 3: the pairing node's address, fingerprint, token and proof."""
    try:
        return process_of(request).pairing.join(body)
    except PairingError as exc:
        raise _refused(exc) from None


@router.post("/leave")
async def leave(request: Request, who: Peer) -> dict[str, Any]:
    """The peer unpairs: the pairing is removed here too."""
    return process_of(request).pairing.left()


@router.post("/prepare")
async def prepare(
    request: Request, who: Peer, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Would this node apply these services (with its own node: and files)? 422 if not."""
    return await process_of(request).replica.prepare(body)


@router.put("/replica")
async def replica(
    request: Request, who: Peer, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Apply the peer's replicated state (services and admin states) as a revision here."""
    return await process_of(request).replica.receive(body)
