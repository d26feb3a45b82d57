"""API keys in the keys bucket: watch them, make, list, revoke and touch them.

What a key is (its models, its ``nfk_<id>_<secret>`` format, its hash) is
:mod:`contracts.keys`; this module is the KV I/O around it, used by the gateway (which
watches the bucket) and by ``natsflow keys`` (which writes it directly, an admin act).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts.errors import InvalidRequest, NotFound
from contracts.keys import (
    ApiKey,
    ApiKeyInfo,
    CreatedKey,
    CreateKeyRequest,
    StoredKey,
    key_digest,
    mint_key,
)
from transport.streams import Topology, ensure_bucket

__all__ = ["KeyStore", "watch_keys"]

log = logging.getLogger("natsflow.keys")


def _parse(data: bytes, key_id: str) -> ApiKey | None:
    try:
        key = ApiKey.model_validate_json(data)
    except ValidationError:
        # Unusable, so refused; said once, by id (the entry holds no secret anyway).
        log.warning("API key %s: its stored entry is not valid; the key is refused", key_id)
        return None
    return key if key.id == key_id else None


async def watch_keys(kv: KeyValue) -> AsyncGenerator[tuple[str, StoredKey | None] | None]:
    """Every stored key, then every change, for as long as the caller reads.

    Yields ``(id, StoredKey)`` for a key put, ``(id, None)`` for a key deleted (or an
    entry that is not a valid key), and ``None`` once every key that existed at the
    start has been yielded.

    Not the watcher's own "initial values done" marker: nats-py can send it before the
    values. The keys present are all in once the stream's last message at the start has
    come through, which a last-per-key watch always delivers.
    """
    last = (await kv.status()).stream_info.state.last_seq
    if not last:
        yield None
    watcher = await kv.watchall()
    try:
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE"):
                yield entry.key, None
            else:
                parsed = _parse(entry.value or b"", entry.key)
                yield entry.key, (None if parsed is None
                                  else StoredKey(parsed, entry.revision or 0))
            if last and entry.revision is not None and entry.revision >= last:
                last = 0
                yield None
    finally:
        with contextlib.suppress(nats.errors.Error):  # the connection may be gone
            await watcher.stop()  # type: ignore[no-untyped-call]


class KeyStore:
    """Make, list and revoke API keys: the keys bucket, written directly (an admin act).

    Args:
        kv: The keys bucket (see :meth:`open`).
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, topology: Topology) -> KeyStore:
        """Declare the keys bucket (idempotently) and bind to it."""
        return cls(await ensure_bucket(js, topology.keys_kv()))

    async def keys(self) -> list[StoredKey]:
        """Every live key, oldest first."""
        found: dict[str, StoredKey] = {}
        async with aclosing(watch_keys(self.kv)) as changes:
            async for change in changes:
                if change is None:
                    break
                key_id, stored = change
                if stored is None:
                    found.pop(key_id, None)
                else:
                    found[key_id] = stored
        return sorted(found.values(), key=lambda s: (s.key.created_at, s.key.id))

    async def create(self, request: CreateKeyRequest, *, now: datetime) -> CreatedKey:
        """Make a key; the answer holds the key itself, which nobody can see again.

        Raises:
            InvalidRequest: a live key has this name already, or the expiry is past.
        """
        if request.expires_at is not None and request.expires_at <= now:
            raise InvalidRequest("the expiry is in the past", field="expires_at")
        if any(s.key.name == request.name for s in await self.keys()):
            raise InvalidRequest(f"a key named {request.name!r} exists; revoke it first or "
                                 "pick another name", field="name")
        key_id, key = mint_key()
        stored = ApiKey(id=key_id, name=request.name, scopes=sorted(set(request.scopes)),
                        namespaces=request.namespaces, created_at=now,
                        expires_at=request.expires_at, key_sha256=key_digest(key))
        await self.kv.create(key_id, stored.model_dump_json().encode())
        return CreatedKey(key=key, info=stored.info())

    async def find(self, id_or_name: str) -> StoredKey:
        """The live key with this id, or else with this name.

        Raises:
            NotFound: no live key has that id or name.
        """
        keys = await self.keys()
        found = ([s for s in keys if s.key.id == id_or_name]
                 or [s for s in keys if s.key.name == id_or_name])
        if found:
            return found[0]
        raise NotFound(f"no API key has the id or name {id_or_name!r}")

    async def revoke(self, id_or_name: str) -> ApiKeyInfo:
        """Delete a key: every gateway refuses it as soon as it sees the change.

        Raises:
            NotFound: no live key has that id or name.
        """
        stored = await self.find(id_or_name)
        await self.kv.delete(stored.key.id)
        return stored.key.info()

    async def touch(self, stored: StoredKey, *, now: datetime) -> None:
        """Record a use of the key, unless it changed (or was revoked) meanwhile.

        Compare-and-set, so a revoked key is never written back to life.
        """
        updated = stored.key.model_copy(update={"last_used_at": now})
        try:
            await self.kv.update(stored.key.id, updated.model_dump_json().encode(),
                                 last=stored.revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.errors.Error,
                nats.js.errors.Error) as exc:
            log.debug("API key %s: last use not recorded (%s)", stored.key.id,
                      type(exc).__name__)
