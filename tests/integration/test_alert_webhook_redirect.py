"""A webhook receiver that answers with a redirect (an http:// URL moved to https://, a proxy
sending clients elsewhere): urllib would follow it, turn the POST into a GET without the
alert and carry the bearer token to whatever host the Location names, and the alert would
count as delivered. It must fail, say so, and send nothing to the other host. Real HTTP
servers on r18's loopback block (127.10.6.0/24)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.alert_peers import free_port

from pacslb.config_alerts import WebhookAlerts
from pacslb.control.alert_senders import DeliveryFailed, WebhookSender
from pacslb.core.alerts import delivery_test_message

HOST = "127.10.6.21"


@contextlib.contextmanager
def http_server(answer: tuple[int, dict[str, str]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Answers every request with `answer` (status, headers); records method, path, headers."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length) if length else b""
            seen.append({"method": self.command, "headers": dict(self.headers), "body": body})
            status, headers = answer
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _any

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port(HOST)
    server = ThreadingHTTPServer((HOST, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_redirect_is_not_followed_and_the_token_stays_home(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with (
        http_server((200, {})) as (elsewhere, other_seen),
        http_server((302, {"Location": f"http://{HOST}:{elsewhere}/landing"})) as (port, seen),
    ):
        settings = WebhookAlerts(
            url=f"http://{HOST}:{port}/hook", token_file=token, retries=2, backoff=0.05
        )
        sender = WebhookSender(settings)
        message = delivery_test_message("lb1", "2026-12-07T03:00:00+00:00")
        try:
            asyncio.run(sender.send(message))
        except DeliveryFailed as exc:
            reason, passing = str(exc), exc.passing
        else:
            reason, passing = "", True
    assert "302" in reason and "redirect" in reason, reason
    assert len(seen) == 1 and not passing, seen  # a redirect is no failure a retry mends
    assert seen[0]["method"] == "POST" and seen[0]["body"] == message.to_json()
    assert other_seen == [], other_seen  # neither the alert nor the token went there


def test_a_failure_names_the_receiver_but_not_the_urls_secret_path() -> None:
    """Receivers such as Teams or Slack put the secret in the URL's path: a failure's reason
    (an event, the journal, the API, the WebUI) names the host and port only."""
    port = free_port(HOST)  # nobody listens
    url = f"http://{HOST}:{port}/hooks/T0001/B0002/s3cretpart?key=s3cretkey"
    sender = WebhookSender(WebhookAlerts(url=url, retries=0))
    message = delivery_test_message("lb1", "2026-12-07T03:00:00+00:00")
    try:
        asyncio.run(sender.send(message))
    except DeliveryFailed as exc:
        reason = str(exc)
    assert reason.startswith(f"http://{HOST}:{port}: "), reason
    assert "Connection refused" in reason and "s3cret" not in reason, reason
