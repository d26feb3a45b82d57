"""Triggers in the orchestrator: where they are kept, what consumes them, their API.

* :class:`TriggerStore` keeps triggers in ``<prefix>_triggers`` and their counters in
  ``<prefix>_trigger_stats`` (compare-and-set, summed over every orchestrator).
* :class:`TriggerRunner` runs in every orchestrator: it watches the triggers bucket and
  pulls each active trigger's durable consumer (shared by every replica, so a message
  goes to one of them at a time). A message is acknowledged only once the create of its
  workflow is stored; one the trigger cannot map is dead-lettered with the reason and the
  trigger's name; a pause stops the pulling and the consumer keeps its place.
* :class:`TriggerApi` answers ``trigger.*`` on the orchestrator's micro service.

The core NATS subjects of triggers are captured by one interest stream,
``<PREFIX>_TRIGGERS``, whose subjects are the :func:`~contracts.triggers.cover` of every
core trigger's subject (a stream refuses two subjects that overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats.js.kv import KeyValue
from prometheus_client import Counter
from pydantic import BaseModel

from contracts.errors import (
    ErrorInfo,
    IdConflict,
    NatsflowError,
    PayloadTooLarge,
    TriggerNotFound,
    Unavailable,
    ValidationFailed,
)
from contracts.namespaces import check_may_create, visible
from contracts.operations import (
    TRIGGER_CREATE,
    TRIGGER_DELETE,
    TRIGGER_GET,
    TRIGGER_LIST,
    TRIGGER_PAUSE,
    TRIGGER_RESUME,
    TRIGGER_STATS,
    WORKFLOW_CREATE,
    Operation,
)
from contracts.permissions import own_streams
from contracts.subjects import Subjects
from contracts.triggers import (
    CreateTriggerRequest,
    ListTriggersRequest,
    PauseTriggerRequest,
    Trigger,
    TriggerInfo,
    TriggerList,
    TriggerReply,
    TriggerRequest,
    TriggerStats,
    check_trigger_subject,
    cover,
    map_message,
    trigger_key,
)
from transport.consume import PullConsumer
from transport.streams import Topology, declare_stream

from .definitions import DefinitionStore
from .kvscan import scan
from .letters import Verdict

__all__ = ["TriggerApi", "TriggerRunner", "TriggerStore", "sync_capture"]

log = logging.getLogger("natsflow.triggers")

#: Seconds between two writes of a replica's counters to the stats bucket.
STATS_FLUSH = 1.0
#: Seconds before a trigger's consume loop that failed is started again.
_LOOP_PAUSE = 1.0
_OVERLAP_CODES = frozenset({10065, 10052})  # subjects overlap (another stream, this one)


def _now() -> datetime:
    return datetime.now(UTC)


class TriggerStore:
    """Triggers and their counters in two KV buckets."""

    def __init__(self, kv: KeyValue, stats: KeyValue) -> None:
        self.kv = kv
        self.stats_kv = stats

    async def get(self, namespace: str, name: str) -> tuple[Trigger, int]:
        """A trigger and its revision.

        Raises:
            TriggerNotFound: there is none.
        """
        try:
            entry = await self.kv.get(trigger_key(namespace, name))
        except nats.js.errors.KeyNotFoundError:
            raise TriggerNotFound(f"no trigger {name!r}", field="name") from None
        assert entry.value is not None and entry.revision is not None
        return Trigger.model_validate_json(entry.value), entry.revision

    async def create(self, trigger: Trigger) -> bool:
        """Store a new trigger; False if its key exists."""
        try:
            await self.kv.create(trigger_key(trigger.spec.namespace, trigger.spec.name),
                                 trigger.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def update(self, trigger: Trigger, revision: int) -> None:
        """Replace a trigger read at ``revision`` (raises if it changed meanwhile)."""
        await self.kv.update(trigger_key(trigger.spec.namespace, trigger.spec.name),
                             trigger.model_dump_json().encode(), last=revision)

    async def delete(self, namespace: str, name: str) -> None:
        """Remove a trigger and its counters."""
        key = trigger_key(namespace, name)
        await self.kv.purge(key)
        with contextlib.suppress(nats.js.errors.Error):
            await self.stats_kv.purge(key)

    async def all(self) -> list[Trigger]:
        """Every trigger (one listing of the bucket, :func:`orchestrator.kvscan.scan`)."""
        out = [Trigger.model_validate_json(e.value) for e in await scan(self.kv) if e.value]
        return sorted(out, key=lambda t: (t.spec.namespace, t.spec.name))

    async def stats(self, namespace: str, name: str) -> TriggerStats:
        """A trigger's counters (zero when none were written yet)."""
        try:
            entry = await self.stats_kv.get(trigger_key(namespace, name))
        except nats.js.errors.KeyNotFoundError:
            return TriggerStats()
        return TriggerStats.model_validate_json(entry.value or b"{}")

    async def add_stats(self, namespace: str, name: str, delta: TriggerStats) -> None:
        """Add ``delta`` to a trigger's counters (compare-and-set, retried)."""
        key = trigger_key(namespace, name)
        for _ in range(20):
            try:
                entry = await self.stats_kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                try:
                    await self.stats_kv.create(key, delta.model_dump_json().encode())
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
            total = TriggerStats.model_validate_json(entry.value or b"{}").plus(delta)
            try:
                await self.stats_kv.update(key, total.model_dump_json().encode(),
                                           last=entry.revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise Unavailable(f"could not add to the counters of trigger {name!r}")


def _refusal(exc: nats.js.errors.APIError) -> bool:
    """NATS refuses a config (rather than being away): overlapping subjects answer 500."""
    return (isinstance(exc, nats.js.errors.BadRequestError)
            or exc.err_code in _OVERLAP_CODES)


def _subject_refused(exc: nats.js.errors.APIError, where: str) -> ValidationFailed:
    return ValidationFailed(f"NATS refuses the trigger's {where}: {exc.description}",
                            field="subject" if exc.err_code in _OVERLAP_CODES else where,
                            details={"nats_error": exc.err_code})


async def sync_capture(nc: Client, topology: Topology, triggers: list[Trigger]) -> None:
    """Make ``<PREFIX>_TRIGGERS`` capture the core subjects of ``triggers`` (paused ones
    too: what they miss meanwhile waits for them); no core trigger, no stream.

    Raises:
        ValidationFailed: NATS refuses the subjects (one overlaps another stream's).
    """
    js = nc.jetstream()
    subjects = cover([t.spec.subject for t in triggers if t.spec.stream is None])
    if not subjects:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(topology.subjects.triggers_stream)
        return
    try:
        await declare_stream(js, topology.triggers(subjects))
    except nats.js.errors.APIError as exc:
        if not _refusal(exc):
            raise
        raise _subject_refused(exc, "subject") from None


def _source(subjects: Subjects, trigger: Trigger) -> str:
    return trigger.spec.stream or subjects.triggers_stream


def _consumer_config(topology: Topology, trigger: Trigger) -> ConsumerConfig:
    s = trigger.spec
    return topology.trigger_consumer(s.namespace, s.name, subject=s.subject,
                                     deliver_all=s.stream is None or s.deliver == "all")


async def ensure_trigger_consumer(nc: Client, topology: Topology, trigger: Trigger) -> None:
    """Create (or find) the trigger's durable consumer.

    Raises:
        ValidationFailed: NATS refuses it (a work-queue stream with an overlapping
            consumer, say).
    """
    try:
        await nc.jetstream().add_consumer(_source(topology.subjects, trigger),
                                          _consumer_config(topology, trigger))
    except nats.js.errors.APIError as exc:
        if not _refusal(exc):
            raise
        raise _subject_refused(exc, "stream") from None


# -- consuming -----------------------------------------------------------------------
_OUTCOMES = ("received", "matched", "skipped", "started", "duplicates", "failed")


@dataclass
class _Loop:
    trigger: Trigger
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


#: Creates a workflow from ``workflow.create`` request JSON; answers its reply.
CreateFn = Callable[[bytes], Awaitable[BaseModel | bytes]]
SettleFn = Callable[[Msg, Verdict], Awaitable[None]]
DeadLetterFn = Callable[[Msg, ErrorInfo], Awaitable[None]]


class TriggerRunner:
    """Consumes every active trigger, in every orchestrator.

    Args:
        nc: Connected NATS client.
        topology: The deployment's stream and consumer configs.
        store: The triggers.
        create: The API's ``workflow.create`` (in-process: the same checks as any caller).
        settle: Acks or hands back a message.
        dead_letter: Keeps a message that cannot be mapped, with its reason.
        messages: The Prometheus counter of messages by trigger and outcome.
        batch: Most messages of one trigger in hand at once.
    """

    def __init__(self, nc: Client, topology: Topology, store: TriggerStore, *,
                 create: CreateFn, settle: SettleFn, dead_letter: DeadLetterFn,
                 messages: Counter, batch: int = 128) -> None:
        self.nc = nc
        self.topology = topology
        self.subjects = topology.subjects
        self.store = store
        self.create = create
        self.settle = settle
        self.dead_letter = dead_letter
        self.batch = batch
        self.messages = messages
        self._loops: dict[str, _Loop] = {}
        self._pending: dict[str, dict[str, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Watch the triggers bucket and flush counters, in the background."""
        self._tasks = [asyncio.create_task(self._watch()),
                       asyncio.create_task(self._flush_stats())]

    async def stop(self) -> None:
        """Stop every consume loop (messages in hand finish or go back) and flush."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._end(key) for key in list(self._loops)),
                             return_exceptions=True)
        await self._flush_once()

    # -- the set of triggers ----------------------------------------------------------
    async def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                watcher = await self.store.kv.watchall()
                initial = True
                async for entry in watcher:
                    if entry is None:  # the initial values are in
                        initial = False
                        await self._resync()
                        continue
                    key = entry.key
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        await self._end(key)
                    else:
                        await self._apply(key, Trigger.model_validate_json(entry.value))
                    if not initial:
                        await self._resync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watching the triggers failed; watching again")
                await asyncio.sleep(_LOOP_PAUSE)

    async def _resync(self) -> None:
        """Bring the capture stream to the stored triggers: it heals a stream lost with a
        server's data, and two creates at once on two replicas (each wrote the subjects
        it knew of)."""
        try:
            await sync_capture(self.nc, self.topology, await self.store.all())
        except Exception as exc:
            log.warning("could not bring the triggers' capture stream up to date: %s", exc)

    async def _apply(self, key: str, trigger: Trigger) -> None:
        running = self._loops.get(key)
        if running is not None and (trigger.paused or running.trigger.spec != trigger.spec):
            await self._end(key)
            running = None
        if running is None and not trigger.paused:
            loop = _Loop(trigger)
            loop.task = asyncio.create_task(self._consume(loop))
            self._loops[key] = loop
        elif running is not None:
            running.trigger = trigger

    async def _end(self, key: str) -> None:
        loop = self._loops.pop(key, None)
        if loop is None:
            return
        loop.stop.set()
        if loop.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(loop.task), 10.0)
        except TimeoutError:
            loop.task.cancel()
            await asyncio.gather(loop.task, return_exceptions=True)

    async def _consume(self, loop: _Loop) -> None:
        trigger = loop.trigger
        while not loop.stop.is_set():
            try:
                await ensure_trigger_consumer(self.nc, self.topology, trigger)
                sub = await PullConsumer(
                    self.nc, _source(self.subjects, trigger),
                    self.subjects.trigger_consumer(trigger.spec.namespace, trigger.spec.name),
                    batch=self.batch).start()
            except Exception as exc:
                log.warning("trigger %s cannot consume yet: %s", trigger.spec.name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(loop.stop.wait(), _LOOP_PAUSE)
                continue
            try:
                while not loop.stop.is_set():
                    msgs = await sub.next_batch(self.batch, timeout=0.5)
                    if msgs:
                        await asyncio.gather(*(self._handle(loop.trigger, m) for m in msgs))
            except Exception:
                log.exception("trigger %s: consuming failed; again", trigger.spec.name)
                await asyncio.sleep(_LOOP_PAUSE)
            finally:
                await sub.stop()

    # -- one message ------------------------------------------------------------------
    def _count(self, trigger: Trigger, outcome: str) -> None:
        s = trigger.spec
        self.messages.labels(namespace=s.namespace, trigger=s.name, outcome=outcome).inc()
        pending = self._pending.setdefault(trigger_key(s.namespace, s.name), {})
        pending[outcome] = pending.get(outcome, 0) + 1

    async def _handle(self, trigger: Trigger, msg: Msg) -> None:
        self._count(trigger, "received")
        try:
            verdict = await self._start_workflow(trigger, msg)
        except NatsflowError as exc:
            if exc.retryable:
                log.info("trigger %s: %s; the message will come again", trigger.spec.name, exc)
                await self.settle(msg, Verdict.RETRY)
                return
            self._count(trigger, "failed")
            info = exc.info()
            details = {**(info.details or {}), "trigger": trigger.spec.name,
                       "namespace": trigger.spec.namespace}
            await self.dead_letter(msg, info.model_copy(update={"details": details}))
            return
        except Exception:
            log.exception("trigger %s: a message failed; it will come again",
                          trigger.spec.name)
            await self.settle(msg, Verdict.RETRY)
            return
        await self.settle(msg, verdict)

    async def _start_workflow(self, trigger: Trigger, msg: Msg) -> Verdict:
        body = map_message(trigger.spec, subject=msg.subject, data=msg.data,
                           headers=msg.headers)
        if body is None:
            self._count(trigger, "skipped")
            return Verdict.ACK
        self._count(trigger, "matched")
        data = json.dumps(body, separators=(",", ":")).encode()
        if len(data) > WORKFLOW_CREATE.max_bytes:
            raise PayloadTooLarge(f"the mapped create is {len(data)} bytes, over the "
                                  f"limit of {WORKFLOW_CREATE.max_bytes}", field="input")
        try:
            reply = await self.create(data)
        except IdConflict as exc:
            # The id decides: a workflow with it exists, from another message.
            log.info("trigger %s: %s", trigger.spec.name, exc)
            self._count(trigger, "duplicates")
            return Verdict.ACK
        created = (json.loads(reply).get("created") if isinstance(reply, bytes)
                   else getattr(reply, "created", True))
        self._count(trigger, "started" if created else "duplicates")
        return Verdict.ACK

    # -- counters ---------------------------------------------------------------------
    async def _flush_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_FLUSH)
            await self._flush_once()

    async def _flush_once(self) -> None:
        pending, self._pending = self._pending, {}
        for key, counts in pending.items():
            namespace, name = key.split(".", 1)
            delta = TriggerStats(**{k: counts.get(k, 0) for k in _OUTCOMES})
            try:
                await self.store.add_stats(namespace, name, delta)
            except Exception as exc:  # counted again next time
                log.debug("could not write the counters of %s: %s", key, exc)
                again = self._pending.setdefault(key, {})
                for k, v in counts.items():
                    again[k] = again.get(k, 0) + v


# -- the API -------------------------------------------------------------------------
class TriggerApi:
    """The handlers of ``trigger.*`` (registered on the orchestrator's micro service)."""

    def __init__(self, nc: Client, topology: Topology, store: TriggerStore,
                 definitions: DefinitionStore) -> None:
        self.nc = nc
        self.topology = topology
        self.subjects = topology.subjects
        self.store = store
        self.definitions = definitions

    async def _info(self, trigger: Trigger) -> TriggerInfo:
        s = trigger.spec
        return TriggerInfo(trigger=trigger, stats=await self.store.stats(s.namespace, s.name))

    async def _visible(self, req: TriggerRequest) -> tuple[Trigger, int]:
        if not visible(req.namespace, req.namespaces):
            raise TriggerNotFound(f"no trigger {req.name!r}", field="name")
        return await self.store.get(req.namespace, req.name)

    async def create(self, data: bytes) -> TriggerReply:
        """``trigger.create``: CreateTriggerRequest -> TriggerReply."""
        req = CreateTriggerRequest.model_validate_json(data)
        spec = req.spec()
        check_may_create(spec.namespace, req.namespaces)
        check_trigger_subject(spec.subject, self.subjects)
        await self._check_source(spec.stream)
        await self._check_workflow(req)
        with contextlib.suppress(TriggerNotFound):
            have, _ = await self.store.get(spec.namespace, spec.name)
            if have.spec == spec:
                return TriggerReply(trigger=have, created=False)
            raise IdConflict(f"trigger {spec.name!r} exists with another definition: "
                             "delete it first", field="name")
        now = _now()
        trigger = Trigger(spec=spec, paused=req.paused, created_at=now, updated_at=now)
        if spec.stream is None:
            await sync_capture(self.nc, self.topology, [*await self.store.all(), trigger])
        await ensure_trigger_consumer(self.nc, self.topology, trigger)
        if not await self.store.create(trigger):
            raise IdConflict(f"trigger {spec.name!r} was just made by someone else",
                             field="name")
        return TriggerReply(trigger=trigger, created=True)

    async def _check_source(self, stream: str | None) -> None:
        if stream is None:
            return
        if stream in own_streams(self.subjects):
            raise ValidationFailed(f"stream {stream!r} is natsflow's own", field="stream")
        try:
            await self.nc.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise ValidationFailed(f"no stream {stream!r}", field="stream") from None

    async def _check_workflow(self, req: CreateTriggerRequest) -> None:
        if req.config is not None:
            DefinitionStore.validate(str(req.config.get("name", req.name)), req.config,
                                     namespace=req.namespace)
        else:
            assert req.definition is not None
            await self.definitions.get(req.definition, req.version, namespace=req.namespace)

    async def get(self, data: bytes) -> TriggerInfo:
        """``trigger.get``: TriggerRequest -> TriggerInfo."""
        trigger, _ = await self._visible(TriggerRequest.model_validate_json(data))
        return await self._info(trigger)

    async def stats(self, data: bytes) -> TriggerStats:
        """``trigger.stats``: TriggerRequest -> TriggerStats."""
        req = TriggerRequest.model_validate_json(data)
        await self._visible(req)
        return await self.store.stats(req.namespace, req.name)

    async def list(self, data: bytes) -> TriggerList:
        """``trigger.list``: ListTriggersRequest -> TriggerList."""
        req = ListTriggersRequest.model_validate_json(data)
        return TriggerList(triggers=[
            await self._info(t) for t in await self.store.all()
            if visible(t.spec.namespace, req.namespaces)
            and (req.namespace is None or t.spec.namespace == req.namespace)])

    async def _set_paused(self, req: TriggerRequest, *, paused: bool,
                          note: str | None) -> TriggerReply:
        for _ in range(10):
            trigger, revision = await self._visible(req)
            if trigger.paused == paused and trigger.note == note:
                return TriggerReply(trigger=trigger)
            changed = trigger.model_copy(update={"paused": paused, "note": note,
                                                 "updated_at": _now()})
            try:
                await self.store.update(changed, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return TriggerReply(trigger=changed)
        raise Unavailable(f"trigger {req.name!r} keeps changing; try again")

    async def pause(self, data: bytes) -> TriggerReply:
        """``trigger.pause``: PauseTriggerRequest -> TriggerReply."""
        req = PauseTriggerRequest.model_validate_json(data)
        return await self._set_paused(req, paused=True, note=req.note)

    async def resume(self, data: bytes) -> TriggerReply:
        """``trigger.resume``: TriggerRequest -> TriggerReply."""
        return await self._set_paused(TriggerRequest.model_validate_json(data),
                                      paused=False, note=None)

    async def delete(self, data: bytes) -> TriggerReply:
        """``trigger.delete``: TriggerRequest -> TriggerReply (the trigger deleted)."""
        req = TriggerRequest.model_validate_json(data)
        trigger, _ = await self._visible(req)
        await self.store.delete(req.namespace, req.name)
        js = self.nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(_source(self.subjects, trigger),
                                     self.subjects.trigger_consumer(req.namespace, req.name))
        if trigger.spec.stream is None:
            await sync_capture(self.nc, self.topology, await self.store.all())
        return TriggerReply(trigger=trigger)

    def handlers(self) -> dict[Operation[Any, Any], Callable[[bytes], Awaitable[Any]]]:
        """Each ``trigger.*`` operation's handler."""
        return {TRIGGER_CREATE: self.create, TRIGGER_GET: self.get, TRIGGER_LIST: self.list,
                TRIGGER_PAUSE: self.pause, TRIGGER_RESUME: self.resume,
                TRIGGER_DELETE: self.delete, TRIGGER_STATS: self.stats}
