"""State sync datagrams: authentic, bounded in size, never accepted twice, and only numbers and
addresses ever reach an nft script."""

from __future__ import annotations

import json

import pytest

from pacslb.core.syncwire import (
    MAC_SIZE,
    MAGIC,
    MAX_DATAGRAM,
    MAX_SKEW,
    Deltas,
    MapEntry,
    Opener,
    Sealer,
    StickyEntry,
    WireError,
)

SECRET = "a shared secret of the group"
NOW = 1_800_000_000.0


def flow(port: int, expires: float = 290.0) -> MapEntry:
    return MapEntry(
        "netdev", "s0a1b2c3d_flows", (port, 4000, "198.18.0.10"), "02:00:00:00:01:01", 30, expires
    )


def test_entries_go_across_in_datagrams_below_the_mtu() -> None:
    entries = [flow(1024 + i) for i in range(500)]
    entries.append(StickyEntry("Web", "198.18.0.10", "rs1", 600.0))
    sealer = Sealer(SECRET, "lb1", boot=7)
    datagrams = sealer.seal(entries, NOW)
    assert len(datagrams) > 10 and all(len(d) <= MAX_DATAGRAM for d in datagrams)
    opener = Opener(SECRET)
    got = [e for d in datagrams for e in opener.open(d, NOW + 0.01).entries]
    assert got[:-1] == [
        MapEntry(e.family, e.map, e.key, e.value, e.timeout, e.expires) for e in entries[:-1]
    ]
    assert got[-1] == StickyEntry("Web", "198.18.0.10", "rs1", 600.0)
    # No entries: one datagram still goes (the peers hear the sender is alive).
    assert len(sealer.seal([], NOW)) == 1


def test_a_datagram_is_accepted_once_and_in_any_order_within_the_window() -> None:
    sealer = Sealer(SECRET, "lb1", boot=7)
    first, second, third = (sealer.seal([flow(i)], NOW)[0] for i in range(3))
    opener = Opener(SECRET)
    opener.open(first, NOW)
    opener.open(third, NOW)
    opener.open(second, NOW)  # late, but within the window: accepted once
    for again in (first, second, third):
        with pytest.raises(WireError) as exc:
            opener.open(again, NOW)
        assert exc.value.reason == "replay"


def test_a_restarted_sender_is_accepted_and_its_old_run_is_not() -> None:
    old = Sealer(SECRET, "lb1", boot=1)
    captured = old.seal([flow(1)], NOW)[0]
    opener = Opener(SECRET)
    opener.open(old.seal([flow(2)], NOW + 1)[0], NOW + 1)
    new = Sealer(SECRET, "lb1", boot=2)  # seq starts at 1 again
    opener.open(new.seal([flow(3)], NOW + 2)[0], NOW + 2)
    with pytest.raises(WireError) as exc:
        opener.open(captured, NOW + 2)  # replayed from the old run
    assert exc.value.reason == "replay"


def test_forged_stale_and_foreign_datagrams_are_rejected_by_reason() -> None:
    good = Sealer(SECRET, "lb1", boot=1).seal([flow(1)], NOW)[0]
    opener = Opener(SECRET)
    tampered = good[:-3] + b"99]}"
    reasons = []
    for datagram, now in [
        (tampered, NOW),
        (Sealer("another group's secret!", "lb1", 1).seal([flow(1)], NOW)[0], NOW),
        (good, NOW + MAX_SKEW + 1),
        (b"GET / HTTP/1.1\r\n\r\n" * 3, NOW),
    ]:
        with pytest.raises(WireError) as exc:
            opener.open(datagram, now)
        reasons.append(exc.value.reason)
    assert reasons == ["bad-mac", "bad-mac", "stale", "not-sync"]


def forged(items: list[object]) -> bytes:
    """A datagram signed with the right key that carries `items` (a peer gone wrong)."""
    import hashlib
    import hmac

    from pacslb.core.syncwire import sync_key

    head = {"n": "lb1", "b": 1, "q": 1, "t": int(NOW * 1000), "r": [], "e": items}
    body = json.dumps(head).encode()
    return MAGIC + hmac.new(sync_key(SECRET), body, hashlib.sha256).digest() + body


@pytest.mark.parametrize(
    "item",
    [
        ["m", "netdev", "s0a1b2c3d_flows", [1, 2, "1.2.3.4 }; flush ruleset"], "02:00", 0, 1],
        ["m", "netdev", "s0a1b2c3d_flows; delete table", [1], "02:00", 0, 1],
        ["m", "inet", "s0a1b2c3d_flows", [1], "02:00", 0, 1],
        ["m", "ip", "s0a1b2c3d_persist_60", ["198.18.1.0"], -4, 0, 1],
        ["m", "ip", "s0a1b2c3d_persist_60", ["198.18.1.0"], 4, 0, -1],
        ["x", 1],
    ],
)
def test_an_authentic_datagram_still_carries_only_numbers_and_addresses(item: object) -> None:
    with pytest.raises(WireError) as exc:
        Opener(SECRET).open(forged([item]), NOW)
    assert exc.value.reason == "malformed"
    assert len(MAGIC) + MAC_SIZE < MAX_DATAGRAM


def test_deltas_send_what_is_new_or_still_in_use_and_everything_now_and_then() -> None:
    deltas = Deltas(full_every=10.0)
    a, b = flow(1, 290), flow(2, 290)
    sent, full = deltas.round([a, b], NOW)
    assert full and sent == [a, b]
    assert deltas.round([a, b], NOW + 1) == ([], False)  # nothing moved
    c = flow(3, 30)  # a new flow
    a_used = flow(1, 299)  # a's expiry moved on by 10 s: not enough to be worth a datagram
    assert deltas.round([a_used, b, c], NOW + 2) == ([c], False)
    a_later = flow(1, 299)  # 100 s on, still in use: its expiry moved past what peers know
    b_idle = flow(2, 190)
    sent, _ = deltas.round([a_later, b_idle, flow(3, 299)], NOW + 100)
    assert sent and sent[0].key == a_later.key  # full round (10 s passed) sends all anyway
    deltas2 = Deltas(full_every=1000.0)
    deltas2.round([a], NOW)
    assert deltas2.round([flow(1, 299)], NOW + 100) == ([flow(1, 299)], False)
    # Entries imported from a peer are not news to send back.
    deltas2.known([flow(9, 100)], NOW + 100)
    assert deltas2.round([flow(1, 299), flow(9, 100)], NOW + 100.5) == ([], False)


def test_a_partial_listing_forgets_nothing_and_makes_no_full_round() -> None:
    deltas = Deltas(full_every=10.0)
    a, b = flow(1, 290), flow(2, 290)
    assert deltas.round([a, b], NOW) == ([a, b], True)
    # Only the recent flows listed: a and b are not gone, and not sent again.
    c = flow(3, 30)
    assert deltas.round([c], NOW + 1, complete=False) == ([c], False)
    assert deltas.round([a, b, c], NOW + 2) == ([], False)
    later = flow(3, 12)  # its expiry where the peers were told it is
    assert deltas.round([later], NOW + 20, complete=False) == ([], False)  # no full round here
    assert deltas.full_due(NOW + 20)


def test_a_nodes_own_datagram_sent_back_to_it_is_dropped() -> None:
    """Reflection: a datagram lb1 sent to lb2, replayed to lb1 as if from lb2."""
    mine = Sealer(SECRET, "198.18.0.2", boot=7, receivers=["198.18.0.3"])
    datagram = mine.seal([flow(1)], NOW)[0]
    me = Opener(SECRET, "198.18.0.2", 7, frozenset({"198.18.0.2"}))
    for source in ("198.18.0.3", ""):
        with pytest.raises(WireError) as exc:
            me.open(datagram, NOW, source)
        assert exc.value.reason == "reflected"
    # Our boot id under another name is ours as well.
    renamed = Sealer(SECRET, "someone", boot=7, receivers=["198.18.0.2"]).seal([], NOW)[0]
    with pytest.raises(WireError) as exc:
        me.open(renamed, NOW, "198.18.0.3")
    assert exc.value.reason == "reflected"


def test_a_datagram_names_its_receivers_and_only_they_take_it() -> None:
    to_b = Sealer(SECRET, "198.18.0.2", boot=7, receivers=["198.18.0.3"]).seal([flow(1)], NOW)[0]
    c_node = Opener(SECRET, "198.18.0.4", 9, frozenset({"198.18.0.4"}))
    with pytest.raises(WireError) as exc:
        c_node.open(to_b, NOW, "198.18.0.2")
    assert exc.value.reason == "misdirected"
    b_node = Opener(SECRET, "198.18.0.3", 8, frozenset({"198.18.0.3"}))
    assert b_node.open(to_b, NOW, "198.18.0.2").node == "198.18.0.2"
    # The receivers are under the MAC: rewriting them breaks it.
    forged_to_c = to_b.replace(b'"r":["198.18.0.3"]', b'"r":["198.18.0.4"]')
    assert forged_to_c != to_b
    with pytest.raises(WireError) as exc:
        c_node.open(forged_to_c, NOW, "198.18.0.2")
    assert exc.value.reason == "bad-mac"


def test_the_replay_window_is_the_sending_nodes_whatever_address_it_comes_from() -> None:
    datagram = Sealer(SECRET, "lb1", boot=1, receivers=["198.18.0.3"]).seal([flow(1)], NOW)[0]
    opener = Opener(SECRET, "lb2", 2)
    opener.open(datagram, NOW, "198.18.0.2")
    with pytest.raises(WireError) as exc:
        opener.open(datagram, NOW, "198.18.0.5")  # the same datagram from another address
    assert exc.value.reason == "replay"


def test_a_stale_datagrams_reason_is_the_same_text_whatever_the_skew() -> None:
    """One text for every stale datagram, so that events are not one per datagram."""
    sealer = Sealer(SECRET, "lb1", boot=1)
    texts = set()
    for skew in (31.0, 45.5, 300.0):
        with pytest.raises(WireError) as exc:
            Opener(SECRET).open(sealer.seal([], NOW)[0], NOW + skew)
        texts.add(str(exc.value))
    assert len(texts) == 1
