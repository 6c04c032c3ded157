"""pacslb.core.pool: the idle connection pool."""

from __future__ import annotations

from pacslb.core.pool import (
    IdlePool,
)


def test_idle_pool() -> None:
    pool: IdlePool[str, str] = IdlePool(max_idle=2, timeout=30.0)
    assert pool.put("A", "a1", now=0.0) and pool.put("A", "a2", now=10.0)
    assert not pool.put("A", "a3", now=11.0)  # full: the caller closes it
    assert pool.get("A") == "a2"  # last in, first out
    assert pool.put("A", "a2", now=20.0) and pool.put("B", "b1", now=20.0)
    pool.discard("A", "a2")
    assert pool.expire(now=35.0) == ["a1"]  # idle for 35 s > 30 s
    assert pool.get("A") is None
    assert pool.expire(now=36.0, gone=lambda key: key == "B") == ["b1"]
    assert pool.put("C", "c1", now=40.0) and pool.clear() == ["c1"] and pool.get("C") is None


def test_keys_of_one_group_share_its_bound_and_the_oldest_makes_room() -> None:
    """With source: client an l7-http upstream is pooled per (server, client address): many
    clients must not multiply the idle connections kept to one server."""
    closed: list[str] = []
    pool: IdlePool[tuple[str, str], str] = IdlePool(
        max_idle=3, timeout=30.0, group=lambda key: key[0], evicted=closed.append
    )
    for i, client in enumerate(("c1", "c2", "c3", "c4", "c5")):
        assert pool.put(("rs1", client), f"{client}-up", now=float(i))
    assert pool.put(("rs2", "c1"), "rs2-up", now=5.0)  # another server: its own bound
    assert closed == ["c1-up", "c2-up"]  # the two oldest of rs1 made room
    assert len(pool) == 4
    assert pool.get(("rs1", "c1")) is None and pool.get(("rs1", "c5")) == "c5-up"
    assert pool.put(("rs1", "c6"), "c6-up", now=6.0) and closed == ["c1-up", "c2-up"]
    assert pool.put(("rs1", "c3"), "c3-second", now=7.0)  # full again: c3-up (the oldest)
    assert closed[-1] == "c3-up" and pool.get(("rs1", "c3")) == "c3-second"
    assert sorted(pool.expire(now=100.0)) == ["c4-up", "c6-up", "rs2-up"] and len(pool) == 0
    assert pool.put(("rs1", "c7"), "c7-up", now=101.0) and closed[-1] == "c3-up"


def test_keys_without_a_group_are_bounded_alone() -> None:
    pool: IdlePool[tuple[str, str], str] = IdlePool(
        max_idle=1, timeout=30.0, group=lambda key: key[0] if key[1] else None
    )
    assert pool.put(("rs1", ""), "auto-up", now=0.0)
    assert pool.put(("rs1", "c1"), "c1-up", now=1.0)  # its group (rs1) holds only c1-up
    assert not pool.put(("rs1", ""), "auto-2", now=2.0)  # the key itself is full
    assert pool.get(("rs1", "")) == "auto-up" and pool.get(("rs1", "c1")) == "c1-up"
