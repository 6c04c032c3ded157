"""A subject's name goes into the mail's Subject: a certificate's file name is the one that
may hold a line break (a path in YAML can). It must neither add a header (Bcc: ...) nor make
every mail with it fail. aiosmtpd on r18's loopback block (127.10.6.0/24)."""

from __future__ import annotations

import asyncio
import re

from tests.integration.alert_peers import free_port, smtp_relay

from pacslb.config_alerts import EmailAlerts
from pacslb.control.alert_senders import EmailSender
from pacslb.core.alerts import Change, compose

HOST = "127.10.6.23"


def test_a_line_break_in_a_name_adds_no_header_and_fails_no_mail() -> None:
    port = free_port(HOST)
    name = "/etc/pki/web.pem\r\nBcc: someone@elsewhere.example"
    change = Change("certificate", name, "problem", "expires in 5 days", "2026-12-07T03:00:00")
    message = compose([change], "lb1")
    settings = EmailAlerts(
        host=HOST,
        port=port,
        security="none",
        sender="pacslb@lb.example",
        recipients=["pacs-team@hospital.example"],
        timeout=5,
    )
    with smtp_relay(HOST, port) as box:
        asyncio.run(EmailSender(settings).send(message))
        (mail,) = box.mails
    assert mail.get_all("Bcc") is None, mail.items()
    subject = re.sub(r"\r?\n[ \t]", " ", str(mail["Subject"]))  # unfolded (RFC 5322 §2.2.3)
    assert "web.pem Bcc: someone@elsewhere.example" in subject, subject
    assert mail["To"] == "pacs-team@hospital.example"
