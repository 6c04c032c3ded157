from __future__ import annotations

from pacslb.core.syncmaps import entry_of, import_scripts, is_synced
from pacslb.core.syncwire import MapEntry


def test_listed_elements_become_entries() -> None:
    listed = [
        {"elem": {"val": {"concat": [1000, 4000, "198.18.0.10"]}, "timeout": 30, "expires": 20}},
        "02:00:00:00:00:01",
    ]
    assert entry_of("netdev", "s0a1b2c3d_flows", listed) == MapEntry(
        "netdev", "s0a1b2c3d_flows", (1000, 4000, "198.18.0.10"), "02:00:00:00:00:01", 30, 20.0
    )
    persist = [{"elem": {"val": "198.18.1.0", "expires": 2500}}, 12345]
    assert entry_of("ip", "s0a1b2c3d_persist_3600", persist) == MapEntry(
        "ip", "s0a1b2c3d_persist_3600", ("198.18.1.0",), 12345, 0, 2500.0
    )
    assert entry_of("ip", "x", ["198.18.1.0", 1]) is None  # no timeout: not a dynamic map's
    assert is_synced("s0a1b2c3d_flows") and is_synced("s0a1b2c3d_persist_60")
    assert not is_synced("s0a1b2c3d_slots") and not is_synced("s0a1b2c3d_closing")


def test_import_keeps_or_replaces_in_one_transaction_per_batch() -> None:
    handshake = MapEntry(
        "netdev", "s0a1b2c3d_flows", (1000, 4000, "198.18.0.10"), "02:00:00:00:00:01", 30, 298.4
    )
    [(kept, n)] = import_scripts([handshake], replace=False)
    # The kernel refuses an expiry past the element's timeout: the timeout is raised to it.
    assert kept == (
        "add element netdev pacslb s0a1b2c3d_flows "
        "{ 1000 . 4000 . 198.18.0.10 timeout 299s expires 299s : 02:00:00:00:00:01 }\n"
    )
    assert n == 1
    [(replaced, _)] = import_scripts([handshake, handshake], replace=True)
    lines = replaced.splitlines()
    assert [ln.split()[0] for ln in lines] == ["add", "delete", "add"]
    assert lines[1] == "delete element netdev pacslb s0a1b2c3d_flows { 1000 . 4000 . 198.18.0.10 }"
    many = [
        MapEntry("ip", "s0a1b2c3d_persist_60", (f"198.18.{i // 250}.{i % 250}",), 7, 0, 50)
        for i in range(4500)
    ]
    assert [n for _, n in import_scripts(many, replace=False)] == [2000, 2000, 500]


def test_a_round_lists_the_recent_flows_and_takes_them_as_flows_in_their_handshake() -> None:
    from pacslb.core.syncmaps import as_flow, listed_in_round

    assert listed_in_round("s0a1b2c3d_recent", complete=False)
    assert listed_in_round("s0a1b2c3d_persist_60", complete=False)
    assert not listed_in_round("s0a1b2c3d_flows", complete=False)
    assert listed_in_round("s0a1b2c3d_flows", complete=True)
    assert not listed_in_round("s0a1b2c3d_recent", complete=True)  # the flows map has them all
    recent = MapEntry("netdev", "s0a1b2c3d_recent", (1, 4000, "198.18.0.10"), "02:00", 0, 2.5)
    assert as_flow(recent) == MapEntry(
        "netdev", "s0a1b2c3d_flows", (1, 4000, "198.18.0.10"), "02:00", 30, 30.0
    )
