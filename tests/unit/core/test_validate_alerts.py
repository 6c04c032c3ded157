"""node.alerts: every mistake in one pass of `pacslb check`, and secret files others may read.

Before, the rules between fields (AUTH over an unencrypted connection, a username without its
password_file, a collector's transport without its host) came only once every field was valid,
and a missing password_file or token_file only once the whole node was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacslb.cli import main
from pacslb.core.validate import load_text
from pacslb.core.validate_alerts import secret_file_warnings
from pacslb.errors import ConfigError

SEVERAL = """version: 1
node:
  alerts:
    email: {host: r, sender: 'Me <a@b.c>', recipients: [x@y.z], security: none,
            username: u, password_file: /nonexistent/pw}
    syslog: {transport: tcp, app_name: 'two words'}
    webhook: {url: 'http://h/', token_file: /nonexistent/token, headers: {Cookie: x}}
"""


def test_every_alert_mistake_is_named_in_one_pass() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(SEVERAL, "pacslb.yaml", file_exists=lambda p: p.exists())
    expected = [
        ("node.alerts.email.sender", "'Me <a@b.c>' is not a mail address"),
        ("node.alerts.email.username", "AUTH over an unencrypted connection would send"),
        ("node.alerts.email.password_file", "no such file: /nonexistent/pw"),
        ("node.alerts.syslog.host", "transport tcp needs the collector's host"),
        ("node.alerts.syslog.app_name", "'two words': APP-NAME is"),
        ("node.alerts.webhook.headers", "Cookie: a credential does not go in the config"),
        ("node.alerts.webhook.token_file", "no such file: /nonexistent/token"),
    ]
    problems = sorted(caught.value.problems, key=lambda p: p.path)
    assert [p.path for p in problems] == sorted(path for path, _ in expected)
    for problem in problems:
        start = dict(expected)[problem.path]
        assert problem.message.startswith(start), problem
        assert problem.line is not None  # each with its line of the file


def test_a_username_needs_its_password_file_beside_other_mistakes() -> None:
    text = SEVERAL.replace("security: none,", "security: tls,").replace(
        ", password_file: /nonexistent/pw", ""
    )
    with pytest.raises(ConfigError) as caught:
        load_text(text, "pacslb.yaml", file_exists=lambda p: p.exists())
    messages = [str(p) for p in caught.value.problems]
    assert any(
        m.startswith("node.alerts.email.password_file (line 4): username and password_file go")
        for m in messages
    ), messages
    assert len(messages) == 6  # the sender's, syslog's two, the webhook's two


def test_a_value_refused_is_not_looked_up_as_a_file_too() -> None:
    text = "version: 1\nnode: {alerts: {webhook: {url: 'ftp://h/', token_file: [a, b]}}}\n"
    with pytest.raises(ConfigError) as caught:
        load_text(text, "pacslb.yaml", file_exists=lambda p: p.exists())
    assert [p.path for p in caught.value.problems] == [
        "node.alerts.webhook.url",
        "node.alerts.webhook.token_file",
    ]
    assert "no such file" not in str(caught.value)


def test_secret_files_others_may_read_are_warned_of_not_a_ca_bundle() -> None:
    alerts = {
        "email": {"password_file": "/s/pw", "ca_file": "/s/ca.pem"},
        "webhook": {"token_file": "/s/token"},
    }
    modes = {"/s/pw": 0o100640, "/s/ca.pem": 0o100644, "/s/token": 0o100600}
    (warning,) = secret_file_warnings(alerts, lambda p: modes[str(p)])
    assert warning.path == "node.alerts.email.password_file"
    assert "(mode 0640)" in warning.message and "chmod 600 /s/pw" in warning.message
    assert secret_file_warnings(alerts, lambda p: None) == []  # unreadable: not judged here


def test_check_warns_of_a_readable_password_file_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    config = tmp_path / "pacslb.yaml"
    config.write_text(
        "version: 1\nnode:\n  alerts:\n    email: {host: relay, sender: lb@h.example, "
        "recipients: [ops@h.example], username: lb, password_file: smtp-password}\n"
    )
    assert main(["check", str(config)]) == 0
    err = capsys.readouterr().err
    assert "warning: node.alerts.email.password_file" in err and "(mode 0644)" in err
    assert main(["check", "--json", str(config)]) == 0
    (warning,) = json.loads(capsys.readouterr().out)["warnings"]
    assert warning["path"] == "node.alerts.email.password_file"
    secret.chmod(0o600)
    assert main(["check", str(config)]) == 0
    assert "warning" not in capsys.readouterr().err
