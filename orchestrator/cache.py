"""What one orchestrator process keeps of its records: an LRU cache, a bit per revision
it saw published, and per-key locks.

The cache holds the records this process wrote (and published) itself, so the next
transition of a busy workflow need not read it back from KV; the revisions it saw
published spare a record that left the cache its republication when it is read back;
the locks serialize one record's transitions within the process (across processes
compare-and-set does).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["CACHE_BUDGET_BYTES", "KeyLocks", "RecordCache", "SettledRevisions"]

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

    def clear(self) -> None:
        """Forget every record."""
        self._items.clear()
        self.used = 0

    def put(self, key: str, revision: int, record: R, size: int) -> None:
        """Keep ``record`` at ``revision``; the least recently used leave if over budget."""
        self.pop(key)
        self._items[key] = (revision, record, size)
        self.used += size
        while self.used > self.budget and self._items:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self.used -= dropped


class SettledRevisions:
    """Record revisions whose whole outbox this process saw stored: one bit each.

    A revision is the KV stream's sequence of one write, never reused for another: a
    record read back at a revision held here carries an outbox this process published
    and saw every ack of, as a cached copy would, at a bit instead of the record.
    Bounded: bits come in chunks of :attr:`CHUNK_BITS` revisions (8 KiB), at most
    ``max_chunks`` of them (4 MiB by default, the last 33 million writes of the
    bucket); the lowest chunk leaves first, and a revision it held is then simply not
    known (its record is republished, as before this existed).
    """

    CHUNK_BITS = 1 << 16

    def __init__(self, max_chunks: int = 512) -> None:
        self.max_chunks = max_chunks
        self._chunks: dict[int, bytearray] = {}

    def add(self, revision: int) -> None:
        """Remember that ``revision``'s outbox is stored."""
        index, bit = divmod(revision, self.CHUNK_BITS)
        chunk = self._chunks.get(index)
        if chunk is None:
            if len(self._chunks) >= self.max_chunks:
                lowest = min(self._chunks)
                if index < lowest:
                    return  # older than everything kept
                del self._chunks[lowest]
            chunk = self._chunks[index] = bytearray(self.CHUNK_BITS // 8)
        chunk[bit >> 3] |= 1 << (bit & 7)

    def __contains__(self, revision: int) -> bool:
        index, bit = divmod(revision, self.CHUNK_BITS)
        chunk = self._chunks.get(index)
        return chunk is not None and bool(chunk[bit >> 3] & (1 << (bit & 7)))

    def clear(self) -> None:
        """Forget every revision."""
        self._chunks.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of bits held."""
        return len(self._chunks) * self.CHUNK_BITS // 8


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
