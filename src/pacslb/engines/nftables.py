"""nftables from Python: libnftables through ctypes, `nft -f -` only when the library is missing.

Why ctypes and not a package: libnftables is the kernel team's own front end (the same parser
and the same one-transaction semantics as `nft -f`), it ships with the `nftables` package, and
one call costs ~0.1 ms against ~16 ms for spawning `nft` (research/kernel-l4.md). The Python
bindings Debian ships (`python3-nftables`) are for the system Python only, not a venv.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import subprocess
import threading
from typing import Any

from pacslb.errors import EngineError

NFT_CTX_OUTPUT_JSON = 1 << 4


class Nft:
    """Runs nftables scripts and commands; raises EngineError with nft's own message."""

    def __init__(self) -> None:
        self._lib: Any = None
        # One lock per context: a context's buffers are not thread-safe, but the two contexts
        # are independent (each its own netlink socket, cache and buffers). So a listing (JSON:
        # state sync's export, 0.3-0.6 s per 20k flows, on its thread) does not hold up a
        # transaction (text: an apply, a re-deal, an import batch). Measured with 20k flows
        # (tests/netns/loop_probe.py): a drain applied during a listing took up to 0.8-1.7 s
        # with one lock, 0.04-0.12 s with these. The price: a listing's dump starts again when
        # a transaction commits during it; at 10 transactions a second listings were ~12 %
        # fewer, at 200 a second they starved (pacslb makes a few a second at most).
        self._locks = {False: threading.Lock(), True: threading.Lock()}
        self._text: Any = None
        self._json: Any = None
        self.via = "libnftables"
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
        except OSError:
            if shutil.which("nft") is None:
                raise EngineError(
                    "nftables is not installed (neither libnftables.so.1 nor nft): "
                    "apt-get install nftables"
                ) from None
            self.via = "nft"
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._text = self._context(0)
        self._json = self._context(NFT_CTX_OUTPUT_JSON)

    def _context(self, flags: int) -> Any:
        ctx = self._lib.nft_ctx_new(0)
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        self._lib.nft_ctx_output_set_flags(ctx, flags)
        return ctx

    def run(self, script: str) -> str:
        """Run a script as one transaction: all of it takes effect, or none of it."""
        return self._run(script, json_output=False)

    def json(self, command: str) -> Any:
        """A listing command's JSON output, parsed (`list table ip pacslb`)."""
        out = self._run(command, json_output=True)
        return json.loads(out) if out.strip() else {"nftables": []}

    def _run(self, script: str, json_output: bool) -> str:
        if self._lib is None:
            args = ["nft", "-j", "-f", "-"] if json_output else ["nft", "-f", "-"]
            done = subprocess.run(args, input=script, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise EngineError(f"nft: {_first_error(done.stderr)}")
            return done.stdout
        ctx = self._json if json_output else self._text
        with self._locks[json_output]:  # one call at a time per context
            rc = self._lib.nft_run_cmd_from_buffer(ctx, script.encode())
            out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        if rc != 0:
            raise EngineError(f"nftables: {_first_error(err)}")
        return out


def _first_error(text: str) -> str:
    """nft's message is three lines per error (text, the line, carets); keep the first few."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error:" in ln] or lines
    return " | ".join(errors[:3]) or "failed without a message"
