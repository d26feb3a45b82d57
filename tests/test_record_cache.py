"""The orchestrator's record cache stays within its byte budget."""

from __future__ import annotations

from typing import Any

from orchestrator.cache import RecordCache


def test_least_recently_used_records_leave_when_over_budget() -> None:
    cache: RecordCache[Any] = RecordCache(budget=100)
    for i in range(5):
        cache.put(f"k{i}", i, object(), 30)
    assert len(cache) == 3 and cache.used == 90
    assert "k0" not in cache and "k1" not in cache
    assert cache.get("k2") is not None  # now the most recent
    cache.put("k5", 5, object(), 30)
    assert "k3" not in cache and "k2" in cache
    cache.pop("k2")
    cache.pop("missing")
    assert cache.used == 60 and len(cache) == 2
