"""Read every current entry of a KV bucket, without the watcher's start-up race.

nats-py's ``KeyValue.keys()`` and a fresh ``watch()`` mark "initial values delivered"
from a consumer-info snapshot taken while messages may already be in flight: when the
server has pushed them all (``num_pending == 0``) but the client has not counted them
yet, the marker comes first and the listing is empty or short. This module lists with
an ephemeral *pull* consumer instead: nothing is delivered before the first fetch, so
the pending count read right after creation is exact, and the scan fetches exactly
that many messages.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from contracts.headers import KV_OPERATION_HEADER, MARKER_REASON_HEADER

__all__ = ["KvEntry", "scan"]

_BATCH = 1000


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One live key with its value (empty when scanned with ``keys_only``)."""

    key: str
    value: bytes
    revision: int


async def scan(kv: KeyValue, pattern: str = ">", *, keys_only: bool = False,
               fetch_timeout: float = 5.0) -> list[KvEntry]:
    """Every live entry of ``kv`` whose key matches ``pattern``, in stream order.

    Deleted and purged keys are left out. ``keys_only`` fetches headers only.
    """
    # nats-py keeps a bucket's stream, subject prefix and context as private fields.
    js: JetStreamContext = kv._js
    stream: str = kv._stream
    prefix: str = kv._pre
    bucket = kv._name
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        headers_only=keys_only or None,
        inactive_threshold=60.0,
        mem_storage=True,
        num_replicas=1,
    )
    psub = await js.pull_subscribe(prefix + pattern, stream=stream, config=config)
    out: list[KvEntry] = []
    try:
        info = await psub.consumer_info()
        remaining = info.num_pending or 0
        while remaining > 0:
            try:
                msgs = await psub.fetch(min(remaining, _BATCH), timeout=fetch_timeout)
            except nats.errors.TimeoutError:
                raise TimeoutError(f"scan of {bucket} stalled with {remaining} left") from None
            for msg in msgs:
                remaining -= 1
                headers = msg.headers or {}
                if (headers.get(KV_OPERATION_HEADER) in ("DEL", "PURGE")
                        or MARKER_REASON_HEADER in headers):
                    continue
                out.append(KvEntry(msg.subject[len(prefix):], msg.data or b"",
                                   msg.metadata.sequence.stream))
    finally:
        name = psub._consumer  # ephemeral: remove it now rather than on inactivity
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        with contextlib.suppress(nats.js.errors.Error, nats.errors.Error):
            await js.delete_consumer(stream, name)
    return out
