"""The thin async shell around the engines.

For every message: parse it, load the record, call the engine, save the record with
compare-and-set (its outbox included), publish the outbox with deterministic
``Nats-Msg-Id`` headers, then settle the message. Messages of one fetch are grouped by
workflow (or batch): each group is one read, one write and one publish round, and
groups run concurrently.

Crash safety: a crash after the write but before the publish leaves the outbox in the
record; whoever loads the record next from the store republishes it (JetStream drops
what it had already stored by message id). A crash before the ack redelivers the
message; the engine treats it as the duplicate it is.

Latency: a decision's tasks leave together with the record's write, not after it (a
task is at-least-once by contract and deduplicated by its attempt's id, so sending one
whose save then fails costs nothing but a deferred result: the engine answers a result
it cannot place yet with ``Reply.early`` and it is handed back until the save lands).
Events leave only after the save. One record's transitions are serialized by a lock
that is held until the outbox is *sent*, not acknowledged: the next transition carries
the still unacknowledged effects into its own outbox, so a crash loses none of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, TypeAdapter, ValidationError

from contracts.consume import delivery_count
from contracts.dead_letters import dead_letter, give_up_on_letter
from contracts.egress import EgressPolicy, check_literal_subjects
from contracts.errors import (
    ErrorInfo,
    NatsflowError,
    PayloadTooLarge,
    RecordUnreadable,
    validation_failed,
)
from contracts.headers import MSG_ID, OUTCOME_ERROR_HEADER, REPLY_HEADER
from contracts.ids import deterministic_id
from contracts.messages import BatchReply, TaskFailed, TaskResult, WorkflowReply
from contracts.models import MAX_CONFIG_BYTES, WORKFLOW_TERMINAL, WorkflowConfig
from contracts.namespaces import DEFAULT_NAMESPACE
from contracts.publish import AsyncPublisher, send
from contracts.streams import DUPLICATE_WINDOW
from contracts.subjects import Subjects
from contracts.tracing import TraceContext, extract
from contracts.transient import ConditionLog, describe, is_transient

from . import fanout, faults
from .batch_engine import decide_batch
from .engine import EngineSettings, decide
from .metrics import OrchestratorMetrics
from .outputs import OutputStore
from .records import (
    BatchCommand,
    BatchRecord,
    CancelEffect,
    CreateWorkflow,
    Effect,
    EventEffect,
    JoinMapEffect,
    MapJoined,
    MemberFinished,
    NotifyBatchEffect,
    NotifyParentEffect,
    PutOutputEffect,
    Reply,
    ResultInput,
    StartChildEffect,
    SummaryEffect,
    TaskEffect,
    TimerEffect,
    TimerFired,
    WebhookEffect,
    WorkflowCommand,
    WorkflowCommandEffect,
    WorkflowRecord,
    read_record,
)
from .spans import emit_decision_spans
from .store import RecordStore, StaleRevision

__all__ = ["DefinitionResolver", "Processor", "Verdict", "fingerprint"]

log = logging.getLogger("natsflow.orchestrator")

#: Deliveries after which a message that keeps failing is dead-lettered.
MAX_DELIVERIES = 20
_CAS_ATTEMPTS = 8
_PUBLISH_TIMEOUT = 10.0
#: An early result (see the module doc) is handed back until it is this old, then
#: dropped as stale: beyond the duplicate window a dispatch of its attempt would be a
#: new message that a worker runs afresh.
EARLY_RESULT_PATIENCE = DUPLICATE_WINDOW + 30.0
_EARLY_DELAY_MAX = 2.0

_workflow_commands: TypeAdapter[Any] = TypeAdapter(WorkflowCommand)
_batch_commands: TypeAdapter[Any] = TypeAdapter(BatchCommand)
_task_results: TypeAdapter[Any] = TypeAdapter(TaskResult)


def _log_context(entity: str, key: str) -> dict[str, str]:
    """``extra`` for a log line about one record (structured logs carry it)."""
    return {"workflow_id": key} if entity == "wf" else {"batch_id": key}


def fingerprint(model: BaseModel) -> str:
    """A digest of a config, to tell an identical resubmit from a conflicting one."""
    return hashlib.sha256(model.model_dump_json(exclude={"id"}).encode()).hexdigest()[:32]


def _leaves_early(effect: Effect) -> bool:
    """Sent with the record's write rather than after it: a plain step's task."""
    return isinstance(effect, TaskEffect) and fanout.parse_item(effect.task.step_id) is None


async def _all(coros: list[Coroutine[Any, Any, Any]]) -> None:
    """Run these concurrently; one alone is awaited in place, without a task, so it
    starts in this turn of the loop (a chain's next step, a quiet moment)."""
    if len(coros) == 1:
        await coros[0]
    else:
        await asyncio.gather(*coros)


async def _every(acks: list[asyncio.Future[Any]]) -> None:
    """Every ack, awaited in turn: they come back in about the order they were sent, so
    this wakes up once or twice, where gather runs a callback per ack."""
    try:
        for ack in acks:
            await ack
    except BaseException:
        _abandon(acks)  # the others' errors, if any, are not raised too
        raise


def _abandon(acks: list[asyncio.Future[Any]]) -> None:
    """Let go of sends whose outcome no longer matters (their errors are not raised)."""
    for ack in acks:
        ack.add_done_callback(lambda f: f.cancelled() or f.exception())


class DefinitionResolver(Protocol):
    """Where child workflows' definitions come from (the definitions registry)."""

    async def resolve_config(self, name: str, version: int | None, *,
                             namespace: str = DEFAULT_NAMESPACE) -> WorkflowConfig:
        """The config of that definition version (latest if None) in ``namespace``.

        Raises:
            NatsflowError: no such definition or version (a code saying so).
        """
        ...


class Verdict(Enum):
    """What becomes of a message; decided in :meth:`Processor.settle` only."""

    ACK = "ack"
    RETRY = "retry"  # nak with a short delay
    TERM = "term"  # never redeliver (after dead-lettering)


class Malformed(Exception):
    """A message that can never be processed; it goes to the dead-letter stream."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


@dataclass(slots=True)
class Item:
    """One parsed inbox message."""

    entity: str  # "wf" or "batch"
    key: str
    input: Any
    msg: Msg | None
    reply_to: str | None


R = TypeVar("R", WorkflowRecord, BatchRecord)

#: JSON bytes of unfinished records one process keeps in memory (about ten times as
#: much RSS); beyond it the least recently used are dropped and re-read from KV.
CACHE_BUDGET_BYTES = 16 * 1024 * 1024


class RecordCache(Generic[R]):
    """Records this process wrote (and published) itself: LRU, bounded in bytes.

    A hit saves a KV read; a stale hit costs nothing but a failed compare-and-set.
    """

    def __init__(self, budget: int = CACHE_BUDGET_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[str, tuple[int, R, int]] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> tuple[int, R, int] | None:
        """(revision, record, size), most recently used now; None if absent."""
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit

    def pop(self, key: str) -> None:
        hit = self._items.pop(key, None)
        if hit is not None:
            self.used -= hit[2]

    def put(self, key: str, revision: int, record: R, size: int) -> None:
        self.pop(key)
        self._items[key] = (revision, record, size)
        self.used += size
        while self.used > self.budget and self._items:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self.used -= dropped


class _KeyLocks:
    """One FIFO lock per record key, kept only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: tuple[str, str]) -> None:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._forget(key)
            raise

    def release(self, key: tuple[str, str]) -> None:
        self._locks[key][0].release()
        self._forget(key)

    def _forget(self, key: tuple[str, str]) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


@dataclass(slots=True)
class _Part:
    """One transition's share of an outbox: its effects, their message bodies by the
    effect's ``id``, and its own acks (then its map joins)."""

    effects: list[Any]
    bodies: dict[int, bytes]
    acked: asyncio.Future[Any]

    @property
    def stored(self) -> bool:
        """Every message of it stored and every join of it done."""
        acked = self.acked
        return acked.done() and not acked.cancelled() and acked.exception() is None


@dataclass(slots=True)
class _Sent:
    """An outbox sent but not yet acknowledged: its parts and their acks."""

    acked: asyncio.Future[Any]  # every part's acks
    own: list[Any]  # the effects of this transition alone
    #: The transitions whose effects the outbox holds, oldest first: the next transition
    #: carries on only those not yet stored, so a record that changes faster than its
    #: acks come back (a map's results) does not carry ever more of them.
    parts: list[_Part]


class _Entity(Generic[R]):
    """How to load, decide and answer for one kind of record."""

    def __init__(self, name: str, store: RecordStore, model: type[R],
                 decide_fn: Callable[[R | None, Any, datetime, str], Any],
                 reply_fn: Callable[[str, R | None, Reply], BaseModel]) -> None:
        self.name = name
        self.store = store
        self.model: type[R] = model
        self.decide: Callable[[R | None, Any, datetime, str], Any] = decide_fn
        self.reply: Callable[[str, R | None, Reply], BaseModel] = reply_fn
        self.cache: RecordCache[R] = RecordCache()
        #: Outboxes sent and not yet acknowledged, by key (see the module doc).
        self.sent: dict[str, _Sent] = {}

    def remember(self, key: str, revision: int, record: R, *, terminal: bool,
                 size: int) -> None:
        """Cache a record whose outbox is published (finished ones leave the process)."""
        self.cache.pop(key)
        if terminal:
            return  # its state lives in NATS
        # The outbox is published: the cached copy need not carry it.
        record.outbox = []
        self.cache.put(key, revision, record, size)


class Processor:
    """Turns inbox messages into engine decisions, stored and published.

    Args:
        nc: Connected NATS client.
        subjects: The deployment's names.
        workflows: Store of workflow records.
        batches: Store of batch records.
        settings: Engine knobs.
        clock: Source of ``now`` (UTC).
        metrics: Where to count what happens (a registry of its own if None).
        publisher: Where outboxes are published (one of its own if None, started by
            the first publication).
        egress: The egress policy: a submit whose literal subjects it refuses is a
            dead letter (None: the defaults).
    """

    def __init__(self, nc: Client, subjects: Subjects, *, workflows: RecordStore,
                 batches: RecordStore, settings: EngineSettings | None = None,
                 definitions: DefinitionResolver | None = None,
                 outputs: OutputStore | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 metrics: OrchestratorMetrics | None = None,
                 publisher: AsyncPublisher | None = None,
                 egress: EgressPolicy | None = None) -> None:
        self.nc = nc
        self.egress = egress or EgressPolicy()
        self._publisher = publisher or AsyncPublisher(nc)
        self.definitions = definitions
        self.outputs = outputs
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self.settings = settings or EngineSettings(subjects=subjects)
        self.clock = clock
        self.stats = {"processed": 0, "dead_letters": 0, "cas_retries": 0}
        self.wf: _Entity[WorkflowRecord] = _Entity(
            "wf", workflows, WorkflowRecord,
            lambda rec, inp, now, key: decide(rec, inp, now, self.settings),
            lambda key, rec, reply: WorkflowReply(
                id=key, created=reply.created, status=rec.status if rec else None))
        self.batch: _Entity[BatchRecord] = _Entity(
            "batch", batches, BatchRecord,
            lambda rec, inp, now, key: decide_batch(rec, inp, now, batch_id=key),
            lambda key, rec, reply: BatchReply(
                id=key, created=reply.created, status=rec.status if rec else None))
        self._locks = _KeyLocks()
        #: Transient faults, logged once per condition with a count (not per message).
        self._conditions = ConditionLog(log)
        self.metrics = metrics or OrchestratorMetrics()
        self.metrics.track_cache(self.wf.name, self.wf.cache.__len__)
        self.metrics.track_cache(self.batch.name, self.batch.cache.__len__)

    # -- parsing --------------------------------------------------------------------
    def parse(self, msg: Msg) -> Item:
        """Parse one inbox message.

        Raises:
            Malformed: the message can never be processed.
        """
        try:
            kind, key = self.subjects.kind_of(msg.subject)
        except ValueError as exc:
            raise Malformed(ErrorInfo(code="unknown-subject", message=str(exc))) from None
        reply_to = msg.headers.get(REPLY_HEADER) if msg.headers else None
        try:
            if kind == "submit":
                return self._parse_submit(msg)
            if kind == "wf":
                return Item("wf", key, _workflow_commands.validate_json(msg.data), msg, reply_to)
            if kind == "batch":
                return Item("batch", key, _batch_commands.validate_json(msg.data), msg, reply_to)
            if kind == "result":
                result = _task_results.validate_json(msg.data)
                if result.workflow_id != key:
                    raise Malformed(ErrorInfo(
                        code="invalid-result", field="workflow_id",
                        message=f"result for {result.workflow_id} sent to {msg.subject}"))
                return Item("wf", key, ResultInput(result=result, size=len(msg.data)), msg,
                            None)
            timer = TimerFired.model_validate_json(msg.data)
            return Item("wf", timer.workflow_id, timer, msg, None)
        except ValidationError as exc:
            err = validation_failed(exc)
            raise Malformed(ErrorInfo(code=f"invalid-{kind}", message=err.message,
                                      errors=err.errors)) from None
        except NatsflowError as exc:
            raise Malformed(exc.info()) from None

    def _parse_submit(self, msg: Msg) -> Item:
        # The API's limit (and the gateway's): a larger config is refused before it is
        # parsed, let alone stored (a record that does not fit fails on every attempt).
        if len(msg.data) > MAX_CONFIG_BYTES:
            raise PayloadTooLarge(f"a config of {len(msg.data)} bytes is over the limit of "
                                  f"{MAX_CONFIG_BYTES} bytes",
                                  details={"limit": MAX_CONFIG_BYTES})
        config = WorkflowConfig.model_validate_json(msg.data)
        check_literal_subjects(config, policy=self.egress, subjects=self.subjects)
        if config.id is None:
            # A redelivered submit must map to the same workflow: derive the id from
            # the message's place in the stream.
            meta = msg.metadata
            config = config.model_copy(update={"id": deterministic_id(
                meta.timestamp, f"{meta.stream}:{meta.sequence.stream}")})
        assert config.id is not None
        # The submitter's trace context travels as headers, like everywhere else.
        return Item("wf", config.id, CreateWorkflow(config=config,
                                                    fingerprint=fingerprint(config),
                                                    trace=extract(msg.headers)),
                    msg, None)

    # -- processing -----------------------------------------------------------------
    async def handle(self, msgs: Sequence[Msg]) -> None:
        """Process one fetched batch of inbox messages and settle each of them."""
        items: list[Item] = []
        malformed: list[tuple[Msg, ErrorInfo]] = []
        for msg in msgs:
            # Counted here, not in parse: the timer loop hands timers back until due.
            if delivery_count(msg) > 1:
                self.metrics.redeliveries.inc()
            try:
                items.append(self.parse(msg))
            except Malformed as exc:
                malformed.append((msg, exc.info))
        # No suspension before the records' locks are asked for: batches taken one
        # after the other reach each record in the order they were taken.
        await _all([self.process(items),
                    *(self.dead_letter(msg, info) for msg, info in malformed)])

    async def process(self, items: Sequence[Item]) -> None:
        """Apply parsed items, grouped by record, groups concurrently."""
        groups: dict[tuple[str, str], list[Item]] = {}
        for item in items:
            groups.setdefault((item.entity, item.key), []).append(item)
        await _all([self._process_group(self.wf if ent == "wf" else self.batch, key, group)
                    for (ent, key), group in groups.items()])

    async def _process_group(self, entity: _Entity[Any], key: str, items: list[Item]) -> None:
        try:
            outcome = await self._apply(entity, key, items)
        except RecordUnreadable as exc:
            # Nothing can act on it, now or later: say so at once, rather than retry.
            entity.cache.pop(key)
            for item in items:
                if item.msg is not None:
                    await self.dead_letter(item.msg, exc.info(),
                                           log_context=_log_context(entity.name, key))
                if item.reply_to:
                    await self._send_reply(item.reply_to, entity, key, None,
                                           Reply(error=exc.info()))
            return
        except Exception as exc:
            if is_transient(exc):  # NATS or a bucket away: one line per condition
                self._conditions(f"processing failed ({type(exc).__name__})",
                                 "processing %s %s failed (%s); will retry", entity.name, key,
                                 describe(exc), extra=_log_context(entity.name, key))
            else:
                log.exception("processing %s %s failed; will retry", entity.name, key,
                              extra=_log_context(entity.name, key))
            entity.cache.pop(key)
            for item in items:
                await self._retry_or_dead_letter(item, "processing failed")
            return
        if outcome is None:
            for item in items:
                await self._retry_or_dead_letter(item, "store contention")
            return
        record, replies = outcome
        for item, reply in zip(items, replies, strict=True):
            if reply.refused is not None:
                if reply.refused.code == "forged-result":
                    self.metrics.forged_results.inc()
                if item.msg is not None:
                    await self.dead_letter(item.msg, reply.refused,
                                           log_context=_log_context(entity.name, key))
                continue
            if item.msg is not None:
                if reply.early:
                    await self._hand_back_early(item.msg)
                    continue
                await self.settle(item.msg, Verdict.ACK)
            if item.reply_to:
                await self._send_reply(item.reply_to, entity, key, record, reply)
        self.stats["processed"] += len(items)

    async def _apply(self, entity: _Entity[Any], key: str, items: list[Item]
                     ) -> tuple[Any, list[Reply]] | None:
        lock = (entity.name, key)
        await self._locks.acquire(lock)
        try:
            outcome = await self._transition(entity, key, items)
        finally:
            self._locks.release(lock)
        if outcome is None:
            return None
        record, replies, sent, before = outcome
        if sent is not None:
            try:
                # Each ack fails by itself after _PUBLISH_TIMEOUT: no timer here.
                await asyncio.shield(sent.acked)
            finally:
                if entity.sent.get(key) is sent:
                    del entity.sent[key]
            if faults.PLAN is not None:
                faults.PLAN.reach("after-publish")
            if before is not record:
                self._published(key, before, record, sent.own)
        return record, replies

    def _published(self, key: str, before: Any, current: Any, effects: list[Effect]) -> None:
        """Bookkeeping once a transition's outbox is stored."""
        if isinstance(current, WorkflowRecord):
            self.metrics.observe_published(before, current, effects)
            emit_decision_spans(before, current, effects)
            if self._is_terminal(current) and (before is None or not self._is_terminal(before)):
                log.info("workflow %s %s", key, current.status.state.value,
                         extra=_log_context("wf", key))

    async def _transition(self, entity: _Entity[Any], key: str, items: list[Item]
                          ) -> tuple[Any, list[Reply], _Sent | None, Any] | None:
        """Load, decide, save and send (holding the record's lock); None on contention.

        Returns (record, replies, what was sent and awaits acks, the record before).
        """
        # A create for a key this process has not seen is almost always for a new
        # record: try the write as "must not exist" and skip the read; if the key does
        # exist the write fails and the normal read-decide-write loop takes over.
        assume_new = key not in entity.cache and items[0].input.kind == "create"
        for _ in range(_CAS_ATTEMPTS):
            if assume_new:
                record, revision, cached, size = None, 0, True, 0
                assume_new = False
            else:
                record, revision, cached, size = await self._load(entity, key)
            carried = entity.sent.get(key) if cached else None
            if record is not None and not cached and record.outbox:
                await self._flush_stale_outbox(key, record)
            now = self.clock()
            current = record
            effects: list[Effect] = []
            replies: list[Reply] = []
            for item in items:
                decision = entity.decide(current, item.input, now, key)
                if decision.record is not None:
                    current = decision.record
                    effects.extend(decision.effects)
                replies.append(decision.reply)
            if current is record or current is None:
                if cached and record is not None:
                    # "Nothing to do" may only mean the cached copy is stale: another
                    # replica moved the record on, and e.g. a result for the step it
                    # dispatched looks stale here. No write means no CAS to catch it,
                    # so decide again on the stored record.
                    entity.cache.pop(key)
                    continue
                if record is not None:
                    entity.remember(key, revision, record, terminal=self._is_terminal(record),
                                    size=size)
                # Replies describe the record: let what it last sent be stored first.
                return record, replies, carried, record
            trace = getattr(current, "trace", None)
            held = [p for p in carried.parts if not p.stored] if carried is not None else []
            outbox = [*(e for p in held for e in p.effects), *effects] if held else effects
            current.outbox = outbox
            current.outbox_at = now
            if faults.PLAN is not None:
                faults.PLAN.reach("before-save")
            # Tasks leave with the write (see the module doc), in one flush with it;
            # their acks are awaited with the rest of the outbox. Events and tasks are
            # serialized once, for their messages and the record (tasks first: a worker
            # starts sooner).
            routed: dict[int, tuple[str, bytes, str | None]] = {}
            early: list[asyncio.Future[Any]] = []
            try:
                for e in effects:
                    if _leaves_early(e):
                        message = routed[id(e)] = self._route(key, e)
                        if (ack := await self._send(key, e, trace, message)) is not None:
                            early.append(ack)
                for e in effects:
                    if isinstance(e, EventEffect | TaskEffect) and id(e) not in routed:
                        routed[id(e)] = self._route(key, e)
                bodies = {k: r[1] for k, r in routed.items()}
                data = current.stored_form(
                    record, {k: v for p in held for k, v in p.bodies.items()} | bodies
                    if held else bodies)
                new_rev = await entity.store.save(key, data, revision=revision)
            except StaleRevision:
                self.stats["cas_retries"] += 1
                self.metrics.cas_retries.inc()
                entity.cache.pop(key)
                _abandon(early)  # sent again, under the same ids, if decided again
                continue
            except BaseException:
                _abandon(early)  # the message is retried, and they are sent again
                raise
            if faults.PLAN is not None:
                faults.PLAN.reach("after-save")
            rest = [e for e in effects if not _leaves_early(e)]
            try:
                acks = [*early, *(await self._send_all(key, rest, trace, routed))]
            except BaseException:
                _abandon(early)  # the stored outbox is sent again by the next reader
                raise
            joins = [e for e in effects if isinstance(e, JoinMapEffect)]
            if joins:  # a join reads item outputs earlier parts may still be storing
                acks = [*(p.acked for p in held), *acks]
            part = _Part(effects, bodies, self._acked(acks, joins))
            whole = asyncio.ensure_future(_every([p.acked for p in held] + [part.acked])) \
                if held else part.acked
            sent = _Sent(whole, effects, [*held, part])
            entity.sent[key] = sent
            entity.remember(key, new_rev, current, terminal=self._is_terminal(current),
                            size=len(data))
            return current, replies, sent, record
        return None

    def _acked(self, acks: list[asyncio.Future[Any]], joins: list[JoinMapEffect]
               ) -> asyncio.Future[Any]:
        """One future for a sent outbox: every ack, then the map joins it asked for."""
        if not joins:
            return asyncio.ensure_future(_every(acks))

        async def then_join() -> None:
            await _every(acks)
            for join in joins:
                await self._join_map(join)
        return asyncio.ensure_future(then_join())

    @staticmethod
    def _is_terminal(record: Any) -> bool:
        return record.status.state in WORKFLOW_TERMINAL or (
            isinstance(record, BatchRecord) and record.status.finished_at is not None)

    async def _load(self, entity: _Entity[Any], key: str) -> tuple[Any, int, bool, int]:
        """(record, revision, from the cache, stored size); the cache knows sizes too."""
        hit = entity.cache.get(key)
        if hit is not None:
            return hit[1], hit[0], True, hit[2]
        data, revision = await entity.store.load(key)
        if data is None:
            return None, 0, False, 0
        record = read_record(entity.model, data, key=key)
        return record, revision, False, len(data)

    # -- publishing -----------------------------------------------------------------
    def _route(self, key: str, effect: Effect) -> tuple[str, bytes, str | None]:
        s = self.subjects
        if isinstance(effect, EventEffect):
            ev = effect.event
            return (s.event(ev.workflow_id, ev.type.value), ev.model_dump_json().encode(),
                    f"ev:{ev.workflow_id}:{ev.seq}")
        if isinstance(effect, TaskEffect):
            t = effect.task
            # The token in the id: nobody who lacks it can have the real task dropped
            # as the duplicate of one published first under the same id.
            return (s.task(t.task), t.model_dump_json().encode(),
                    f"task:{t.idempotency_key}" + (f":{t.token}" if t.token else ""))
        if isinstance(effect, TimerEffect):
            tm = effect.timer
            # The due time is part of the id: a heartbeat timer is armed again and again.
            return (s.timer(tm.workflow_id), tm.model_dump_json().encode(),
                    f"timer:{tm.workflow_id}:{tm.step_id}:{tm.attempt}:{tm.purpose}:"
                    f"{tm.due.timestamp()}")
        if isinstance(effect, CancelEffect):
            notice = effect.notice
            return s.cancel(notice.workflow_id), notice.model_dump_json().encode(), None
        if isinstance(effect, NotifyBatchEffect):
            body = MemberFinished(workflow_id=effect.workflow_id, state=effect.state)
            return (s.batch_command(effect.batch_id), body.model_dump_json().encode(),
                    f"done:{effect.workflow_id}")
        if isinstance(effect, SummaryEffect):
            sm = effect.summary
            return (s.kv_put(s.summaries_bucket, sm.id),
                    sm.model_dump_json(exclude_none=True).encode(), f"sum:{sm.id}:{effect.seq}")
        if isinstance(effect, PutOutputEffect):
            assert self.outputs is not None, "map steps need an output store"
            return (self.outputs.put_subject(effect.key),
                    json.dumps(effect.output, separators=(",", ":")).encode(),
                    f"out:{effect.key}")
        if isinstance(effect, WebhookEffect):
            d = effect.delivery
            # One message per (event, webhook): a replayed outbox never queues it twice.
            return (s.webhook(d.event.workflow_id), d.model_dump_json().encode(),
                    f"wh:{d.event.workflow_id}:{d.event.seq}:{d.index}")
        if isinstance(effect, NotifyParentEffect):
            res = effect.result
            return (s.result(res.workflow_id), res.model_dump_json().encode(),
                    f"child:{key}:{res.attempt}")
        assert isinstance(effect, WorkflowCommandEffect)
        return (s.workflow_command(effect.workflow_id), effect.command.model_dump_json().encode(),
                f"bcmd:{key}:{effect.workflow_id}:{effect.command.kind}")

    async def _child_command(self, effect: StartChildEffect,
                             trace: TraceContext | None) -> Effect:
        """The create command of a child workflow, or its failure reported to the parent."""
        try:
            if self.definitions is None:
                raise NatsflowError("this orchestrator has no definitions registry")
            # Looked up in the parent's namespace only: a child cannot reach another's.
            config = await self.definitions.resolve_config(effect.definition, effect.version,
                                                           namespace=effect.namespace)
        except NatsflowError as exc:
            p = effect.parent
            return NotifyParentEffect(result=TaskFailed(
                workflow_id=p.workflow_id, step_id=p.step_id, attempt=p.attempt,
                token=self.settings.token(p.workflow_id, p.step_id, p.attempt),
                error=exc.info().model_copy(update={"retryable": False, "step": p.step_id})))
        child = config.model_copy(update={
            "id": effect.child_id, "namespace": effect.namespace, "input": effect.input,
            "parent": effect.parent, "start": True})
        return WorkflowCommandEffect(workflow_id=effect.child_id, command=CreateWorkflow(
            config=child, fingerprint=fingerprint(child), trace=trace))

    async def publish(self, key: str, effects: Sequence[Effect], *,
                      trace: TraceContext | None = None) -> None:
        """Publish an outbox in one round: send everything, then await every ack.

        Tasks go out first: a worker can start while the events are still being stored.
        Task messages carry ``trace`` (the workflow's trace context) as headers, and a
        child workflow inherits it. Map joins run once the rest is stored.
        """
        ordered = sorted(effects, key=lambda e: not isinstance(e, TaskEffect))
        acks = await self._send_all(key, ordered, trace)
        await _every(acks)  # each fails by itself after _PUBLISH_TIMEOUT
        for join in effects:
            if isinstance(join, JoinMapEffect):
                await self._join_map(join)

    async def _send_all(self, key: str, effects: Sequence[Effect],
                        trace: TraceContext | None,
                        routed: dict[int, tuple[str, bytes, str | None]] | None = None
                        ) -> list[asyncio.Future[Any]]:
        """Send effects in order (map joins excepted); their acks' futures. ``routed``:
        messages already made for some of them, by ``id``."""
        acks: list[asyncio.Future[Any]] = []
        try:
            for effect in effects:
                if isinstance(effect, JoinMapEffect):
                    continue  # after the item outputs it reads are stored
                if isinstance(effect, StartChildEffect):
                    effect = await self._child_command(effect, trace)
                ack = await self._send(key, effect, trace,
                                       routed.get(id(effect)) if routed else None)
                if ack is not None:
                    acks.append(ack)
        except BaseException:
            _abandon(acks)  # nobody awaits them now: their errors are not left unread
            raise
        return acks

    async def _send(self, key: str, effect: Effect, trace: TraceContext | None,
                    routed: tuple[str, bytes, str | None] | None = None
                    ) -> asyncio.Future[Any] | None:
        """Hand one effect to the connection (no waiting); its ack's future, if any."""
        subject, payload, msg_id = routed or self._route(key, effect)
        if msg_id is None:
            await send(self.nc, subject, payload)
            return None
        headers = {MSG_ID: msg_id}
        if trace is not None and isinstance(effect, TaskEffect):
            headers.update(trace.headers())
        return await self._publisher.publish(subject, payload, headers,
                                             timeout=_PUBLISH_TIMEOUT)

    async def _join_map(self, join: JoinMapEffect) -> None:
        """Collect a map's item outputs and hand them to its workflow as MapJoined."""
        assert self.outputs is not None, "map steps need an output store"
        cmd: MapJoined
        try:
            output, size = await self.outputs.joined(join.workflow_id, join.step_id,
                                                     join.attempt, join.total)
            cmd = MapJoined(step_id=join.step_id, attempt=join.attempt, output=output,
                            size=size)
        except ValueError as exc:  # too large even for the blob store
            cmd = MapJoined(step_id=join.step_id, attempt=join.attempt, error=ErrorInfo(
                code="output-too-large", message=str(exc), step=join.step_id))
        await self.js.publish(
            self.subjects.workflow_command(join.workflow_id), cmd.model_dump_json().encode(),
            headers={MSG_ID: f"join:{join.workflow_id}:{join.step_id}:{join.attempt}"},
            timeout=_PUBLISH_TIMEOUT)

    async def _flush_stale_outbox(self, key: str, record: Any) -> None:
        """Republish an outbox whose publication this process did not witness."""
        assert record.outbox_at is not None
        age = (self.clock() - record.outbox_at).total_seconds()
        if age < DUPLICATE_WINDOW - 20:
            # duplicates are dropped by msg id
            await self.publish(key, record.outbox, trace=getattr(record, "trace", None))
            return
        # Too old for the dedupe window. Events must not be duplicated: publish only the
        # ones provably missing. Everything else is idempotent where it lands (a task is
        # at-least-once by contract, a timer or command for a state that moved on is a
        # no-op), so it is simply sent again.
        missing = [e for e in record.outbox
                   if isinstance(e, EventEffect) and not await self._event_stored(e)]
        others = [e for e in record.outbox if not isinstance(e, EventEffect)]
        await self.publish(key, [*others, *missing], trace=getattr(record, "trace", None))

    async def _event_stored(self, effect: EventEffect) -> bool:
        ev = effect.event
        try:
            msg = await self.js.get_last_msg(self.subjects.events_stream,
                                             self.subjects.event(ev.workflow_id, ev.type.value))
        except nats.js.errors.NotFoundError:
            return False
        try:
            return int(json.loads(msg.data or b"{}").get("seq", 0)) >= ev.seq
        except ValueError:
            return False

    async def _send_reply(self, subject: str, entity: _Entity[Any], key: str, record: Any,
                          reply: Reply) -> None:
        if reply.error is not None:
            body = reply.error.model_dump_json(exclude_none=True).encode()
            headers = {OUTCOME_ERROR_HEADER: reply.error.code}
        else:
            body = entity.reply(key, record, reply).model_dump_json().encode()
            headers = {}
        try:
            await send(self.nc, subject, body, headers=headers)
        except nats.errors.Error as exc:
            self._conditions(f"could not deliver replies ({type(exc).__name__})",
                             "could not deliver a reply to %s: %s", subject, describe(exc))

    # -- settling -------------------------------------------------------------------
    async def settle(self, msg: Msg, verdict: Verdict) -> None:
        """The one place where inbox messages are acked, retried or terminated."""
        try:
            if verdict is Verdict.ACK:
                if msg.reply:  # msg.ack()'s message, without nc.publish's overhead
                    await send(self.nc, msg.reply, b"")
                else:
                    await msg.ack()  # not a JetStream delivery: nats-py's own error
            elif verdict is Verdict.RETRY:
                await msg.nak(delay=0.5)
            else:
                await msg.term()
        except nats.errors.Error as exc:
            # Not settled: JetStream redelivers after the ack wait; inputs are idempotent.
            self._conditions(f"could not {verdict.value} messages ({type(exc).__name__})",
                             "could not %s a message: %s", verdict.value, describe(exc))

    async def _hand_back_early(self, msg: Msg) -> None:
        """A result that came before its dispatch was saved: again later, or drop it.

        Handed back with a growing delay while younger than EARLY_RESULT_PATIENCE;
        older, no dispatch of its attempt is coming that it could belong to.
        """
        try:
            # The server's timestamp against real time, not the decision clock: that one
            # may run ahead (a test environment skipping time) and age every message.
            age = (datetime.now(UTC) - msg.metadata.timestamp).total_seconds()
        except Exception:  # no metadata: nothing tells its age
            age = EARLY_RESULT_PATIENCE
        if age >= EARLY_RESULT_PATIENCE:
            log.info("dropping a result for a dispatch that never came (%s)", msg.subject)
            await self.settle(msg, Verdict.ACK)
            return
        self.metrics.early_results.inc()
        await self.settle_later(msg, min(_EARLY_DELAY_MAX,
                                         0.01 * 2 ** min(delivery_count(msg), 10)))

    async def settle_later(self, msg: Msg, delay: float) -> None:
        """Hand a not-yet-due timer back to JetStream for ``delay`` seconds."""
        try:
            await msg.nak(delay=delay)
        except nats.errors.Error as exc:
            self._conditions(f"could not defer timers ({type(exc).__name__})",
                             "could not defer a timer: %s", describe(exc))

    async def _retry_or_dead_letter(self, item: Item, why: str) -> None:
        if item.msg is None:
            return
        deliveries = delivery_count(item.msg)
        if deliveries >= MAX_DELIVERIES:
            await self.dead_letter(item.msg, ErrorInfo(
                code="too-many-deliveries",
                message=f"gave up after {deliveries} deliveries: {why}"),
                log_context=_log_context(item.entity, item.key))
        else:
            await self.settle(item.msg, Verdict.RETRY)

    async def dead_letter(self, msg: Msg, reason: ErrorInfo, *,
                          log_context: dict[str, str] | None = None,
                          data: str | None = None) -> None:
        """Keep an unusable message in the dead-letter stream, then terminate it.

        The letter always fits in a message (see :mod:`contracts.dead_letters`). If it
        cannot be stored all the same, the message is handed back and the letter tried
        again on its next delivery; after ``LETTER_RETRIES`` deliveries beyond
        MAX_DELIVERIES it is terminated anyway, with one error log line.

        Args:
            msg: The message.
            reason: Why it can never be processed (its code names the DLQ subject).
            log_context: ``extra`` of the log line (``workflow_id`` when known).
            data: What to keep of the payload, if not all of it (a secret left out).
        """
        payload, headers = dead_letter(msg, reason, time=self.clock(),
                                       max_payload=self.nc.max_payload, data=data)
        try:
            await self.js.publish(self.subjects.dlq(reason.code), payload,
                                  headers=headers or None, timeout=_PUBLISH_TIMEOUT)
        except Exception as exc:
            deliveries = delivery_count(msg)
            if give_up_on_letter(deliveries, limit=MAX_DELIVERIES):
                log.error("dropping a message from %s after %d deliveries: it could not be "
                          "dead-lettered (%s) either: %s", msg.subject, deliveries,
                          describe(exc), reason.message, extra=log_context)
                await self.settle(msg, Verdict.TERM)
                return
            self._conditions(f"could not store dead letters ({type(exc).__name__})",
                             "could not dead-letter a message from %s (%s); will retry",
                             msg.subject, describe(exc), extra=log_context)
            await self.settle(msg, Verdict.RETRY)
            return
        self.stats["dead_letters"] += 1
        self.metrics.dead_letters.labels(reason=reason.code).inc()
        log.warning("dead letter from %s: %s", msg.subject, reason.message, extra=log_context)
        await self.settle(msg, Verdict.TERM)
