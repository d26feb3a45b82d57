"""The limiter: the shell that keeps flow control's permits in NATS (docs/flow-control.md).

Runs in every orchestrator. It takes the permit requests the engine's outboxes put on
the LIMITS stream (``<prefix>.limit.<pool>``, shared durable consumer ``limiter``), and
for each: reads the limit's entry in the ``<prefix>_limits`` bucket, applies the request
(:func:`orchestrator.pools.apply`, pure), writes the entry back with compare-and-set,
sends the answers to the workflows concerned (their command subject, deterministic
``Nats-Msg-Id``) and only then acks. A crash anywhere redelivers the request, which is
idempotent by its holder; requests of one limit taken together are applied one after
the other, different limits concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from pydantic import TypeAdapter, ValidationError

from contracts.headers import MSG_ID
from contracts.subjects import Subjects
from transport.consume import ConsumerStalled, PullConsumer
from transport.publish import AsyncPublisher

from .kvscan import scan
from .metrics import OrchestratorMetrics
from .permits import LimitEffect
from .pools import Bucket, Notice, Pool, apply, pool_id
from .records import StopWorkflow

__all__ = ["Limiter", "read_limits"]

log = logging.getLogger("natsflow.limiter")

_CAS_ATTEMPTS = 50
_entries: TypeAdapter[Pool | Bucket] = TypeAdapter(Pool | Bucket)


async def read_limits(kv: KeyValue) -> list[Pool | Bucket]:
    """Every limit entry in the bucket."""
    out: list[Pool | Bucket] = []
    for e in await scan(kv):
        try:
            out.append(_entries.validate_json(e.value))
        except ValidationError:
            log.warning("limits entry %s is not one natsflow wrote; ignored", e.key)
    return out


class Limiter:
    """Takes permit requests and keeps the permits.

    Args:
        nc: Connected NATS client.
        subjects: The deployment's names.
        kv: The limits bucket.
        publisher: Where answers are published.
        clock: Source of ``now`` (UTC).
        batch: Most requests in hand at once.
    """

    def __init__(self, nc: Client, subjects: Subjects, kv: KeyValue, *,
                 publisher: AsyncPublisher,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 batch: int = 256, metrics: OrchestratorMetrics | None = None,
                 sample_interval: float = 5.0) -> None:
        self.nc = nc
        self.subjects = subjects
        self.kv = kv
        self.publisher = publisher
        self.clock = clock
        self.batch = batch
        self.metrics = metrics
        self.sample_interval = sample_interval
        self._sampler: asyncio.Task[None] | None = None
        self._sub: PullConsumer | None = None
        self._loop: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Start taking requests (the stream, consumer and bucket must be declared)."""
        self._sub = await PullConsumer(self.nc, self.subjects.limits_stream,
                                       self.subjects.limiter_consumer,
                                       batch=self.batch).start()
        self._loop = asyncio.create_task(self._take())
        if self.metrics is not None:
            self._sampler = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        """Every ``sample_interval`` s: the gauges of every limit, from the bucket."""
        assert self.metrics is not None
        seen: set[str] = set()
        while not self._stopping.is_set():
            try:
                used: dict[str, int] = {}
                waiting: dict[str, int] = {}
                # No limit used yet (the usual case): one stream info, not a scan (an
                # ephemeral consumer made and deleted) every interval.
                idle = not seen and (await self.kv.status()).values == 0
                for e in [] if idle else await read_limits(self.kv):
                    if isinstance(e, Pool):
                        used[e.pool] = used.get(e.pool, 0) + len(e.holders)
                        waiting[e.pool] = waiting.get(e.pool, 0) + len(e.waiting)
                for name in seen | set(used):
                    self.metrics.limit_in_use.labels(limit=name).set(used.get(name, 0))
                    self.metrics.limit_waiting.labels(limit=name).set(waiting.get(name, 0))
                seen |= set(used)
            except Exception as exc:
                log.warning("sampling the limits failed: %s", exc)
            await asyncio.sleep(self.sample_interval)

    async def stop(self) -> None:
        """Stop taking; a request in hand and unacked is redelivered to another."""
        self._stopping.set()
        for task in (self._loop, self._sampler):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._sub is not None:
            await self._sub.stop()

    async def _take(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.next_batch(self.batch, timeout=1.0)
            except ConsumerStalled:
                log.warning("the server stopped answering the limiter's pull requests")
                await asyncio.sleep(0.5)
                continue
            except Exception:
                log.exception("taking permit requests failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if msgs:
                await self.handle(msgs)

    async def handle(self, msgs: list[Msg]) -> None:
        """Apply one fetch of requests: per limit in order, limits concurrently."""
        groups: dict[str, list[Msg]] = {}
        for msg in msgs:
            groups.setdefault(msg.subject, []).append(msg)
        await asyncio.gather(*(self._group(g) for g in groups.values()))

    async def _group(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                req = LimitEffect.model_validate_json(msg.data)
            except ValidationError:
                log.warning("a permit request that is not one natsflow wrote; dropped")
                await msg.term()
                continue
            try:
                notices = await self.apply(req)
                await self._send(notices)
                await msg.ack()
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("a permit request failed (%s); it is redelivered", exc)
                with contextlib.suppress(nats.errors.Error):  # else after the ack wait
                    await msg.nak(delay=0.5)

    async def apply(self, req: LimitEffect) -> list[Notice]:
        """Apply one request to its entry with compare-and-set; the notices to send."""
        key = pool_id(req.claim)
        for _ in range(_CAS_ATTEMPTS):
            try:
                got = await self.kv.get(key)
                state: Pool | Bucket | None = _entries.validate_json(got.value or b"")
                revision = got.revision or 0
            except nats.js.errors.KeyNotFoundError:
                state, revision = None, 0
            new, notices = apply(state, req, self.clock())
            if new is None:
                return notices
            data = new.model_dump_json(exclude_defaults=True).encode()
            try:
                if revision:
                    await self.kv.update(key, data, last=revision)
                else:
                    await self.kv.create(key, data)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                continue  # another limiter wrote first: read again
            return notices
        raise TimeoutError(f"limit entry {key} kept changing")

    async def _send(self, notices: list[Notice]) -> None:
        acks = []
        for n in notices:
            subject = self.subjects.workflow_command(n.workflow_id)
            if n.stop:
                body = StopWorkflow(reason="cancel_oldest: a newer run takes its place")
                msg_id = f"evict:{n.holder}"
                payload = body.model_dump_json().encode()
            else:
                assert n.answer is not None
                a = n.answer
                msg_id = (f"permit:{n.holder}:{a.index}:{a.outcome}:"
                          f"{a.position or ''}:{a.run_at.timestamp() if a.run_at else ''}")
                payload = a.model_dump_json(exclude_none=True).encode()
            acks.append(await self.publisher.publish(subject, payload, {MSG_ID: msg_id},
                                                     timeout=10.0))
        for ack in acks:
            await ack
