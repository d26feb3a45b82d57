"""The thin async shell around the engines.

For every message: parse it, load the record, call the engine, save the record with
compare-and-set (its outbox included), publish the outbox with deterministic
``Nats-Msg-Id`` headers, then settle the message. Messages of one fetch are grouped by
workflow (or batch): each group is one read, one write and one publish round, and
groups run concurrently.

Crash safety: a crash after the write but before the publish leaves the outbox in the
record; whoever loads the record next from the store republishes it (JetStream drops
what it had already stored by message id), unless it is a revision this process wrote
and saw every ack of on its current connection (``_Entity.settled``, as a cached copy
would be). A crash before the ack redelivers the message; the engine treats it as the
duplicate it is.

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
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, TypeAdapter, ValidationError

from contracts.egress import EgressPolicy, check_literal_subjects
from contracts.errors import (
    ErrorInfo,
    NatsflowError,
    PayloadTooLarge,
    RecordUnreadable,
    validation_failed,
)
from contracts.headers import OUTCOME_ERROR_HEADER, REPLY_HEADER
from contracts.ids import deterministic_id
from contracts.messages import BatchReply, TaskResult, WorkflowReply
from contracts.models import MAX_CONFIG_BYTES, SHOWN, WORKFLOW_TERMINAL, WorkflowConfig
from contracts.subjects import Subjects
from transport.consume import delivery_count, stream_sequence
from transport.publish import AsyncPublisher, send
from transport.tracing import TraceContext, extract
from transport.transient import ConditionLog, describe, is_transient

from .batch_engine import decide_batch
from .cache import KeyLocks, RecordCache, SettledRevisions
from .children import ChildStarter, DefinitionResolver, fingerprint
from .engine import EngineSettings, decide_all
from .faults import NO_CRASHES, CrashPoints
from .letters import MAX_DELIVERIES, Letters, Malformed, Verdict
from .metrics import OrchestratorMetrics
from .outbox import Outbox, Part, Sent, abandon, every
from .outputs import OutputStore
from .records import (
    BatchCommand,
    BatchRecord,
    CreateWorkflow,
    Decisions,
    Effect,
    EventEffect,
    JoinMapEffect,
    PutOutputEffect,
    Reply,
    ResultInput,
    TaskEffect,
    TimerFired,
    WorkflowCommand,
    WorkflowRecord,
    decide_each,
    read_record,
)
from .routing import Routed, Router, leaves_early
from .spans import emit_decision_spans
from .store import RecordStore, StaleRevision

__all__ = ["DefinitionResolver", "Item", "Malformed", "Processor", "Verdict", "fingerprint"]

log = logging.getLogger("natsflow.orchestrator")
_CAS_ATTEMPTS = 8

_workflow_commands: TypeAdapter[Any] = TypeAdapter(WorkflowCommand)
_batch_commands: TypeAdapter[Any] = TypeAdapter(BatchCommand)
_task_results: TypeAdapter[Any] = TypeAdapter(TaskResult)

#: A stored record of either kind.
Record = WorkflowRecord | BatchRecord


def _log_context(entity: str, key: str) -> dict[str, str]:
    """``extra`` for a log line about one record (structured logs carry it)."""
    return {"workflow_id": key} if entity == "wf" else {"batch_id": key}


def _trace(record: Record) -> TraceContext | None:
    """The trace context a record's task messages carry (batches have none)."""
    return record.trace if isinstance(record, WorkflowRecord) else None


#: Whether a stored outbox whose inputs have all left the INBOX is taken as published.
#: Off: a SIGKILLed nats-server loses the writes it had acknowledged and not yet written
#: out, and the delete of an acked input can survive while the events its outbox stored
#: do not (tests/faults/test_faults_nats.py[sigkill] once found `seq` gaps 5-9 with it on).
#: Until the check can tell that apart, every such outbox is republished, as before,
#: and records do not name their inputs (nothing would read them: no per-input work on
#: the hot path, no field an older orchestrator cannot read).
SKIP_SETTLED = False


def _inputs_of(items: Sequence[Item]) -> tuple[int, ...] | None:
    """INBOX sequences of ``items`` (None if one of them is not known)."""
    seqs: list[int] = []
    for item in items:
        seq = stream_sequence(item.msg) if item.msg is not None else None
        if seq is None:  # not a JetStream delivery: unknown
            return None
        seqs.append(seq)
    return tuple(seqs)


def _outbox_inputs(own: tuple[int, ...] | None, held: Sequence[Part]
                   ) -> tuple[int, ...] | None:
    """The inputs a record's outbox waits on: those of the carried parts ``held``, then
    the transition's ``own`` (None if one of them is not known)."""
    if own is None or any(p.inputs is None for p in held):
        return None
    return (*(seq for p in held for seq in p.inputs or ()), *own)


async def _all(coros: list[Coroutine[Any, Any, Any]]) -> None:
    """Run these concurrently; one alone is awaited in place, without a task, so it
    starts in this turn of the loop (a chain's next step, a quiet moment)."""
    if len(coros) == 1:
        await coros[0]
    else:
        await asyncio.gather(*coros)


@dataclass(slots=True)
class Item:
    """One parsed inbox message."""

    entity: str  # "wf" or "batch"
    key: str
    input: Any  # a WorkflowInput or a BatchInput, as ``entity`` says
    msg: Msg | None
    reply_to: str | None


R = TypeVar("R", WorkflowRecord, BatchRecord)


class _Entity(Generic[R]):
    """How to load, decide and answer for one kind of record."""

    def __init__(self, name: str, store: RecordStore, model: type[R],
                 decide_fn: Callable[[R | None, Sequence[Any], datetime, str], Decisions[R]],
                 reply_fn: Callable[[str, R | None, Reply], BaseModel]) -> None:
        self.name = name
        self.store = store
        self.model: type[R] = model
        #: Decide a group of inputs to one record, in order.
        self.decide: Callable[[R | None, Sequence[Any], datetime, str],
                              Decisions[R]] = decide_fn
        self.reply: Callable[[str, R | None, Reply], BaseModel] = reply_fn
        self.cache: RecordCache[R] = RecordCache()
        #: Revisions whose outbox this process saw stored (see :meth:`sync`).
        self.settled = SettledRevisions()
        #: The connection epoch the cache and ``settled`` were learnt on.
        self.epoch = 0
        #: Outboxes sent and not yet acknowledged, by key (see the module doc).
        self.sent: dict[str, Sent] = {}

    def sync(self, epoch: int) -> None:
        """Forget what was learnt on an earlier connection, if this is a new one.

        An acknowledged write can still be lost by the server (killed before it wrote
        it out, or its machine's power cut before the fsync of ``sync_interval``), and
        a server that lost writes has dropped every connection. So what this process
        saw stored on a connection is trusted only while that connection lasts: after
        a reconnect the records are read back from KV and their outboxes republished.
        """
        if epoch != self.epoch:
            self.epoch = epoch
            self.cache.clear()
            self.settled.clear()

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

    The shell that ties the rooms together: :mod:`.cache` (records and their locks),
    :mod:`.routing` (effect -> message), :mod:`.outbox` (sending and its acks),
    :mod:`.letters` (settling and dead letters); it keeps the compare-and-set loop.

    Args:
        nc: Connected NATS client.
        subjects: The deployment's names.
        workflows: Store of workflow records.
        batches: Store of batch records.
        settings: Engine knobs.
        definitions: Where child workflows' definitions come from.
        outputs: The output store of map steps.
        clock: Source of ``now`` (UTC).
        metrics: Where to count what happens (a registry of its own if None).
        publisher: Where outboxes are published (one of its own if None, started by
            the first publication).
        egress: The egress policy: a submit whose literal subjects it refuses is a
            dead letter (None: the defaults).
        crash_points: Called at each named point of a transition (fault-injection
            tests, see :mod:`.faults`); default: none.
    """

    def __init__(self, nc: Client, subjects: Subjects, *, workflows: RecordStore,
                 batches: RecordStore, settings: EngineSettings | None = None,
                 definitions: DefinitionResolver | None = None,
                 outputs: OutputStore | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 metrics: OrchestratorMetrics | None = None,
                 publisher: AsyncPublisher | None = None,
                 egress: EgressPolicy | None = None,
                 crash_points: CrashPoints = NO_CRASHES) -> None:
        self.nc = nc
        self.egress = egress or EgressPolicy()
        self.definitions = definitions
        self.outputs = outputs
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self.settings = settings or EngineSettings(subjects=subjects)
        self.clock = clock
        self.crash_points = crash_points
        self.wf: _Entity[WorkflowRecord] = _Entity(
            "wf", workflows, WorkflowRecord,
            lambda rec, inputs, now, key: decide_all(rec, inputs, now, self.settings),
            lambda key, rec, reply: WorkflowReply(
                id=key, created=reply.created, status=rec.status if rec else None))
        self.batch: _Entity[BatchRecord] = _Entity(
            "batch", batches, BatchRecord,
            lambda rec, inputs, now, key: decide_each(
                lambda r, i: decide_batch(r, i, now, batch_id=key), rec, inputs),
            lambda key, rec, reply: BatchReply(
                id=key, created=reply.created, status=rec.status if rec else None))
        self._locks = KeyLocks()
        #: Transient faults, logged once per condition with a count (not per message).
        self._conditions = ConditionLog(log)
        self.metrics = metrics or OrchestratorMetrics()
        self.metrics.track_cache(self.wf.name, self.wf.cache.__len__)
        self.metrics.track_cache(self.batch.name, self.batch.cache.__len__)
        self.router = Router(subjects, outputs)
        self.outbox = Outbox(nc, publisher or AsyncPublisher(nc), self.router,
                             subjects=subjects, outputs=outputs,
                             start_child=ChildStarter(self.settings, definitions))
        self.letters = Letters(nc, subjects, metrics=self.metrics,
                               conditions=self._conditions, publisher=self.outbox.publisher,
                               clock=clock)
        # The service and the webhook deliverer settle and dead-letter through these.
        self.settle = self.letters.settle
        self.settle_later = self.letters.settle_later
        self.dead_letter = self.letters.dead_letter

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
        context = _log_context(entity.name, key)
        try:
            outcome = await self._apply(entity, key, items)
        except RecordUnreadable as exc:
            # Nothing can act on it, now or later: say so at once, rather than retry.
            entity.cache.pop(key)
            for item in items:
                if item.msg is not None:
                    await self.dead_letter(item.msg, exc.info(), log_context=context)
                if item.reply_to:
                    await self._send_reply(item.reply_to, entity, key, None,
                                           Reply(error=exc.info()))
            return
        except Exception as exc:
            if is_transient(exc):  # NATS or a bucket away: one line per condition
                self._conditions(f"processing failed ({type(exc).__name__})",
                                 "processing %s %s failed (%s); will retry", entity.name, key,
                                 describe(exc), extra=context)
            else:
                log.exception("processing %s %s failed; will retry", entity.name, key,
                              extra=context)
            entity.cache.pop(key)
            await self._retry_or_dead_letter(entity, key, items, "processing failed")
            return
        if outcome is None:
            await self._retry_or_dead_letter(entity, key, items, "store contention")
            return
        record, replies = outcome
        for item, reply in zip(items, replies, strict=True):
            if reply.refused is not None:
                if reply.refused.code == "forged-result":
                    self.metrics.forged_results.inc()
                if item.msg is not None:
                    await self.dead_letter(item.msg, reply.refused, log_context=context)
                continue
            if item.msg is not None:
                if reply.early:
                    await self.letters.hand_back_early(item.msg)
                    continue
                await self.settle(item.msg, Verdict.ACK)
            if item.reply_to:
                await self._send_reply(item.reply_to, entity, key, record, reply)
        self.metrics.processed.inc(len(items))

    async def _retry_or_dead_letter(self, entity: _Entity[Any], key: str,
                                    items: Sequence[Item], why: str) -> None:
        """Hand a failed group back, or dead-letter the messages given up on; those only
        once no stored outbox names them (:meth:`_may_drop`)."""
        context = _log_context(entity.name, key)
        droppable = True
        if SKIP_SETTLED and any(i.msg is not None and delivery_count(i.msg) >= MAX_DELIVERIES
                                for i in items):
            droppable = await self._may_drop(entity, key, items)
        for item in items:
            if item.msg is not None:
                await self.letters.retry_or_dead_letter(item.msg, why, log_context=context,
                                                        droppable=droppable)

    async def _apply(self, entity: _Entity[Any], key: str, items: list[Item]
                     ) -> tuple[Record | None, list[Reply]] | None:
        lock = (entity.name, key)
        await self._locks.acquire(lock)
        try:
            entity.sync(self.epoch())
            outcome = await self._transition(entity, key, items)
        finally:
            self._locks.release(lock)
        if outcome is None:
            return None
        record, replies, sent, before = outcome
        if sent is not None:
            try:
                # Each ack fails by itself after PUBLISH_TIMEOUT: no timer here.
                await asyncio.shield(sent.acked)
            finally:
                if entity.sent.get(key) is sent:
                    del entity.sent[key]
            if sent.epoch == self.epoch():  # every ack came on the connection it was sent on
                entity.settled.add(sent.revision)
            self.crash_points.reach("after-publish")
            if before is not record and record is not None:
                self._published(key, before, record, sent.own)
        return record, replies

    def _published(self, key: str, before: Record | None, current: Record,
                   effects: list[Effect]) -> None:
        """Bookkeeping once a transition's outbox is stored."""
        if isinstance(current, WorkflowRecord):
            assert before is None or isinstance(before, WorkflowRecord)
            self.metrics.observe_published(before, current, effects)
            emit_decision_spans(before, current, effects)
            if self._is_terminal(current) and (before is None or not self._is_terminal(before)):
                log.info("workflow %s %s", key, current.status.state.value,
                         extra=_log_context("wf", key))

    async def _transition(self, entity: _Entity[Any], key: str, items: list[Item]
                          ) -> tuple[Record | None, list[Reply], Sent | None,
                                     Record | None] | None:
        """Load, decide, save and send (holding the record's lock); None on contention.

        Returns (record, replies, what was sent and awaits acks, the record before).
        """
        # A create for a key this process has not seen is almost always for a new
        # record: try the write as "must not exist" and skip the read; if the key does
        # exist the write fails and the normal read-decide-write loop takes over.
        assume_new = key not in entity.cache and items[0].input.kind == "create"
        record: Record | None
        for _ in range(_CAS_ATTEMPTS):
            if assume_new:
                record, revision, cached, size = None, 0, True, 0
                assume_new = False
            else:
                record, revision, cached, size = await self._load(entity, key)
            carried = entity.sent.get(key) if cached else None
            if (record is not None and not cached and record.outbox
                    and revision not in entity.settled):
                await self._finish_stale(key, record)
            now = self.clock()
            decided = entity.decide(record, [i.input for i in items], now, key)
            current, effects, replies = decided.record, decided.effects, decided.replies
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
            trace = _trace(current)
            held = [p for p in carried.parts if not p.stored] if carried is not None else []
            outbox = [*(e for p in held for e in p.effects), *effects] if held else effects
            own_inputs = _inputs_of(items) if SKIP_SETTLED else None
            inputs = _outbox_inputs(own_inputs, held)
            current.outbox = outbox
            current.outbox_at = now
            current.outbox_inputs = list(inputs) if outbox and inputs is not None else None
            self.crash_points.reach("before-save")
            # Tasks leave with the write (see the module doc), in one flush with it;
            # their acks are awaited with the rest of the outbox. Events and tasks are
            # serialized once, for their messages and the record (tasks first: a worker
            # starts sooner).
            routed: dict[int, Routed] = {}
            early: list[asyncio.Future[Any]] = []
            try:
                for e in effects:
                    if leaves_early(e):
                        message = routed[id(e)] = self.router.route(key, e)
                        if (ack := await self.outbox.send(key, e, trace, message)) is not None:
                            early.append(ack)
                for e in effects:
                    if (isinstance(e, EventEffect | TaskEffect | PutOutputEffect)
                            and id(e) not in routed):
                        routed[id(e)] = self.router.route(key, e)
                bodies = {k: r[1] for k, r in routed.items()}
                data = current.stored_form(
                    record, {k: v for p in held for k, v in p.bodies.items()} | bodies
                    if held else bodies)
                new_rev = await entity.store.save(key, data, revision=revision)
            except StaleRevision:
                self.metrics.cas_retries.inc()
                entity.cache.pop(key)
                abandon(early)  # sent again, under the same ids, if decided again
                continue
            except BaseException:
                abandon(early)  # the message is retried, and they are sent again
                raise
            self.crash_points.reach("after-save")
            rest = [e for e in effects if not leaves_early(e)]
            try:
                acks = [*early, *(await self.outbox.send_all(key, rest, trace, routed))]
            except BaseException:
                abandon(early)  # the stored outbox is sent again by the next reader
                raise
            joins = [e for e in effects if isinstance(e, JoinMapEffect)]
            if joins:  # a join reads item outputs earlier parts may still be storing
                acks = [*(p.acked for p in held), *acks]
            part = Part(effects, bodies, self.outbox.acked(acks, joins), own_inputs)
            whole = asyncio.ensure_future(every([p.acked for p in held] + [part.acked])) \
                if held else part.acked
            sent = Sent(whole, effects, [*held, part], new_rev, entity.epoch)
            entity.sent[key] = sent
            entity.remember(key, new_rev, current, terminal=self._is_terminal(current),
                            size=len(data))
            return current, replies, sent, record
        return None

    async def _finish_stale(self, key: str, record: Record) -> None:
        """A record read from KV holds an outbox this process did not see published.

        If every input it names has left the INBOX stream, every one was acked, and an
        input is acked only once the outbox it made is stored: nothing to do. Otherwise
        (or not known) it is republished (docs/architecture.md, "Why nothing is lost or
        duplicated").
        """
        if SKIP_SETTLED and await self.outbox.inputs_settled(record.outbox_inputs):
            self.metrics.stale_outboxes.labels(outcome="settled").inc()
            return
        self.metrics.stale_outboxes.labels(outcome="republished").inc()
        await self.outbox.flush_stale(key, record, self.clock())

    async def _may_drop(self, entity: _Entity[Any], key: str, items: Sequence[Item]) -> bool:
        """Whether the group's inputs may leave the stream without being processed.

        A stored outbox that names one of them as its input would, once it is gone, be
        taken for published: the record is first written again naming no inputs, so its
        next reader republishes it. False (hand them back) when that cannot be done now.
        """
        seqs = _inputs_of(items)
        lock = (entity.name, key)
        await self._locks.acquire(lock)
        try:
            entity.cache.pop(key)
            data, revision = await entity.store.load(key)
            if data is None:
                return True
            try:
                record = read_record(entity.model, data, key=key)
            except RecordUnreadable:
                return True  # nothing can act on it, its outbox included
            named = record.outbox_inputs
            if not record.outbox or not named or (
                    seqs is not None and set(seqs).isdisjoint(named)):
                return True
            record.outbox_inputs = None
            await entity.store.save(key, record.stored_form(), revision=revision)
            return True
        except Exception as exc:  # StaleRevision, NATS away: later
            log.debug("could not release the inputs of %s %s: %s", entity.name, key, exc,
                      extra=_log_context(entity.name, key))
            return False
        finally:
            self._locks.release(lock)

    def epoch(self) -> int:
        """The connection's epoch: how many times it has reconnected (``_Entity.sync``)."""
        return int(self.nc.stats["reconnects"])

    @staticmethod
    def _is_terminal(record: Record) -> bool:
        return record.status.state in WORKFLOW_TERMINAL or (
            isinstance(record, BatchRecord) and record.status.finished_at is not None)

    async def _load(self, entity: _Entity[Any], key: str
                    ) -> tuple[Record | None, int, bool, int]:
        """(record, revision, from the cache, stored size); the cache knows sizes too."""
        hit = entity.cache.get(key)
        if hit is not None:
            return hit[1], hit[0], True, hit[2]
        data, revision = await entity.store.load(key)
        if data is None:
            return None, 0, False, 0
        record = read_record(entity.model, data, key=key)
        return record, revision, False, len(data)

    async def _send_reply(self, subject: str, entity: _Entity[Any], key: str,
                          record: Record | None, reply: Reply) -> None:
        if reply.error is not None:
            body = reply.error.model_dump_json(exclude_none=True).encode()
            headers = {OUTCOME_ERROR_HEADER: reply.error.code}
        else:
            # An answer to a client: shown as the API shows a record (no result tokens,
            # no webhook secrets); the API passes these bytes on as they are.
            body = entity.reply(key, record, reply).model_dump_json(
                context={SHOWN: True}).encode()
            headers = {}
        try:
            await send(self.nc, subject, body, headers=headers)
        except nats.errors.Error as exc:
            self._conditions(f"could not deliver replies ({type(exc).__name__})",
                             "could not deliver a reply to %s: %s", subject, describe(exc))
