"""core/alerts.py with a fake clock: which events alert, grouping, the rate limit, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tests.integration.alert_peers import parse_local_syslog, parse_rfc5424

from pacslb.config_alerts import ALERT_TOPICS
from pacslb.core.alerts import (
    Change,
    Gate,
    Grouper,
    Intake,
    OpenProblems,
    change_of,
    compose,
    delivery_test_message,
    expiry_changes,
    local_syslog_line,
    octet_counted,
    rfc5424,
)
from pacslb.core.ha_role import Role
from pacslb.core.validate import load_text

AT = "2026-12-07T01:00:00.000+00:00"


def health(server: str, previous: str, current: str) -> Change | None:
    data = {"previous": previous, "current": current, "ok": current == "up"}
    message = f"{previous} -> {current}: connect refused"
    return change_of("health", message, "Rack", server, data, AT, ALERT_TOPICS)


def test_an_open_problem_is_resolved_by_a_recheck_and_by_removal() -> None:
    """A check edited while its server is down starts from unknown again (control/checker.py)."""
    still_open = OpenProblems()
    down = health("S1", "up", "down")
    assert down is not None
    still_open.note(down)
    data = {"previous": "unknown", "current": "down", "ok": False}
    recheck = ("health", "unknown -> down", "Rack", "S1", data, AT, ALERT_TOPICS)
    assert change_of(*recheck, still_open) is None  # said already
    up = {"previous": "unknown", "current": "up", "ok": True}
    back = change_of("health", "unknown -> up", "Rack", "S1", up, AT, ALERT_TOPICS, still_open)
    assert back is not None and back.state == "resolved", back
    assert change_of("health", "unknown -> up", "Rack", "S1", up, AT, ALERT_TOPICS) is None
    still_open.note(back)
    assert "Rack/S1" not in still_open and still_open.removed(set(), AT) == []
    still_open.note(down)
    gone = still_open.removed({"Rack/S2"}, AT)
    assert gone == [Change("health", "Rack/S1", "resolved", "no longer in the configuration", AT)]


def test_which_events_alert() -> None:
    assert health("S1", "up", "down") == Change(
        "health", "Rack/S1", "problem", "up -> down: connect refused", AT
    )
    assert health("S1", "down", "up").state == "resolved"  # type: ignore[union-attr]
    assert health("S1", "unknown", "up") is None  # first sight of a server: nothing to say
    admin = {"previous": "online", "state": "halt"}
    assert change_of("admin", "m", "Rack", "S1", admin, AT, ALERT_TOPICS).state == "problem"  # type: ignore[union-attr]
    admin = {"previous": "online", "state": "drain"}
    assert change_of("admin", "m", "Rack", "S1", admin, AT, ALERT_TOPICS).state == "notice"  # type: ignore[union-attr]
    engine = {"engine": "kernel", "error": "nft: No such file"}
    assert change_of("engine", "m", "", "", engine, AT, ALERT_TOPICS).subject == "kernel"  # type: ignore[union-attr]
    back = change_of("engine", "m", "", "", {"engine": "kernel", "recovered": True}, AT, ["engine"])
    assert back is not None and back.state == "resolved"
    ha = {"previous": "active", "role": "fault", "vrrp": "FAULT"}
    assert change_of("ha", "m", "", "", ha, AT, ALERT_TOPICS).state == "problem"  # type: ignore[union-attr]
    ha = {"previous": "fault", "role": "passive", "vrrp": "BACKUP"}
    assert change_of("ha", "m", "", "", ha, AT, ALERT_TOPICS).state == "resolved"  # type: ignore[union-attr]
    failed = {"role": "active"}  # control/ha.py: the addresses could not be taken
    assert change_of("ha", "role active: ...", "", "", failed, AT, ALERT_TOPICS).state == "problem"  # type: ignore[union-attr]
    # control/ha.py: HA cannot run, keepalived exited (the role is stopped: no VRRP line says it)
    cannot = {"problem": "keepalived is not installed (apt install keepalived)"}
    assert (
        change_of("ha", "HA cannot run: ...", "", "", cannot, AT, ALERT_TOPICS).state == "problem"
    )  # type: ignore[union-attr]
    exited = {"code": 1, "removed": ["198.18.0.100/32"]}
    assert (
        change_of("ha", "keepalived exited", "", "", exited, AT, ALERT_TOPICS).subject
        == "this node"
    )  # type: ignore[union-attr]
    assert (
        change_of("ha", "keepalived started (pid 42)", "", "", {"pid": 42}, AT, ALERT_TOPICS)
        is None
    )
    assert change_of("config", "applying revision 3", "", "", {}, AT, ALERT_TOPICS) is None
    assert change_of("health", "m", "Rack", "S1", {"current": "down"}, AT, ["admin"]) is None


def test_a_rack_going_down_within_the_window_is_one_message() -> None:
    grouper = Grouper(window=5.0, node="lb1")
    for i in range(20):
        change = health(f"S{i:02d}", "up", "down")
        assert change is not None
        grouper.add(change, now=100.0 + i * 0.01)
    assert grouper.due(104.9) is None  # the window is still open
    message = grouper.due(105.0)
    assert message is not None and grouper.due(200.0) is None
    assert message.state == "problem" and len(message.lines) == 20
    assert message.title == (
        "[pacslb lb1] PROBLEM: 20 problem: Rack/S00, Rack/S01, Rack/S02 and 17 more"
    )
    assert message.text().count("PROBLEM   Rack/S") == 20


def test_a_server_flapping_within_the_window_is_one_line() -> None:
    grouper = Grouper(window=10.0, node="lb1")
    for t, (a, b) in enumerate([("up", "down"), ("down", "up"), ("up", "down"), ("down", "up")]):
        grouper.add(health("S1", a, b), float(t))  # type: ignore[arg-type]
    message = grouper.due(10.0)
    assert message is not None
    (line,) = message.lines
    assert (line.state, line.changes) == ("notice", 4)
    assert "(changed 4 times)" in message.text()
    assert message.title.startswith("[pacslb lb1] NOTICE")


def test_recoveries_only_are_resolved() -> None:
    ups = [c for c in (health("S1", "down", "up"), health("S2", "down", "up")) if c]
    message = compose(ups, "lb1")
    assert message.state == "resolved" and message.title.startswith("[pacslb lb1] RESOLVED: 2")


def test_window_zero_sends_each_change_at_once() -> None:
    grouper = Grouper(window=0.0, node="lb1")
    grouper.add(health("S1", "up", "down"), 7.0)  # type: ignore[arg-type]
    assert grouper.due(7.0) is not None


def test_rate_limit_holds_then_merges() -> None:
    gate = Gate(limit=2, period=60.0)
    msgs = [compose([health(f"S{i}", "up", "down")], "lb1") for i in range(5)]  # type: ignore[list-item]
    assert gate.offer(msgs[0], 0.0) is msgs[0]
    assert gate.offer(msgs[1], 1.0) is msgs[1]
    assert gate.offer(msgs[2], 2.0) is None  # third in the minute: held
    assert gate.offer(msgs[3], 3.0) is None
    assert gate.holding == 2 and gate.next_due() == 60.0
    assert gate.due(59.9) is None
    merged = gate.due(60.0)
    assert merged is not None and merged.held == 2
    assert [ln.subject for ln in merged.lines] == ["Rack/S2", "Rack/S3"]
    assert "2 messages held by the rate limit" in merged.text()
    assert gate.offer(msgs[4], 61.0) is msgs[4]  # 0 s and 1 s have left the period


def test_no_rate_limit() -> None:
    gate = Gate(limit=0)
    message = delivery_test_message("lb1", AT)
    assert all(gate.offer(message, 0.0) is message for _ in range(100))


def test_certificate_expiry_alerts_once_per_threshold() -> None:
    now = datetime(2026, 12, 7, tzinfo=UTC)
    expires = now + timedelta(days=40)
    sent: set[tuple[str, datetime, int]] = set()
    days = [30, 7, 1]
    assert expiry_changes([("web.pem", expires)], now, days, sent) == []
    later = now + timedelta(days=11)  # 29 days left
    (first,) = expiry_changes([("web.pem", expires)], later, days, sent)
    assert first.subject == "web.pem" and "expires in 29 days" in first.text
    assert expiry_changes([("web.pem", expires)], later + timedelta(hours=1), days, sent) == []
    # Off for three weeks: 2 days left crosses 7 once (not 30 again)
    (second,) = expiry_changes([("web.pem", expires)], now + timedelta(days=38), days, sent)
    assert "expires in 2 days" in second.text
    (third,) = expiry_changes([("web.pem", expires)], now + timedelta(days=39, hours=1), days, sent)
    assert "23 hours" in third.text
    (gone,) = expiry_changes([("web.pem", expires)], now + timedelta(days=41), [30, 7, 1, 0], sent)
    assert gone.text.startswith("expired on 2027-01-16")
    # A renewed certificate (a new notAfter) starts over
    renewed = expires + timedelta(days=365)
    assert expiry_changes([("web.pem", renewed)], now + timedelta(days=41), days, sent) == []


def test_rfc5424_line_parses_strictly() -> None:
    change = Change("health", 'Rack/S]1"', "problem", "up -> down: naïve ]\\ reason", AT)
    message = compose([change], "lb1")
    now = datetime(2026, 12, 7, 1, 2, 3, 456000, tzinfo=UTC)
    line = rfc5424(message, "local4", "pacslb", "lb 1", 4242, now)
    parsed = parse_rfc5424(line)
    assert parsed["facility"] == 20 and parsed["severity"] == 3
    assert parsed["timestamp"] == "2026-12-07T01:02:03.456Z"
    assert (parsed["hostname"], parsed["procid"], parsed["msgid"]) == ("lb1", "4242", "PROBLEM")
    assert parsed["sd"] == {
        "alert@32473": {
            "state": "problem",
            "problem": "1",
            "notice": "0",
            "resolved": "0",
            "held": "0",
        }
    }
    assert 'Rack/S]1"' in parsed["msg"] and "na\\xefve" in parsed["msg"]
    assert line.isascii()
    assert octet_counted(b"abc") == b"3 abc"


def test_local_socket_line_is_what_syslog3_writes() -> None:
    change = Change("health", "Rack/Srv1", "resolved", "down -> up: naïve\nok", AT)
    now = datetime(2026, 3, 7, 1, 2, 3, 456000)  # local time: the day padded with a space
    line = local_syslog_line(compose([change], "lb1"), "daemon", "pacslb", 4242, now)
    assert line.startswith(b"<29>Mar  7 01:02:03 pacslb[4242]: [pacslb lb1] RESOLVED: "), line
    parsed = parse_local_syslog(line)
    assert (parsed["facility"], parsed["severity"], parsed["day"]) == (3, 5, 7)
    assert parsed["msg"].endswith("Rack/Srv1: down -> up: na\\xefve ok"), parsed


@pytest.mark.parametrize(
    ("alerts", "problem"),
    [
        (
            "{email: {host: r, sender: a@b.c, recipients: [x@y.z], username: u}}",
            "node.alerts.email.password_file (line 2): username and password_file go together",
        ),
        (
            "{email: {host: r, sender: a@b.c, recipients: [x@y.z], username: u, "
            "password_file: /p, security: none}}",
            "node.alerts.email.username (line 2): AUTH over an unencrypted connection",
        ),
        ("{email: {host: r, sender: 'Me <a@b.c>', recipients: [x@y.z]}}", "not a mail address"),
        ("{syslog: {transport: tcp}}", "transport tcp needs the collector's host"),
        ("{syslog: {app_name: 'two words'}}", "APP-NAME is 1-48 visible ASCII"),
        ("{syslog: {app_name: 'pacs[lb]'}}", "no ':', '[' or ']' with transport local"),
        ("{webhook: {url: 'http://h/', headers: {'Bad Name': x}}}", "is not a header name"),
        ("{webhook: {url: 'https://u:pw@h/hook'}}", "no user or password in the url"),
        ("{webhook: {url: 'http://h/', headers: {authorization: 'Bearer x'}}}", "token_file"),
        ("{events: [health, disk]}", "node.alerts.events[1]"),
        ("{group_windw: 3}", "did you mean 'group_window'"),
        ("{webhook: {url: 'http://h/', token_file: /nonexistent/token}}", "no such file"),
    ],
)
def test_bad_alert_settings_are_named(alerts: str, problem: str) -> None:
    from pacslb.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_text(f"version: 1\nnode: {{alerts: {alerts}}}\n", file_exists=lambda p: p.exists())
    assert problem in str(caught.value), str(caught.value)


def test_held_messages_are_merged_as_they_come_not_kept_one_by_one() -> None:
    """An hour past the limit with group_window 0 and a rack flapping: every change is a
    message, and all are held. Memory must stay bounded by the servers, not the changes."""
    import gc
    import tracemalloc

    gate = Gate(limit=1, period=3600.0)
    assert gate.offer(compose([health("S0", "up", "down")], "lb1"), 0.0) is not None  # type: ignore[list-item]
    flaps = [health(f"S{i % 20}", *("up", "down") if i % 2 else ("down", "up")) for i in range(40)]
    changes = [c for c in flaps if c is not None]
    used = []
    tracemalloc.start()
    try:
        for i in range(6000):  # each a message of its own, as the grouper makes them
            message = compose([changes[i % len(changes)]], "lb1")
            assert gate.offer(message, 1.0 + i * 0.1) is None
            if i in (999, 5999):
                gc.collect()  # garbage waiting for the collector is no growth
                used.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert used[1] - used[0] < 50_000, used  # kept one by one: 1.5 MB more
    assert gate.holding == 6000
    merged = gate.due(3600.0)
    assert merged is not None and merged.held == 6000 and len(merged.lines) == 20
    assert "6000 messages held by the rate limit" in merged.text()


def test_online_after_a_halt_resolves_it() -> None:
    """A halt is a PROBLEM (it cuts connections); putting the server back online closes it,
    or a ticket keyed on PROBLEM/RESOLVED stays open for ever. Other admin moves are notes."""

    def admin(previous: str, state: str) -> str:
        data = {"previous": previous, "state": state}
        change = change_of("admin", f"{previous} -> {state}", "Rack", "S1", data, AT, ["admin"])
        assert change is not None
        return change.state

    assert admin("online", "halt") == "problem"
    assert admin("halt", "online") == "resolved"
    assert admin("halt", "drain") == "notice"
    assert admin("online", "drain") == "notice" and admin("drain", "online") == "notice"


def test_in_an_ha_pair_the_active_node_speaks_for_the_servers() -> None:
    """Fake clock and role: the passive node notes server changes and says none; it says its
    own (ha, engine); taking over, it says which servers are down then and resolves them."""
    intake = Intake(5.0, "lb2")
    assert intake.role(Role.STARTING, 0.0, AT) == []  # HA enabled: not yet speaking
    assert intake.role(Role.PASSIVE, 1.0, AT) == []
    down = health("S1", "up", "down")
    flap = health("S2", "up", "down")
    assert down is not None and flap is not None
    assert intake.add(down, 2.0) is False and intake.add(flap, 2.0) is False
    back = health("S2", "down", "up")
    assert back is not None and intake.add(back, 3.0) is False  # S2 is up again: not open
    halt = change_of(
        "admin", "online -> halt", "Rack", "S3", {"previous": "online", "state": "halt"}, AT,
        ALERT_TOPICS,
    )  # fmt: skip
    assert halt is not None and intake.add(halt, 3.0) is False  # replicated: the active's
    assert intake.grouper.due(100.0) is None
    own = Change("engine", "kernel", "problem", "apply failed", AT)
    assert intake.add(own, 10.0) is True
    message = intake.grouper.due(15.0)
    assert message is not None and [ln.subject for ln in message.lines] == ["kernel"]

    taken = intake.role(Role.ACTIVE, 20.0, "2026-12-07T01:05:00+00:00")
    assert [(c.subject, c.state) for c in taken] == [("Rack/S1", "problem")]
    assert (
        taken[0].text == f"down when this node took over: up -> down: connect refused (since {AT})"
    )
    role = Change("ha", "this node", "notice", "role passive -> active", AT)
    assert intake.add(role, 20.0) is True
    message = intake.grouper.due(25.0)
    assert message is not None and message.title.startswith("[pacslb lb2] PROBLEM: 1 problem, 1")
    assert [ln.subject for ln in message.lines] == ["Rack/S1", "this node"]
    recovered = health("S1", "down", "up")
    assert recovered is not None and intake.add(recovered, 40.0) is True
    message = intake.grouper.due(45.0)
    assert message is not None and message.state == "resolved", message
    assert intake.role(Role.ACTIVE, 50.0, AT) == []  # no change: nothing to add
    assert intake.role(Role.FAULT, 51.0, AT) == []  # handed over: quiet again
    again = health("S1", "up", "down")
    assert again is not None and intake.add(again, 52.0) is False


def test_a_node_not_in_a_pair_says_everything() -> None:
    intake = Intake(0.0, "lb1")
    assert intake.role(Role.STANDALONE, 0.0, AT) == []
    down = health("S1", "up", "down")
    assert down is not None and intake.add(down, 1.0) is True
    message = intake.grouper.due(1.0)
    assert message is not None and message.lines[0].subject == "Rack/S1"
