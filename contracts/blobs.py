"""Blob references: how a value too large for a message travels (by name).

A large output (a big map's joined output) is kept in the JetStream object store and
appears in statuses, events and task inputs as::

    {"$blob": {"bucket": "natsflow_blobs", "name": "<workflow>/<step>/<attempt>"},
     "bytes": 10240000, "count": 10000}

A worker fetches the value with any NATS client (object store ``get`` of ``name`` in
``bucket``); the Python SDK does so before calling the handler. Expressions see the
reference itself, not the value.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BLOB_KEY", "blob_ref", "find_blobs", "is_blob_ref"]

BLOB_KEY = "$blob"


def blob_ref(bucket: str, name: str, size: int, *, count: int | None = None) -> dict[str, Any]:
    """A reference to ``name`` in the object store ``bucket``."""
    ref: dict[str, Any] = {BLOB_KEY: {"bucket": bucket, "name": name}, "bytes": size}
    if count is not None:
        ref["count"] = count
    return ref


def is_blob_ref(value: Any) -> bool:
    """Whether ``value`` is a blob reference."""
    return (isinstance(value, dict) and isinstance(value.get(BLOB_KEY), dict)
            and {"bucket", "name"} <= set(value[BLOB_KEY]))


def find_blobs(value: Any) -> bool:
    """Whether a JSON value holds a blob reference anywhere."""
    if is_blob_ref(value):
        return True
    if isinstance(value, dict):
        return any(find_blobs(v) for v in value.values())
    if isinstance(value, list):
        return any(find_blobs(v) for v in value)
    return False
