"""Where outputs too many or too large for a workflow record live.

Map item outputs are KV entries (one key per item, written by the outbox like any
other effect); a map's joined output is stored inline when it fits a step output, else
in the JetStream object store, and the step's output is then a blob reference
(:mod:`contracts.blobs`) that workers resolve.
"""

from __future__ import annotations

import json
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contracts.blobs import blob_ref
from contracts.models import MAX_STEP_OUTPUT_BYTES
from contracts.subjects import Subjects

from .fanout import output_prefix
from .kvscan import scan

__all__ = ["IncompleteOutputs", "OutputStore"]

#: Largest joined map output kept (as a blob); larger fails the map step.
MAX_BLOB_BYTES = 256 * 1024 * 1024


class IncompleteOutputs(Exception):
    """Fewer item outputs are stored than the map has items (retried later)."""


class OutputStore:
    """The outputs bucket and the blob store of one deployment."""

    def __init__(self, js: JetStreamContext, subjects: Subjects, kv: KeyValue,
                 blobs: ObjectStore) -> None:
        self.js = js
        self.subjects = subjects
        self.kv = kv
        self.blobs = blobs

    def put_subject(self, key: str) -> str:
        """Where an item output's put is published (the outbox publishes it)."""
        return self.subjects.kv_put(self.subjects.outputs_bucket, key)

    async def collect(self, workflow_id: str, step_id: str, attempt: int,
                      total: int) -> list[bytes]:
        """Every item output of one map attempt as stored (JSON), in index order.

        Raises:
            IncompleteOutputs: some are missing (not stored yet).
        """
        prefix = output_prefix(workflow_id, step_id, attempt)
        outputs: list[bytes] = [b""] * total
        seen = 0
        for entry in await scan(self.kv, f"{prefix}.*"):
            index = int(entry.key.rsplit(".", 1)[1])
            if 0 <= index < total:
                outputs[index] = entry.value or b"null"
                seen += 1
        if seen < total:
            raise IncompleteOutputs(f"{seen} of {total} outputs of {prefix} are stored")
        return outputs

    async def joined(self, workflow_id: str, step_id: str, attempt: int,
                     total: int) -> tuple[Any, int]:
        """(output, size): the list itself if it fits a step output, else a blob ref."""
        outputs = await self.collect(workflow_id, step_id, attempt, total)
        # Each is stored as the outbox wrote it (compact JSON, ``Router``): the list is
        # their concatenation, byte for byte what dumping the decoded list would give.
        data = b"[" + b",".join(outputs) + b"]"
        if len(data) <= MAX_STEP_OUTPUT_BYTES:
            try:
                return json.loads(data), len(data)
            except ValueError as exc:  # written by someone else than the outbox
                raise ValueError(f"an item output of {workflow_id}/{step_id} is not "
                                 f"JSON: {exc}") from None
        if len(data) > MAX_BLOB_BYTES:
            raise ValueError(f"joined output of {len(data)} bytes is over {MAX_BLOB_BYTES}")
        name = f"{workflow_id}/{step_id}/{attempt}"
        await self.blobs.put(name, data)
        return blob_ref(self.subjects.blobs_bucket, name, len(data), count=total), len(data)
