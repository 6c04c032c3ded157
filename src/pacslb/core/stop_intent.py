"""Whether the data plane (proxy workers, keepalived) outlives a stopped control process.

pacslb.service has KillMode=process: systemd signals the control process alone, so that
`pacslb stop --keep-data-plane` (an upgrade that drops no connection) leaves the workers and
keepalived forwarding for the next `pacslb run` to adopt. The price: when the control process
hangs on `systemctl stop` and is SIGKILLed at TimeoutStopSec, nothing stops the workers and
keepalived, and the node goes on holding the VIPs while the operator works on it. The unit's
ExecStopPost (`pacslb stop-data-plane`) decides here from two facts:

- the intent the control process wrote when it was asked to stop ("keep" for
  `stop --keep-data-plane`, "stop" for SIGTERM or a plain `pacslb stop`), or none;
- $SERVICE_RESULT, which systemd gives ExecStopPost: "timeout" (killed at TimeoutStopSec),
  "signal"/"core-dump" (died of a signal), "success", "exit-code", ...
"""

from __future__ import annotations

KEEP = "keep"
STOP = "stop"
CRASHES = frozenset({"signal", "core-dump"})


def keeps_data_plane(intent: str | None, service_result: str | None) -> tuple[bool, str]:
    """(keep?, why) for the data plane left by a control process that is gone."""
    if intent == KEEP:
        return True, "stopped with --keep-data-plane: the next `pacslb run` adopts the data plane"
    if intent == STOP:
        return False, "asked to stop without --keep-data-plane"
    if service_result == "success":
        # Exited cleanly with no intent recorded: a pacslb from before the marker (the first
        # upgrade onto this version: its `stop --keep-data-plane` writes none). A clean plain
        # stop leaves nothing running anyway; a kept data plane must stay for the new start.
        return True, "the control process exited cleanly (no stop intent recorded)"
    if service_result in CRASHES:
        # Died unasked while running (no stop intent was written): Restart=on-failure starts it
        # again within RestartSec and the new process adopts the workers and keepalived, as
        # after any crash, so the clients lose nothing.
        return True, f"the control process died unasked ({service_result}): its restart adopts it"
    return False, f"no --keep-data-plane stop was recorded (service result: {service_result})"
