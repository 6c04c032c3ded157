"""The event log: persistent JSON lines, filtered queries, a torn last line tolerated."""

from __future__ import annotations

from pathlib import Path

from pacslb.control.events import Event, EventLog


def test_events_persist_and_filter(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.record(Event("health", "up -> down: http: got status 500", "Web", "Srv1"))
    log.record(Event("admin", "online -> drain by alice", "Web", "Srv2"))
    log.record(Event("health", "down -> up: http: status 200", "DICOM", "Srv1"))
    again = EventLog(path)  # a restart reads the history back
    assert [e.message for e in again.query(kind="health")] == [
        "up -> down: http: got status 500",
        "down -> up: http: status 200",
    ]
    assert [e.server for e in again.query(service="Web")] == ["Srv1", "Srv2"]
    assert again.query(service="Web", server="Srv2")[0].kind == "admin"
    assert len(again.query(limit=1)) == 1


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventLog(path).record(Event("config", "applying revision 1"))
    with path.open("a") as f:
        f.write('{"kind": "health", "mess')  # a crash mid-write
    assert [e.message for e in EventLog(path).query()] == ["applying revision 1"]


def test_rotation_keeps_one_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=400)
    for i in range(20):
        log.record(Event("plan", f"plan updated {i}"))
    assert path.stat().st_size <= 400
    assert (tmp_path / "events.jsonl.1").exists()


def test_str_reads_like_a_log_line() -> None:
    event = Event("admin", "online -> halt", "Web", "Srv1", at="2026-11-26T01:00:00.000+00:00")
    assert str(event) == "2026-11-26T01:00:00.000+00:00 admin   Web/Srv1: online -> halt"
