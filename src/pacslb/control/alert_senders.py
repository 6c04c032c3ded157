"""The alert channels' I/O: one message to the SMTP relay, the syslog collector, the webhook.

Each `send()` makes one attempt: it returns (delivered) or raises DeliveryFailed with a reason
a person can act on, and whether the reason may pass (worth another attempt later); the
caller (control/alerts.py) bounds it with the channel's timeout and retries it. Blocking client
libraries (smtplib, urllib: the standard library's, no extra dependency) run in threads of
the channel's own (at most MAX_THREADS), so a relay that hangs holds those and never the event
loop, the health checks, another channel or the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import smtplib
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Protocol

from pacslb import __version__
from pacslb.config_alerts import EmailAlerts, SyslogAlerts, WebhookAlerts
from pacslb.core.alerts import UDP_LIMIT, Message, local_syslog_line, octet_counted, rfc5424


class DeliveryFailed(Exception):
    """The channel did not take the message: the reason, for the `alert` event; `passing`
    when another attempt later may succeed (a relay restarting, a 4xx, a reset)."""

    def __init__(self, reason: str, passing: bool = False) -> None:
        super().__init__(reason)
        self.passing = passing


# A peer restarting, busy or briefly unreachable; the local socket gone while syslog restarts
PASSING_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ENOENT,
        errno.EAGAIN,
        errno.ENOBUFS,
    }
)


def passing(exc: BaseException) -> bool:
    """Whether an I/O error may pass by itself: worth another attempt later. A certificate
    that does not verify, a name that does not resolve, TLS spoken to a plain port do not."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return True  # the peer went away mid-handshake: a restart
    if isinstance(exc, ssl.SSLError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):  # refused, reset (errno or not)
        return True
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN  # the resolver could not answer now
    return isinstance(exc, OSError) and exc.errno in PASSING_ERRNOS


class Sender(Protocol):
    name: str
    timeout: float  # one attempt
    retries: int
    backoff: float

    async def send(self, message: Message) -> None: ...

    def close(self) -> None: ...


def _tls_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _secret(path: Path) -> str:
    """A password or token from its file (read at each delivery: a rotated secret needs no
    restart); its first line, without the newline an editor adds."""
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise DeliveryFailed(f"cannot read {path}: {exc}") from None


MAX_THREADS = 4  # a channel's blocking deliveries still running (a hung relay) before it refuses


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook's redirect is not followed: urllib would send the next request as a GET
    without the alert (and count it delivered) and carry the Authorization header to whatever
    host the Location names. Returning None makes the 3xx an HTTPError, said as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Threaded:
    """A sender whose blocking client runs in threads of its own, daemon threads: one stuck on
    a hung relay ends by its socket timeout and never holds up the process's exit (an executor's
    threads are joined at exit)."""

    def __init__(self, name: str) -> None:
        self.thread_name = f"alert-{name}"
        self._running = 0

    async def _run(self, call: Any, *args: Any) -> Any:
        if self._running >= MAX_THREADS:
            raise DeliveryFailed(f"{self._running} earlier deliveries still hang; not tried")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            self._running -= 1
            if future.done():  # the caller's timeout came first
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def work() -> None:
            result, error = None, None
            try:
                result = call(*args)
            except BaseException as exc:  # handed to the awaiting task, as an executor would
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, result, error)

        self._running += 1
        threading.Thread(target=work, name=self.thread_name, daemon=True).start()
        return await future

    def close(self) -> None:
        pass  # a thread still running ends by its own socket timeout


class EmailSender(_Threaded):
    name = "email"

    def __init__(self, settings: EmailAlerts) -> None:
        super().__init__(self.name)
        self.settings = settings
        self.timeout, self.retries, self.backoff = (
            settings.timeout,
            settings.retries,
            settings.backoff,
        )

    async def send(self, message: Message) -> None:
        await self._run(self._deliver, message)

    def _mail(self, message: Message) -> EmailMessage:
        mail = EmailMessage()
        # One line: a certificate's file name may hold a line break, which the email package
        # refuses in a header (every mail naming it would fail) and must not start another.
        mail["Subject"] = " ".join(message.title.split())
        mail["From"] = self.settings.sender
        mail["To"] = ", ".join(self.settings.recipients)
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = make_msgid(domain=self.settings.sender.rpartition("@")[2])
        mail["X-Pacslb-State"] = message.state
        mail.set_content(message.text())
        return mail

    def _deliver(self, message: Message) -> None:
        s = self.settings
        context = _tls_context(s.tls_verify, s.ca_file)
        # smtplib's timeout bounds each socket operation; the caller bounds the whole delivery
        timeout = s.timeout
        try:
            smtp: smtplib.SMTP
            if s.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    s.host, s.effective_port(), timeout=timeout, context=context
                )
            else:
                smtp = smtplib.SMTP(s.host, s.effective_port(), timeout=timeout)
            with smtp:
                smtp.ehlo()
                if s.security == "starttls":
                    smtp.starttls(context=context)  # refuses if the relay does not offer it
                    smtp.ehlo()
                if s.username is not None and s.password_file is not None:
                    smtp.login(s.username, _secret(s.password_file))
                refused = smtp.send_message(self._mail(message))
            if refused:  # the others took it: a retry would mail them twice
                raise DeliveryFailed(f"recipients refused: {', '.join(sorted(refused))}")
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryFailed(f"the relay does not offer it: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            # RFC 5321 §4.2.1: 4yz is a transient negative reply, 5yz a permanent one
            reason = f"the relay answered {exc.smtp_code} {text}".strip()
            raise DeliveryFailed(reason, 400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            reason = f"recipients refused: {', '.join(sorted(exc.recipients))} ({codes})"
            raise DeliveryFailed(reason, all(400 <= c < 500 for c in codes)) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise DeliveryFailed(
                f"SMTP: {exc or 'the relay closed the connection'}", True
            ) from None
        except smtplib.SMTPException as exc:
            raise DeliveryFailed(f"SMTP: {exc}") from None
        except TimeoutError:
            reason = f"no answer from {s.host}:{s.effective_port()}"
            raise DeliveryFailed(reason, True) from None
        except ssl.SSLError as exc:
            raise DeliveryFailed(f"TLS with {s.host}: {exc.reason or exc}", passing(exc)) from None
        except OSError as exc:
            reason = f"{s.host}:{s.effective_port()}: {exc.strerror or exc}"
            raise DeliveryFailed(reason, passing(exc)) from None


class SyslogSender:
    name = "syslog"

    def __init__(self, settings: SyslogAlerts) -> None:
        self.settings = settings
        self.timeout, self.retries, self.backoff = (
            settings.timeout,
            settings.retries,
            settings.backoff,
        )
        self.hostname = socket.gethostname()

    def close(self) -> None:
        pass

    def frame(self, message: Message) -> bytes:
        """RFC 5424 for a collector; the local socket's own format for /dev/log (what
        journald and rsyslog's imuxsock parse there, as glibc's syslog(3) writes it)."""
        s = self.settings
        if s.transport == "local":
            now = datetime.now().astimezone()  # local time, as syslog(3) stamps it
            return local_syslog_line(message, s.facility, s.app_name, os.getpid(), now)
        now = datetime.now(UTC)
        return rfc5424(message, s.facility, s.app_name, self.hostname, os.getpid(), now)

    async def send(self, message: Message) -> None:
        s = self.settings
        line = self.frame(message)
        try:
            if s.transport == "local":
                await self._datagram(line)  # one datagram, no octet counting
            elif s.transport == "udp":
                await self._datagram(line[:UDP_LIMIT])
            else:
                await self._stream(octet_counted(line))
        except ssl.SSLError as exc:
            raise DeliveryFailed(f"TLS with {s.host}: {exc.reason or exc}", passing(exc)) from None
        except OSError as exc:
            where = s.socket if s.transport == "local" else f"{s.host}:{s.effective_port()}"
            raise DeliveryFailed(f"{where}: {exc.strerror or exc}", passing(exc)) from None

    async def _datagram(self, line: bytes) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        if s.transport == "local":
            family, address = socket.AF_UNIX, str(s.socket)
            target: Any = address
        else:
            assert s.host is not None  # the model requires it
            infos = await loop.getaddrinfo(s.host, s.effective_port(), type=socket.SOCK_DGRAM)
            family, target = infos[0][0], infos[0][4]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, target)
            await loop.sock_sendall(sock, line)

    async def _stream(self, frame: bytes) -> None:
        s = self.settings
        context = _tls_context(s.tls_verify, s.ca_file) if s.transport == "tls" else None
        _, writer = await asyncio.open_connection(s.host, s.effective_port(), ssl=context)
        try:
            writer.write(frame)
            await writer.drain()
        finally:
            writer.close()
            # written and flushed: the collector closing first is no failure
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


class WebhookSender(_Threaded):
    name = "webhook"

    def __init__(self, settings: WebhookAlerts) -> None:
        super().__init__(self.name)
        self.settings = settings
        self.timeout, self.retries, self.backoff = (
            settings.timeout,
            settings.retries,
            settings.backoff,
        )
        # What a failure names: scheme, host and port. Receivers such as Teams or Slack hold
        # the secret in the path, and a reason goes to events, the journal and the WebUI.
        parts = urllib.parse.urlsplit(settings.url)
        self.where = f"{parts.scheme}://{parts.netloc}"

    async def send(self, message: Message) -> None:
        await self._run(self._post, message.to_json())

    def _post(self, body: bytes) -> None:
        s = self.settings
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"pacslb/{__version__}",
            **s.headers,
        }
        if s.token_file is not None:
            headers["Authorization"] = f"Bearer {_secret(s.token_file)}"
        request = urllib.request.Request(s.url, data=body, headers=headers, method="POST")
        handlers: list[Any] = [_NoRedirect()]
        if s.url.startswith("https:"):
            handlers.append(
                urllib.request.HTTPSHandler(context=_tls_context(s.tls_verify, s.ca_file))
            )
        try:
            with urllib.request.build_opener(*handlers).open(request, timeout=s.timeout) as answer:
                answer.read(65536)
        except urllib.error.HTTPError as exc:
            # 3xx and 4xx (but 408, 429) say the request is wrong: sending it again won't help
            again = exc.code >= 500 or exc.code in (408, 429)
            moved = " (a redirect, not followed: set url to where it points)"
            reason = f"HTTP {exc.code} {exc.reason}{moved if 300 <= exc.code < 400 else ''}"
            raise DeliveryFailed(reason, again) from None
        except urllib.error.URLError as exc:
            cause = exc.reason
            text = getattr(cause, "strerror", None) or str(cause)
            again = isinstance(cause, BaseException) and passing(cause)
            raise DeliveryFailed(f"{self.where}: {text}", again) from None
        except TimeoutError:
            raise DeliveryFailed(f"{self.where}: no answer in {s.timeout:g} s", True) from None
        except OSError as exc:
            raise DeliveryFailed(f"{self.where}: {exc.strerror or exc}", passing(exc)) from None


def senders(
    email: EmailAlerts | None, syslog: SyslogAlerts | None, webhook: WebhookAlerts | None
) -> list[Sender]:
    out: list[Sender] = []
    if email is not None:
        out.append(EmailSender(email))
    if syslog is not None:
        out.append(SyslogSender(syslog))
    if webhook is not None:
        out.append(WebhookSender(webhook))
    return out
