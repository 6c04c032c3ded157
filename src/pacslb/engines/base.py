"""What the control process needs of a data plane: apply a Plan, report counters, stop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pacslb.core.plan import Plan, ServerKey


@dataclass(frozen=True, slots=True)
class Counters:
    """Per real server, as the data plane counts them."""

    active: int = 0  # connections open now
    total: int = 0  # connections since the engine started
    bytes_in: int = 0  # client -> server
    bytes_out: int = 0  # server -> client
    connect_failures: int = 0
    packets_in: int = 0  # kernel engine: packets client -> server
    packets_out: int = 0  # kernel engine, NAT/SNAT: packets server -> client (DR never sees them)
    requests: int = 0  # l7-http: requests forwarded
    retries: int = 0  # built-in proxy: requests/connections tried again after this server failed
    ejections: int = 0  # built-in proxy: times passive health took the server out
    ejected: int = 0  # built-in proxy: in how many workers passive health has it out now
    responses: dict[str, int] = field(default_factory=dict)  # l7-http: "2xx" -> responses
    # l7-dicom (rows per real server, NO_SERVER, and "ae:" + calling AE title):
    associations: int = 0  # A-ASSOCIATE-RQs forwarded
    assoc_active: int = 0  # associations open now
    assoc_rejected: int = 0  # A-ASSOCIATE-RJ (the proxy's or the server's)
    assoc_aborted: int = 0  # ended by A-ABORT from any side
    pdata_pdus: int = 0  # P-DATA-TF PDUs relayed, both directions
    assoc_seconds: float = 0.0  # durations of ended associations, summed


class Engine(Protocol):
    name: str

    async def apply(self, plan: Plan) -> None:
        """Make the data plane match the Plan; raise EngineError and keep the old state if not."""

    def counters(self) -> Mapping[ServerKey, Counters]:
        """The latest counters per (service, server); empty when the engine has none yet."""

    async def close(self, keep_running: bool = False) -> None:
        """Stop the engine's own processes; with `keep_running`, leave the data plane
        forwarding for the next `pacslb run` to adopt (a restart or an upgrade)."""
