"""API keys of the HTTP gateway: what is stored, how a key is made, checked and revoked.

A key reads ``nfk_<id>_<secret>``: ``id`` is 12 hex digits, public (it names the key
in ``natsflow keys ls``, and it is the key of its entry in the keys bucket), ``secret``
is 192 random bits. The key is shown once, when it is made; the bucket keeps only its
SHA-256 (:class:`ApiKey`), which is enough for a key of that entropy: there is no
dictionary to try, so a slow password hash would buy nothing.

Everything about a key is its entry in the KV bucket ``Subjects.keys_bucket``: the
gateways watch the bucket, so a new key works and a revoked one (its entry deleted)
stops working on every gateway as soon as the change reaches it. This module is what a
key *is* (its models, format and hash); reading and writing the bucket is
:mod:`transport.keys`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from contracts.namespaces import DEFAULT_NAMESPACE

__all__ = [
    "ALL_NAMESPACES",
    "ALL_SCOPES",
    "DEFAULT_NAMESPACE",
    "KEY_PREFIX",
    "ApiKey",
    "ApiKeyInfo",
    "CreateKeyRequest",
    "CreatedKey",
    "Scope",
    "StoredKey",
    "key_digest",
    "key_id_of",
    "mint_key",
]

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
