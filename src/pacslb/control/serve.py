"""`pacslb run`'s main loop around a ControlProcess: signals, the control socket, the WebUI,
systemd's notifications, and an orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from pacslb.control.app import ControlProcess
from pacslb.control.sdnotify import status_line
from pacslb.errors import ConfigError


async def serve(process: ControlProcess) -> None:
    """Run the control process until SIGTERM/SIGINT; SIGHUP reloads the config."""
    from pacslb.control.local import ControlServer

    loop = asyncio.get_running_loop()
    # Handlers first: a stop asked for during start-up waits for start() to finish and then
    # stops everything it started (else a proxy worker in its own session would be orphaned).
    loop.add_signal_handler(signal.SIGTERM, process.request_stop)
    loop.add_signal_handler(signal.SIGINT, process.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: process._background(_reload_quietly(process)))
    # The socket next: once the data plane answers on a VIP, `pacslb status` answers too
    # (its "ready" says whether start-up has finished).
    server = ControlServer(process, process.state_dir / "control.sock")
    await server.start()
    web = await _start_web(process)
    try:
        await process.start()
        process.notifier.ready(status_line(process))  # systemd: started (Type=notify)
        await process.wait_stopped()
    finally:
        process.notifier.stopping()
        if web is not None:
            await web.close()
        await server.close()
        await process.stop()


async def _start_web(process: ControlProcess) -> Any:
    """The WebUI, REST API and /metrics (control/web.py); None when node.webui is disabled."""
    if not process.config.node.webui.enabled:
        return None
    from pacslb.control.web import WebServer

    web = WebServer(process)
    try:
        await web.start()
    except Exception as exc:  # no WebUI is bad; no load balancer would be worse
        process._record("webui", f"WebUI not started: {exc!r}")
        await web.close()
        return None
    return web


async def _reload_quietly(process: ControlProcess) -> None:
    with contextlib.suppress(ConfigError):
        await process.reload()
