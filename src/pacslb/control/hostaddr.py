"""This node's addresses on its HA interface (`ip -j addr`), for state sync's identity and
conntrackd's sync link: bounded in time, so a hung `ip` never holds the loop's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json

IP_TIMEOUT = 5.0  # seconds for one `ip -j addr show`


async def global_addresses(interface: str, timeout: float = IP_TIMEOUT) -> list[str]:
    """The interface's global addresses, primary first; OSError when `ip` fails or hangs
    (the interface may not exist yet at boot: the caller retries)."""
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "-j",
        "addr",
        "show",
        "dev",
        interface,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise OSError(f"`ip addr show dev {interface}` gave no answer in {timeout:g} s") from None
    if proc.returncode != 0:
        raise OSError(f"ip addr show dev {interface}: {err.decode(errors='replace').strip()}")
    try:
        links = json.loads(out or b"[]")
    except ValueError as exc:
        raise OSError(f"ip addr show dev {interface}: unreadable output ({exc})") from None
    return [
        str(info["local"])
        for link in links
        for info in link.get("addr_info", [])
        if info.get("scope") == "global" and "local" in info
    ]
