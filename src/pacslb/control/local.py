"""The local control socket: how `pacslb status|drain|halt|online|reload` reach `pacslb run`.

A Unix socket in the state directory, mode 0600 (only the user running pacslb, normally root,
may change admin states through it). One JSON request per line, one JSON answer per line:
`{"cmd": "status"}` -> `{"ok": true, "result": {...}}` or `{"ok": false, "error": "..."}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacslb.core.state import AdminState
from pacslb.errors import ConfigError, PacslbError
from pacslb.proxy.server import socket_answers

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

MAX_REQUEST = 64 * 1024


class NotRunning(PacslbError):
    """No control process answers on the socket."""


class ControlServer:
    def __init__(self, process: ControlProcess, path: Path) -> None:
        self.process = process
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists():
            if socket_answers(self.path):
                raise PacslbError(f"another pacslb is already running on {self.path}")
            self.path.unlink()  # left behind by a process that died
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            try:
                request = json.loads(line)
                result = await self.handle(request)
                answer: dict[str, Any] = {"ok": True, "result": result}
            except ConfigError as exc:
                answer = {
                    "ok": False,
                    "error": str(exc),
                    "problems": [p.to_json() for p in exc.problems],
                }
            except (PacslbError, ValueError, LookupError, TypeError) as exc:
                answer = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # a client that went away or sent junk: nothing to answer
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> Any:
        cmd = request.get("cmd")
        process = self.process
        if cmd == "status":
            return process.status()
        if cmd == "set-admin":
            state = AdminState(request["state"])
            return await process.set_admin(
                str(request["service"]), str(request["server"]), state, str(request.get("by", ""))
            )
        if cmd == "events":
            events = process.events.query(
                request.get("kind"),
                request.get("service"),
                request.get("server"),
                int(request.get("limit", 200)),
            )
            return [json.loads(e.to_json()) for e in events]
        if cmd == "reload":
            return await process.reload()
        if cmd == "ha-release":  # hand the floating addresses to the peer (maintenance)
            return await process.keepalived.release(by=str(request.get("by", "")))
        if cmd == "demo":  # `pacslb demo --fail SERVER` (control/demo.py)
            from pacslb.control import demo

            return await demo.command(process, request)
        if cmd == "alert-test":  # `pacslb alert test`
            return await process.alerts.test(by=str(request.get("by", "")))
        if cmd in ("config-rollback", "config-save"):  # pacslb config rollback|save (cli_config)
            return await config_change(process, request)
        if cmd == "plan":
            return json.loads(process.current_plan().to_json())
        if isinstance(cmd, str) and cmd.startswith(
            "ha-"
        ):  # pacslb ha ... (control/pair_commands.py)
            from pacslb.control.pair_commands import handle

            return await handle(process, request)
        if cmd == "stop":
            keep = bool(request.get("keep_data_plane", False))
            process.request_stop(keep_data_plane=keep)
            return {"pid": os.getpid(), "data_plane": "kept" if keep else "stopped"}
        raise ValueError(f"unknown command {cmd!r}")


async def config_change(process: ControlProcess, request: dict[str, Any]) -> dict[str, Any]:
    """`pacslb config rollback N` and `config save --file F` while pacslb runs: the change
    as the API makes it (validated, a revision, the config file, the HA peer, applied)."""
    by = str(request.get("by", ""))
    if request["cmd"] == "config-rollback":
        number = int(request["revision"])
        text = await asyncio.to_thread(process.store.text, number)
        return await process.apply_config(text, f"rollback to revision {number}", by=by)
    # The file is read here, not sent: a config may be longer than one request (MAX_REQUEST).
    file = Path(str(request["file"]))
    try:
        text = await asyncio.to_thread(file.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PacslbError(f"cannot read {file}: {exc}") from None
    comment = str(request.get("comment", "")) or f"config save --file {file}"
    return await process.apply_config(text, comment, by=by)


def request(state_dir: Path, payload: dict[str, Any], timeout: float = 10.0) -> Any:
    """Send one command to the running control process; NotRunning when none answers."""
    path = state_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(
                f"no pacslb answers at {state_dir} (no control socket at {path}): start it "
                "with `pacslb run CONFIG`, or pass the --state-dir (or --config) it runs with"
            ) from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    if not data:
        raise NotRunning(f"pacslb at {path} closed the connection without answering")
    answer = json.loads(data)
    if not answer.get("ok"):
        raise PacslbError(answer.get("error", "failed"))
    return answer["result"]
