"""API keys of the HTTP gateway: what is stored, how a key is made, checked and revoked.

A key reads ``nfk_<id>_<secret>``: ``id`` is 12 hex digits, public (it names the key
in ``natsflow keys ls``, and it is the key of its entry in the keys bucket), ``secret``
is 192 random bits. The key is shown once, when it is made; the bucket keeps only its
SHA-256 (:class:`ApiKey`), which is enough for a key of that entropy: there is no
dictionary to try, so a slow password hash would buy nothing.

Everything about a key is its entry in the KV bucket ``Subjects.keys_bucket``: the
gateways watch the bucket, so a new key works and a revoked one (its entry deleted)
stops working on every gateway as soon as the change reaches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidRequest, NotFound
from .namespaces import DEFAULT_NAMESPACE
from .streams import Topology, ensure_bucket

__all__ = [
    "ALL_NAMESPACES",
    "ALL_SCOPES",
    "DEFAULT_NAMESPACE",
    "KEY_PREFIX",
    "ApiKey",
    "ApiKeyInfo",
    "CreateKeyRequest",
    "CreatedKey",
    "KeyStore",
    "Scope",
    "StoredKey",
    "key_digest",
    "key_id_of",
    "mint_key",
    "watch_keys",
]

log = logging.getLogger("natsflow.keys")

#: Every key starts with this, so a leaked one is easy to recognise (and to scan for).
KEY_PREFIX: Final = "nfk_"
_ID_HEX: Final = 12
_KEY_RE: Final = re.compile(rf"^{KEY_PREFIX}([0-9a-f]{{{_ID_HEX}}})_[A-Za-z0-9_-]{{32,}}$")
#: A key bound to this namespace sees every namespace.
ALL_NAMESPACES: Final = "*"
_NAME_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
_NAMESPACE_RE: Final = re.compile(r"^([A-Za-z0-9_-]{1,64}|\*)$")


def _namespaces(value: list[str]) -> list[str]:
    for ns in value:
        if not _NAMESPACE_RE.match(ns):
            raise ValueError(f"invalid namespace {ns!r}: letters, digits, '_', '-', "
                             f"or {ALL_NAMESPACES!r}")
    return sorted(set(value))


#: The namespaces a key is bound to: at least one, each a token or ``*``.
_Namespaces = Annotated[list[str], AfterValidator(_namespaces), Field(
    default_factory=lambda: [DEFAULT_NAMESPACE], min_length=1,
    description=f"Namespaces the key may touch; `{ALL_NAMESPACES}`: all of them.")]


class Scope(StrEnum):
    """What a key may do over HTTP (the gateway maps each route to one)."""

    #: Read workflows: get, list, events (also as Server-Sent Events).
    WORKFLOWS_READ = "workflows:read"
    #: Change workflows: create, start, stop, signal, retry, rerun, pause, resume.
    WORKFLOWS_WRITE = "workflows:write"
    #: Read stored definitions.
    DEFINITIONS_READ = "definitions:read"
    #: Store new versions of definitions.
    DEFINITIONS_WRITE = "definitions:write"
    #: Everything above, plus keys, bulk operations and batches.
    ADMIN = "admin"


ALL_SCOPES: Final = frozenset(Scope)


class ApiKeyInfo(BaseModel):
    """An API key as anyone may see it: everything but its hash (and never the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=rf"^[0-9a-f]{{{_ID_HEX}}}$",
                    description="Public id: the `nfk_<id>_` part of the key.")
    name: str = Field(pattern=_NAME_PATTERN, description="Unique among live keys.")
    scopes: list[Scope] = Field(min_length=1)
    namespaces: _Namespaces
    created_at: datetime
    expires_at: datetime | None = Field(default=None, description="None: never expires.")
    last_used_at: datetime | None = Field(
        default=None, description="Updated at most once a minute per gateway.")

    def grants(self, scope: Scope) -> bool:
        """Whether the key may do what ``scope`` covers (``admin`` covers everything)."""
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def expired(self, now: datetime) -> bool:
        """Whether the key has expired at ``now``."""
        return self.expires_at is not None and now >= self.expires_at


class ApiKey(ApiKeyInfo):
    """A key as the keys bucket stores it, under its id."""

    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                            description="SHA-256 (hex) of the whole key; the key itself is "
                                        "stored nowhere.")

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this key (compared in constant time)."""
        return hmac.compare_digest(self.key_sha256, key_digest(key))

    def info(self) -> ApiKeyInfo:
        """The public view of this key."""
        return ApiKeyInfo.model_validate(self.model_dump(exclude={"key_sha256"}))


class CreateKeyRequest(BaseModel):
    """What a new key is for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN)
    scopes: list[Scope] = Field(min_length=1)
    namespaces: _Namespaces
    expires_at: datetime | None = None


class CreatedKey(BaseModel):
    """A key just made: the only time the key itself is seen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="The API key: `Authorization: Bearer <key>`. Shown once.")
    info: ApiKeyInfo


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key's entry and its revision in the bucket (for compare-and-set updates)."""

    key: ApiKey
    revision: int


def mint_key() -> tuple[str, str]:
    """A new random key: ``(id, key)``."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


def key_digest(key: str) -> str:
    """The SHA-256 (hex) of a key, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key, or None for anything else."""
    found = _KEY_RE.match(key)
    return found.group(1) if found else None


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
