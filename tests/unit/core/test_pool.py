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
