"""What one orchestrator process keeps of its records: an LRU cache and per-key locks.

The cache holds the records this process wrote (and published) itself, so the next
transition of a busy workflow need not read it back from KV; the locks serialize one
record's transitions within the process (across processes compare-and-set does).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["CACHE_BUDGET_BYTES", "KeyLocks", "RecordCache"]

R = TypeVar("R")

#: JSON bytes of unfinished records one process keeps in memory (about ten times as
#: much RSS); beyond it the least recently used are dropped and re-read from KV.
CACHE_BUDGET_BYTES = 16 * 1024 * 1024


class RecordCache(Generic[R]):
    """Records this process wrote (and published) itself: LRU, bounded in bytes.

    A hit saves a KV read; a stale hit costs nothing but a failed compare-and-set.
    """

    def __init__(self, budget: int = CACHE_BUDGET_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[str, tuple[int, R, int]] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> tuple[int, R, int] | None:
        """(revision, record, size), most recently used now; None if absent."""
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit

    def pop(self, key: str) -> None:
        """Forget ``key`` (nothing if absent)."""
        hit = self._items.pop(key, None)
        if hit is not None:
            self.used -= hit[2]

    def put(self, key: str, revision: int, record: R, size: int) -> None:
        """Keep ``record`` at ``revision``; the least recently used leave if over budget."""
        self.pop(key)
        self._items[key] = (revision, record, size)
        self.used += size
        while self.used > self.budget and self._items:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self.used -= dropped


class KeyLocks:
    """One FIFO lock per record key, kept only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: tuple[str, str]) -> None:
        """Wait for ``key``'s lock, in the order asked."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._forget(key)
            raise

    def release(self, key: tuple[str, str]) -> None:
        """Let the next waiter for ``key`` in."""
        self._locks[key][0].release()
        self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
