"""An HA pair mails each server change once: two nodes' alert services in this process, each
with its own event log, HA role (set by the keepalived supervisor's own handler of VRRP's
notify lines, which records the `ha` event as `pacslb run` does) and mail channel, to one real
SMTP relay (aiosmtpd). Both see the same health changes, as both nodes' checkers would. The
active node mails them; the passive one mails only its own role change; after a handover the
new active node's mail says which server is down then, and its recovery is the new active
node's RESOLVED."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.integration.alert_peers import Mailbox, free_port, smtp_relay

from pacslb.control.alerts import AlertService
from pacslb.control.events import Event, EventLog
from pacslb.control.ha import KeepalivedSupervisor
from pacslb.core.ha_role import HaState, Role
from pacslb.core.keepalived import VrrpState
from pacslb.core.validate import load_text

RELAY = "127.10.9.2"


def config(state: Path, port: int) -> str:
    return f"""version: 1
node:
  state_dir: {state}
  webui: {{enabled: false}}
  alerts:
    email: {{host: {RELAY}, port: {port}, security: none, sender: lb@x.example,
             recipients: [pacs-team@x.example]}}
    group_window: 0.3
virtual_services:
  - label: Rack
    vip: 127.10.9.30
    ports: [104]
    mode: l7-tcp
    real_servers:
      - {{label: Srv01, address: 127.10.9.31}}
"""


class Node:
    def __init__(self, name: str, tmp: Path, port: int) -> None:
        state = tmp / name
        state.mkdir()
        self.log = EventLog(state / "events.jsonl")
        self.alerts = AlertService(lambda m, d: self.log.record(Event("alert", m, data=d)), name)
        self.log.observers.append(self.alerts.observe)
        self.ha = HaState(Role.STARTING)  # node.ha enabled: starting until VRRP says
        self.alerts.follow(self.ha)
        note = lambda m, d: self.log.record(Event("ha", m, data=d))  # noqa: E731
        self.keepalived = KeepalivedSupervisor(state, self.ha, note)
        self.alerts.configure(load_text(config(state, port)), tmp, state)

    def vrrp(self, state: str) -> None:
        self.keepalived._on_state(VrrpState(state, 100))  # a line of keepalived's notify FIFO

    def health(self, previous: str, current: str) -> None:
        data = {"previous": previous, "current": current, "ok": current == "up"}
        self.log.record(
            Event("health", f"{previous} -> {current}: check", "Rack", "Srv01", data=data)
        )


async def mails(box: Mailbox, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    """Wait for `count` mails in all; then (subject, body) of each, after a pause that lets a
    wrong extra one arrive."""
    deadline = time.monotonic() + timeout
    while len(box.subjects()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)  # past the group window: a mail too many would be here by now
    return list(zip(box.subjects(), box.bodies(), strict=True))


def test_an_ha_pair_mails_each_server_change_once(tmp_path: Path) -> None:
    port = free_port(RELAY)

    async def scenario(box: Mailbox) -> list[list[tuple[str, str]]]:
        lb1, lb2 = Node("lb1", tmp_path, port), Node("lb2", tmp_path, port)
        lb1.vrrp("MASTER")
        lb2.vrrp("BACKUP")
        seen = [await mails(box, 2)]  # each node's own role change
        for node in (lb1, lb2):
            node.health("up", "down")
        seen.append((await mails(box, 3))[2:])
        lb1.vrrp("BACKUP")  # handover: lb2 takes the addresses
        lb2.vrrp("MASTER")
        seen.append((await mails(box, 5))[3:])
        for node in (lb1, lb2):
            node.health("down", "up")
        seen.append((await mails(box, 6))[5:])
        await asyncio.gather(lb1.alerts.close(), lb2.alerts.close())
        return seen

    with smtp_relay(RELAY, port) as box:
        start, down, handover, back = asyncio.run(scenario(box))
    assert sorted(subject.split("]")[0] for subject, _ in start) == ["[pacslb lb1", "[pacslb lb2"]
    assert all("this node" in subject and "Srv01" not in body for subject, body in start), start
    # the server going down: one mail, from the active node
    assert [subject for subject, _ in down] == ["[pacslb lb1] PROBLEM: 1 problem: Rack/Srv01"]
    # the handover: lb1 says its own role change only; lb2 its role and the server down now
    by_node = {subject.split("]")[0][8:]: (subject, body) for subject, body in handover}
    assert set(by_node) == {"lb1", "lb2"}, handover
    assert "Srv01" not in by_node["lb1"][1] and "active -> passive" in by_node["lb1"][1]
    subject, body = by_node["lb2"]
    assert subject == "[pacslb lb2] PROBLEM: 1 problem, 1 notice: Rack/Srv01, this node", subject
    assert "Rack/Srv01: down when this node took over: up -> down: check (since " in body, body
    assert "this node: role passive -> active" in body, body
    # its recovery: one RESOLVED, from the new active node
    assert [subject for subject, _ in back] == ["[pacslb lb2] RESOLVED: 1 resolved: Rack/Srv01"]
