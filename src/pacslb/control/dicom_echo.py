"""DICOM C-ECHO health probe: the asyncio shell around `pacslb.core.dicom.EchoClient`.

One association per probe (PS3.8 §7.1): A-ASSOCIATE-RQ, C-ECHO-RQ, read the status, then
A-RELEASE-RQ on success or A-ABORT on anything unexpected. One overall deadline covers the
connect, every read and the release; the writer is always closed. Every network outcome is an
`EchoOutcome` whose reason names what happened; this function does not raise for them.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from pacslb.core.dicom import (
    Aborted,
    Accepted,
    ContextRejected,
    EchoClient,
    EchoResponse,
    Event,
    PeerClosed,
    Rejected,
    Released,
    State,
)
from pacslb.errors import ProtocolError

__all__ = ["EchoOutcome", "dicom_echo"]

READ_SIZE = 65536
CLOSE_WAIT = 0.2  # seconds granted to wait_closed(); then the transport is dropped


@dataclass(frozen=True, slots=True)
class EchoOutcome:
    ok: bool
    reason: str  # "dicom-echo: ..." naming exactly what happened
    latency: float  # seconds from the call to the answer that decided the outcome


class _Failed(Exception):
    """Ends a probe early with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Probe:
    def __init__(self, client: EchoClient, started: float) -> None:
        self.client = client
        self.started = started
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.answered: float | None = None  # loop time of the successful C-ECHO-RSP

    async def connect(self, host: str, port: int) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            raise _Failed("connection refused") from None
        except socket.gaierror as exc:
            raise _Failed(f"cannot resolve {host!r}: {exc.strerror}") from None
        except OSError as exc:
            raise _Failed(f"cannot connect: {exc.strerror or exc}") from None

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> Event:
        assert self.reader is not None
        # Bounded by the caller's deadline and by end of stream (which yields PeerClosed).
        while True:
            event = self.client.next_event()
            if event is not None:
                return event
            self.client.receive_data(await self.reader.read(READ_SIZE))

    async def converse(self) -> str:
        """Runs the association; returns the success text or raises _Failed."""
        await self.send(self.client.start())
        event = await self.next_event()
        if not isinstance(event, Accepted):
            raise _unexpected(event)
        await self.send(self.client.echo_request())
        event = await self.next_event()
        if not isinstance(event, EchoResponse):
            raise _unexpected(event)
        if event.status != 0x0000:  # PS3.7 §9.1.5.1.4: only 0x0000 is success for C-ECHO
            raise _Failed(f"C-ECHO status 0x{event.status:04x}")
        loop = asyncio.get_running_loop()
        self.answered = loop.time()
        return f"C-ECHO success in {(self.answered - self.started) * 1000:.1f} ms"

    async def release(self) -> str:
        """A-RELEASE-RQ and wait for the RP; returns "" or a note on what went wrong."""
        try:
            await self.send(self.client.release_request())
            event = await self.next_event()
        except ProtocolError as exc:
            return f" ({exc} after the C-ECHO)"
        except OSError as exc:
            return f" ({_os_error(exc)} before A-RELEASE-RP)"
        if isinstance(event, Released):
            return ""
        return f" ({_unexpected(event).reason} after the C-ECHO)"

    async def close(self) -> None:
        writer = self.writer
        if writer is None:
            return
        try:
            # An association still open here ended unexpectedly (timeout, protocol error, a
            # failure status): say so with an A-ABORT (PS3.8 §7.3.1) rather than a bare close.
            if self.client.state not in (State.IDLE, State.CLOSED) and not writer.is_closing():
                writer.write(self.client.abort())
            writer.close()
            async with asyncio.timeout(CLOSE_WAIT):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()


def _unexpected(event: Event) -> _Failed:
    match event:
        case Rejected(text=text):
            return _Failed(f"association rejected ({text})")
        case Aborted(text=text):
            return _Failed(f"association aborted by peer ({text})")
        case ContextRejected(text=text):
            return _Failed(f"presentation context rejected ({text})")
        case PeerClosed(waiting_for=waiting_for):
            return _Failed(f"peer closed the connection before {waiting_for}")
        case _:
            return _Failed(f"unexpected {type(event).__name__}")


async def dicom_echo(
    host: str, port: int, called_ae: str, calling_ae: str, timeout: float
) -> EchoOutcome:
    """One C-ECHO against host:port within `timeout` seconds; never raises for network outcomes."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        client = EchoClient(called_ae, calling_ae)
    except ValueError as exc:
        return EchoOutcome(False, f"dicom-echo: {exc}", 0.0)
    probe = _Probe(client, started)
    try:
        try:
            async with asyncio.timeout(timeout):
                await probe.connect(host, port)
                text = await probe.converse()
        except _Failed as failed:
            return EchoOutcome(False, f"dicom-echo: {failed.reason}", loop.time() - started)
        except TimeoutError:
            waiting = "connecting" if probe.writer is None else f"waiting for {client.waiting_for}"
            reason = f"dicom-echo: timed out after {timeout:g} s {waiting}"
            return EchoOutcome(False, reason, loop.time() - started)
        except ProtocolError as exc:
            return EchoOutcome(False, f"dicom-echo: {exc}", loop.time() - started)
        except OSError as exc:
            reason = f"dicom-echo: {_os_error(exc)} before {client.waiting_for}"
            return EchoOutcome(False, reason, loop.time() - started)

        # The C-ECHO answered: the release is politeness, so a slow or odd one only adds a note.
        assert probe.answered is not None
        latency = probe.answered - started
        try:
            async with asyncio.timeout_at(started + timeout):
                text += await probe.release()
        except TimeoutError:
            text += f" (no A-RELEASE-RP within the {timeout:g} s deadline)"
        return EchoOutcome(True, f"dicom-echo: {text}", latency)
    finally:
        await probe.close()


def _os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionResetError):
        return "peer reset the connection"
    return str(exc.strerror or exc)
