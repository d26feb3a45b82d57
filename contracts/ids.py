"""Identifiers: ULIDs, unique and time-ordered (lexicographic order is creation order)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from ulid import ULID

__all__ = ["deterministic_id", "new_id"]


def new_id() -> str:
    """A fresh ULID string (26 chars, Crockford base32)."""
    return str(ULID())


def deterministic_id(at: datetime, seed: str) -> str:
    """A ULID whose time part is ``at`` and whose random part is derived from ``seed``.

    Used where a redelivered message must map to the same id again (e.g. a workflow
    submitted without an id on the fire-and-forget subject: seed = stream sequence).
    """
    millis = int(at.timestamp() * 1000)
    entropy = hashlib.sha256(seed.encode()).digest()[:10]
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + entropy))
