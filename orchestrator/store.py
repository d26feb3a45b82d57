"""Where records live: a Protocol with a JetStream KV and an in-memory implementation."""

from __future__ import annotations

from typing import Protocol

import nats.js.errors
from nats.js.kv import KeyValue

from transport.publish import WRONG_LAST_SEQUENCE, AsyncPublisher, PublishError

__all__ = ["KvRecordStore", "MemoryRecordStore", "RecordStore", "StaleRevision"]


class StaleRevision(Exception):
    """The record changed since it was read (compare-and-set lost)."""


class RecordStore(Protocol):
    """Stores raw records by key with compare-and-set on a revision (0 = absent)."""

    async def load(self, key: str) -> tuple[bytes | None, int]:
        """The record's bytes and revision, or (None, 0)."""
        ...

    async def save(self, key: str, data: bytes, *, revision: int) -> int:
        """Write if the stored revision is still ``revision``; return the new one.

        Raises:
            StaleRevision: someone else wrote first.
        """
        ...


class KvRecordStore:
    """A JetStream KV bucket as a record store.

    Args:
        kv: The bucket.
        publisher: Where writes are sent (one of the bucket's connection if None); the
            orchestrator shares its outbox publisher, so a write shares a flush with
            the tasks sent beside it.
    """

    def __init__(self, kv: KeyValue, publisher: AsyncPublisher | None = None) -> None:
        self.kv = kv
        self.publisher = publisher or AsyncPublisher(kv._js._nc)

    async def load(self, key: str) -> tuple[bytes | None, int]:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        return entry.value, entry.revision or 0

    async def save(self, key: str, data: bytes, *, revision: int) -> int:
        try:
            return await self.publisher.store(self.kv._pre + key, data, last=revision)
        except PublishError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise StaleRevision(key) from exc
            raise


class MemoryRecordStore:
    """A dict as a record store (for tests of the shell without NATS)."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self._seq = 0

    async def load(self, key: str) -> tuple[bytes | None, int]:
        data, rev = self.data.get(key, (None, 0))
        return data, rev

    async def save(self, key: str, data: bytes, *, revision: int) -> int:
        if self.data.get(key, (b"", 0))[1] != revision:
            raise StaleRevision(key)
        self._seq += 1
        self.data[key] = (data, self._seq)
        return self._seq
