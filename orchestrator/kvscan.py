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

import asyncio
import contextlib
import json
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from contracts.headers import (
    KV_OPERATION_HEADER,
    MARKER_REASON_HEADER,
    STATUS_DESCRIPTION_HEADER,
    STATUS_HEADER,
)
from transport.consume import stream_sequence

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

    Raises:
        TimeoutError: fewer messages came than the consumer had pending (the stream
            changed under the scan, or the server went away).
    """
    # nats-py keeps a bucket's stream, subject prefix and context as private fields.
    js: JetStreamContext = kv._js
    nc: Client = js._nc
    stream: str = kv._stream
    prefix: str = kv._pre
    bucket = kv._name
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        filter_subject=prefix + pattern,
        headers_only=keys_only or None,
        inactive_threshold=60.0,
        mem_storage=True,
        num_replicas=1,
    )
    info = await js.add_consumer(stream, config=config)
    name = info.name
    out: list[KvEntry] = []
    # The messages come to one subscription of our own, asked for by plain pull
    # requests, a batch at a time: not through nats-py's fetch, which waits for each
    # message with a task of its own (a 10,000-item map's join spent most of its time
    # there).
    loop = asyncio.get_running_loop()
    remaining = info.num_pending or 0
    batch: asyncio.Future[None] = loop.create_future()
    expected = 0
    failure = ""

    async def on_message(msg: Msg) -> None:
        nonlocal expected, remaining, failure
        headers = msg.headers or {}
        status = headers.get(STATUS_HEADER)
        if status is not None:
            if status != "100" and not batch.done():  # an expired request, or refused
                failure = f"{status} {headers.get(STATUS_DESCRIPTION_HEADER, '')}".strip()
                batch.set_result(None)
            return
        expected -= 1
        remaining -= 1
        if (headers.get(KV_OPERATION_HEADER) not in ("DEL", "PURGE")
                and MARKER_REASON_HEADER not in headers):
            out.append(KvEntry(msg.subject[len(prefix):], msg.data or b"",
                               stream_sequence(msg) or 0))
        if expected <= 0 and not batch.done():
            batch.set_result(None)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        while remaining > 0:
            expected = min(remaining, _BATCH)
            batch = loop.create_future()
            request = {"batch": expected, "expires": int(fetch_timeout * 1e9)}
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                             json.dumps(request).encode(), reply=inbox)
            try:
                await asyncio.wait_for(batch, fetch_timeout + 1.0)
            except TimeoutError:
                failure = "no answer"
            if expected > 0:
                raise TimeoutError(f"scan of {bucket} stalled with {remaining} left"
                                   f" ({failure})")
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        # ephemeral: remove it now rather than on inactivity
        with contextlib.suppress(nats.js.errors.Error, nats.errors.Error):
            await js.delete_consumer(stream, name)
    return out
