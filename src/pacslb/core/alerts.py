"""Alerts: which events reach a person, grouped into messages, rate-limited per channel.

Pure: events come in as values, time as `now` (monotonic seconds for windows and limits, a
datetime for certificate expiry), messages go out as values; control/alerts.py does the I/O.

Grouping: the first change opens a window of `group_window` seconds; every change within it
joins the same message, so a rack of twenty servers failing in one second is one message that
lists them, and a server flapping down and up within the window is one line saying so. A
recovery is a "resolved" line (a message of recoveries only is titled RESOLVED). The rate
limit is per channel: past it, messages are held and merged into one that goes out as soon
as the limit allows again, so nothing is lost and nothing floods.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from pacslb.config_alerts import FACILITIES
from pacslb.core.ha_role import Role

State = Literal["problem", "resolved", "notice"]
# RFC 5424 §6.2.1 severities: what each state maps to on syslog
SEVERITY = {"problem": 3, "notice": 5, "resolved": 5}  # err, notice, notice
SYSLOG_FACILITY = {name: code for code, name in enumerate(FACILITIES)}
PEN = 32473  # RFC 5612's documentation enterprise number, for our SD-ID (RFC 5424 §7.2.2)
UDP_LIMIT = 2048  # RFC 5426 §3.2: receivers SHOULD take 2048 octets; longer is truncated


@dataclass(frozen=True, slots=True)
class Change:
    """One alertable change of one subject (a real server, an engine, this node, a file)."""

    topic: str  # health, admin, engine, ha, certificate, test
    subject: str  # e.g. "McK-Radiology_DICOM/McK-Radiology_Srv1"
    state: State
    text: str  # what happened, e.g. "up -> down: connection refused"
    at: str  # when (the event's ISO time)


def change_of(
    kind: str,
    message: str,
    service: str,
    server: str,
    data: Mapping[str, Any],
    at: str,
    topics: Iterable[str],
    open_problems: Container[str] = frozenset(),
) -> Change | None:
    """The alertable change an event says, or None (not a kind that alerts, or not enabled).

    `open_problems`: the servers whose PROBLEM went out with no RESOLVED since. A check edited
    while its server is down starts again from unknown (control/checker.py), so the recovery
    is "unknown -> up" and a still-down server is "unknown -> down" once more: the first must
    resolve the open problem, the second is no new one."""
    if kind not in topics:
        return None
    subject = "/".join(p for p in (service, server) if p)
    if kind == "health" and "current" in data:
        current, previous = data["current"], data.get("previous", "")
        reopened = previous != "up" and subject in open_problems
        if current == "down" and not reopened:
            return Change(kind, subject, "problem", message, at)
        if current == "up" and (previous == "down" or reopened):
            return Change(kind, subject, "resolved", message, at)
        return None  # unknown -> up: a server seen for the first time, nothing to say
    if kind == "admin" and "state" in data:
        admin = data["state"]
        if admin == data.get("previous"):
            return None
        # halt cuts connections on purpose: worth a person's eye, until it is online again;
        # drain and online are notes
        if admin == "online" and data.get("previous") == "halt":
            return Change(kind, subject, "resolved", message, at)
        return Change(kind, subject, "problem" if admin == "halt" else "notice", message, at)
    if kind == "engine" and "engine" in data:
        if "error" in data:
            return Change(kind, data["engine"], "problem", message, at)
        if data.get("recovered"):
            return Change(kind, data["engine"], "resolved", message, at)
        return None
    if kind == "ha" and ("problem" in data or "code" in data):
        # HA cannot run (keepalived missing, a bad interface) or keepalived exited: the node
        # holds no floating address, and in a pair says nothing of the servers (Intake): it
        # must say this. Its next VRRP state is the RESOLVED (stopped -> passive/active).
        return Change(kind, "this node", "problem", message, at)
    if kind == "ha" and "role" in data and "previous" not in data:
        return Change(kind, "this node", "problem", message, at)  # a role it could not take
    if kind == "ha" and "role" in data and data.get("previous") != data["role"]:
        state: State = "problem" if data["role"] in ("fault", "stopped") else "notice"
        if data.get("previous") in ("fault", "stopped") and state == "notice":
            state = "resolved"
        return Change(kind, "this node", state, message, at)
    if kind == "certificate":
        return Change(kind, subject or data.get("file", ""), "problem", message, at)
    return None


class OpenProblems:
    """The health subjects (service/server) whose last health change was a PROBLEM (said by
    this node, or by the active peer while this one stood by), with that change."""

    def __init__(self) -> None:
        self._open: dict[str, Change] = {}

    def __contains__(self, subject: object) -> bool:
        return subject in self._open

    def note(self, change: Change) -> None:
        if change.topic == "health" and change.state == "problem":
            self._open.setdefault(change.subject, change)  # the first: since when it is down
        elif change.topic == "health":
            self._open.pop(change.subject, None)

    def removed(self, subjects: Container[str], at: str) -> list[Change]:
        """A RESOLVED for each open problem whose server is no longer in the config (nobody
        checks it any more: its recovery would never be said)."""
        gone = sorted(s for s in self._open if s not in subjects)
        return [Change("health", s, "resolved", "no longer in the configuration", at) for s in gone]

    def down_at_takeover(self, at: str) -> list[Change]:
        """A PROBLEM line for each server down now, for the message of a node taking over."""
        return [
            Change(
                "health",
                s,
                "problem",
                f"down when this node took over: {ch.text} (since {ch.at})",
                at,
            )
            for s, ch in sorted(self._open.items())
        ]


# What the node holding the floating addresses says for an HA pair: both nodes check the same
# servers and hold the same admin states (replicated), so both saying them would mail every
# change twice. The rest (engine, ha, certificate) is each node's own.
PAIR_TOPICS = frozenset({"health", "admin"})


class Intake:
    """Where a change goes: every health change is noted (open problems), and grouped into a
    message when this node speaks for the servers: it is not in a pair (standalone) or holds
    the pair's floating addresses (active). The passive node, one starting and one in fault
    keep quiet about servers. A node that takes the addresses over says, with its role change,
    which servers are down right then (the old active's PROBLEMs may have been its last word),
    and their recovery is then its RESOLVED."""

    def __init__(self, window: float, node: str) -> None:
        self.grouper = Grouper(window, node)
        self.open_problems = OpenProblems()
        self.speaks_for_servers = True  # Role.STANDALONE until told otherwise

    def add(self, change: Change, now: float) -> bool:
        """Note `change`; True when it goes into a message."""
        self.open_problems.note(change)
        if change.topic in PAIR_TOPICS and not self.speaks_for_servers:
            return False
        self.grouper.add(change, now)
        return True

    def role(self, role: Role, now: float, at: str) -> list[Change]:
        """This node's HA role is now `role`; the lines a takeover adds to the next message."""
        took_over = role.holds_addresses and not self.speaks_for_servers
        self.speaks_for_servers = role.holds_addresses
        if not took_over:
            return []
        down = self.open_problems.down_at_takeover(at)
        for change in down:
            self.grouper.add(change, now)
        return down


@dataclass(frozen=True, slots=True)
class Line:
    """One subject's net outcome within a message."""

    subject: str
    topic: str
    state: State
    text: str
    changes: int  # how many changes it went through in the window (flapping > 1)
    at: str


@dataclass(frozen=True, slots=True)
class Message:
    """What a channel sends: a title and one line per subject."""

    title: str
    lines: tuple[Line, ...]
    node: str
    held: int = 0  # messages merged into this one by the rate limit
    test: bool = False

    @property
    def state(self) -> State:
        states = {line.state for line in self.lines}
        if "problem" in states:
            return "problem"
        return "resolved" if states == {"resolved"} else "notice"

    @property
    def severity(self) -> int:
        return SEVERITY[self.state]

    def text(self) -> str:
        """The plain-text body of a mail (and the webhook's `text`)."""
        out = [self.title, ""]
        for line in self.lines:
            flap = f" (changed {line.changes} times)" if line.changes > 1 else ""
            out.append(f"{line.state.upper():<9} {line.subject}: {line.text}{flap}  [{line.at}]")
        if self.held:
            out += ["", f"{self.held} messages held by the rate limit are merged into this one."]
        out += ["", f"-- pacslb on {self.node}"]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "state": self.state,
            "node": self.node,
            "test": self.test,
            "held": self.held,
            # the mail's body: the field a chat incoming webhook shows (Slack, Mattermost)
            "text": self.text(),
            "items": [
                {
                    "subject": line.subject,
                    "topic": line.topic,
                    "state": line.state,
                    "text": line.text,
                    "changes": line.changes,
                    "at": line.at,
                }
                for line in self.lines
            ],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def compose(changes: Iterable[Change], node: str, held: int = 0) -> Message:
    """One message for a window's changes: one line per subject, its last state winning (a
    server down then up again within the window is a notice that it flapped)."""
    by_subject: dict[tuple[str, str], list[Change]] = {}
    for ch in changes:
        by_subject.setdefault((ch.topic, ch.subject), []).append(ch)
    lines = []
    for (topic, subject), seen in by_subject.items():
        last = seen[-1]
        state = last.state
        if len(seen) > 1 and seen[0].state == "problem" and last.state == "resolved":
            state = "notice"  # went wrong and recovered within the window: flapped
        lines.append(Line(subject, topic, state, last.text, len(seen), last.at))
    lines.sort(key=lambda ln: (ln.state != "problem", ln.state != "resolved", ln.subject))
    return Message(_title(lines, node), tuple(lines), node, held)


def _title(lines: list[Line], node: str) -> str:
    counts = {s: sum(1 for ln in lines if ln.state == s) for s in ("problem", "resolved", "notice")}
    if counts["problem"]:
        head = "PROBLEM"
    elif counts["resolved"] and not counts["notice"]:
        head = "RESOLVED"
    else:
        head = "NOTICE"
    parts = [f"{n} {word}" for word, n in counts.items() if n]
    # ASCII, and how many are not named: a syslog line escapes "…" as \u2026 (rfc5424 below)
    names = ", ".join(ln.subject for ln in lines[:3])
    names += f" and {len(lines) - 3} more" if len(lines) > 3 else ""
    return f"[pacslb {node}] {head}: {', '.join(parts)}: {names}"


def delivery_test_message(node: str, at: str) -> Message:
    line = Line("alerts", "test", "notice", "test message: this channel reaches you", 1, at)
    return Message(f"[pacslb {node}] TEST: alert delivery", (line,), node, test=True)


class Grouper:
    """Gathers changes for `window` seconds from the first one, then gives one message."""

    def __init__(self, window: float, node: str) -> None:
        self.window = window
        self.node = node
        self._changes: list[Change] = []
        self._opened: float | None = None

    def add(self, change: Change, now: float) -> None:
        if self._opened is None:
            self._opened = now
        self._changes.append(change)

    def next_due(self) -> float | None:
        return None if self._opened is None else self._opened + self.window

    def due(self, now: float) -> Message | None:
        if self._opened is None or now < self._opened + self.window:
            return None
        message = compose(self._changes, self.node)
        self._changes, self._opened = [], None
        return message


@dataclass
class Gate:
    """A channel's rate limit: at most `limit` messages in any `period` seconds (0 = none).
    A message past the limit is held; held ones go out merged, once the limit allows. They
    are merged as they come (one line per subject), so an hour of held changes costs the
    memory of one message, not of every change."""

    limit: int
    period: float = 3600.0
    _sent: deque[float] = field(default_factory=deque)
    _held: Message | None = None
    _holding: int = 0  # messages merged into _held

    def _allowed(self, now: float) -> bool:
        while self._sent and self._sent[0] <= now - self.period:
            self._sent.popleft()
        return self.limit == 0 or len(self._sent) < self.limit

    def offer(self, message: Message, now: float) -> Message | None:
        """The message to send now (this one, or it merged with held ones), or None: held."""
        if self._held is not None:
            lines = (*self._held.lines, *message.lines)
            changes = [Change(ln.topic, ln.subject, ln.state, ln.text, ln.at) for ln in lines]
            message = compose(changes, message.node)
        self._held, self._holding = message, self._holding + 1
        return self.due(now)

    def due(self, now: float) -> Message | None:
        if self._held is None or not self._allowed(now):
            return None
        held, holding = self._held, self._holding
        self._held, self._holding = None, 0
        self._sent.append(now)
        return held if holding == 1 else replace(held, held=holding)

    def next_due(self) -> float | None:
        if self._held is None:
            return None
        return self._sent[0] + self.period if self._sent else 0.0

    @property
    def holding(self) -> int:
        return self._holding


def expiry_changes(
    certificates: Iterable[tuple[str, datetime]],
    now: datetime,
    days: Iterable[int],
    sent: set[tuple[str, datetime, int]],
) -> list[Change]:
    """A change for each certificate that has come within one of `days` of its expiry since the
    last call (`sent`, updated here, remembers what was said: each threshold alerts once)."""
    out = []
    for name, not_after in certificates:
        left = not_after - now
        crossed = [d for d in sorted(days) if left <= timedelta(days=d)]
        if not crossed or (name, not_after, crossed[0]) in sent:
            continue
        for d in crossed:  # the ones passed meanwhile need no alert of their own any more
            sent.add((name, not_after, d))
        if left <= timedelta(0):
            text = f"expired on {not_after:%Y-%m-%d %H:%M} UTC"
        else:
            text = f"expires in {_days(left)} (on {not_after:%Y-%m-%d %H:%M} UTC)"
        out.append(Change("certificate", name, "problem", text, now.isoformat()))
    return out


def _days(left: timedelta) -> str:
    days = left.total_seconds() / 86400
    return f"{days:.0f} days" if days >= 2 else f"{left.total_seconds() / 3600:.0f} hours"


# --- syslog (RFC 5424) ---------------------------------------------------------------------


def _sd_escape(value: str) -> str:
    """RFC 5424 §6.3.3: '"', '\\' and ']' are escaped in a PARAM-VALUE."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424(
    message: Message, facility: str, app_name: str, hostname: str, procid: int, now: datetime
) -> bytes:
    """One RFC 5424 syslog message: HEADER, STRUCTURED-DATA with the counts, MSG in ASCII
    (non-ASCII escaped, so no BOM is needed: §6.4's MSG-ANY)."""
    pri = SYSLOG_FACILITY[facility] * 8 + message.severity
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = "".join(ch for ch in hostname if "!" <= ch <= "~")[:255] or "-"
    counts = {s: sum(1 for ln in message.lines if ln.state == s) for s in SEVERITY}
    params = " ".join(f'{k}="{_sd_escape(str(v))}"' for k, v in counts.items())
    sd = f'[alert@{PEN} state="{message.state}" {params} held="{message.held}"]'
    body = _body(message)
    msgid = "TEST" if message.test else message.state.upper()
    return f"<{pri}>1 {stamp} {host} {app_name} {procid} {msgid} {sd} {body}".encode()


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LOCAL_LIMIT = 8192  # rsyslog's default maxMessageSize; journald takes more


def _body(message: Message) -> str:
    """The MSG part: the title and each line, one line of ASCII (non-ASCII escaped)."""
    body = message.title + "".join(f"; {ln.state} {ln.subject}: {ln.text}" for ln in message.lines)
    return body.encode("ascii", "backslashreplace").decode().replace("\n", " ")


def local_syslog_line(
    message: Message, facility: str, tag: str, procid: int, local_now: datetime
) -> bytes:
    """One message for the local syslog socket (/dev/log) as glibc's syslog(3) writes it:
    `<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG`, local time, no hostname (the daemon adds it).
    journald and rsyslog's imuxsock parse this shape on the local socket; an RFC 5424 line
    there may be stored unparsed (its header as the text). Month names are English whatever
    the locale, the day padded with a space (RFC 3164 §4.1.2)."""
    pri = SYSLOG_FACILITY[facility] * 8 + message.severity
    t = local_now
    stamp = f"{MONTHS[t.month - 1]} {t.day:>2} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return f"<{pri}>{stamp} {tag}[{procid}]: {_body(message)}".encode()[:LOCAL_LIMIT]


def octet_counted(frame: bytes) -> bytes:
    """RFC 6587 §3.4.1 octet counting (also RFC 5425 §4.3 over TLS): 'LEN SP MSG'."""
    return str(len(frame)).encode() + b" " + frame
