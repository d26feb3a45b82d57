"""Large values passed by reference (see :mod:`contracts.blobs`), fetched for handlers."""

from __future__ import annotations

import json
from typing import Any

from contracts.blobs import BLOB_KEY, find_blobs, is_blob_ref

__all__ = ["resolve_blobs"]


async def resolve_blobs(js: Any, value: Any) -> Any:
    """``value`` with every blob reference replaced by the value it names.

    Args:
        js: A JetStream context (its ``object_store(bucket)`` is used).
        value: A task input (JSON).
    """
    if not find_blobs(value):
        return value
    if is_blob_ref(value):
        where = value[BLOB_KEY]
        store = await js.object_store(where["bucket"])
        found = await store.get(where["name"])
        return json.loads(found.data or b"null")
    if isinstance(value, dict):
        return {k: await resolve_blobs(js, v) for k, v in value.items()}
    if isinstance(value, list):
        return [await resolve_blobs(js, v) for v in value]
    return value
