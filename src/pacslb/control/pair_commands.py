"""The control-socket commands of `pacslb ha ...` (cli_pair.py sends them; local.py routes them).

Pairing, unpairing and takeover run in the control process, as the REST API's do: it holds the
pairing, the token store and the peer client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacslb.errors import PacslbError

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess


async def handle(process: ControlProcess, request: dict[str, Any]) -> Any:
    cmd = request.get("cmd")
    if cmd == "ha-status":
        return process.replica.status_json()
    if cmd == "ha-pair":
        fingerprint = request.get("fingerprint")
        return await process.pairing.pair(
            str(request["address"]),
            str(request["token"]),
            str(fingerprint) if fingerprint else None,
            bool(request.get("force")),
        )
    if cmd == "ha-resolve":
        return process.replica.resolve()
    if cmd == "ha-unpair":
        return await process.pairing.unpair()
    if cmd == "ha-takeover":
        return await process.pairing.takeover()
    if cmd == "ha-fingerprint":
        return {"fingerprint": process.pairing.own_fingerprint()}
    raise PacslbError(f"unknown command {cmd!r}")
