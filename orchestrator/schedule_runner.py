"""The schedule runner: the thin shell around :func:`orchestrator.schedules.advance`.

Every orchestrator runs one. Each schedule has one *tick* waiting in the INBOX stream on
``<prefix>.sched.<key>``, taken through the durable ``schedules`` consumer that every
orchestrator shares, and handed back with a delayed nak until it is due, exactly like a
durable timer (JetStream keeps it through any restart). A tick is a wake-up call: the
runner loads the schedule's record, asks whether its latest run is still going, advances
it to now, saves it with compare-and-set, starts and stops what its outbox says (through
the API, as any client would; a run's id is its schedule's and fire time's, so a create
made twice is one workflow), clears the outbox, publishes the next tick (a deterministic
``Nats-Msg-Id``) and only then acks. A crash anywhere leaves the tick unacknowledged or
the outbox in the record: the next taker does the rest. A sweep every
:data:`SWEEP_INTERVAL` seconds republishes the tick of any schedule whose next one is
overdue (one a crashed API call never published).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts.errors import (
    AlreadyFinished,
    IdConflict,
    InvalidRequest,
    NatsflowError,
    NotFound,
    Unavailable,
    WorkflowNotFound,
)
from contracts.headers import MSG_ID
from contracts.models import WORKFLOW_TERMINAL, WorkflowConfig, WorkflowState
from contracts.schedules import (
    FIRE_TIME_LABEL,
    SCHEDULE_LABEL,
    Schedule,
    fire_time_token,
)
from contracts.subjects import Subjects
from natsflow.client import NatsflowClient
from transport.consume import ConsumerStalled, PullConsumer
from transport.publish import AsyncPublisher

from .kvscan import scan
from .schedules import ScheduleRecord, ScheduleTick, StartRun, StopRun, advance

__all__ = ["SWEEP_INTERVAL", "ScheduleRunner", "ScheduleStore", "run_labels"]

log = logging.getLogger("natsflow.schedules")

#: Seconds between sweeps for schedules whose tick is overdue.
SWEEP_INTERVAL: Final = 10.0
#: How late a tick may be before the sweep publishes it again (s).
_OVERDUE: Final = 5.0
_CAS_TRIES: Final = 8
#: Seconds within which a run just decided but not found yet counts as going.
_LANDING: Final = 30.0


def _may_be_landing(since: datetime | None, now: datetime) -> bool:
    """Whether a run decided at ``since`` and not found at ``now`` may still be landing."""
    return since is not None and now - since < timedelta(seconds=_LANDING)


def run_labels(schedule: Schedule, t: datetime) -> dict[str, str]:
    """The labels of a schedule's run for fire time ``t``."""
    return {**schedule.labels, SCHEDULE_LABEL: schedule.name,
            FIRE_TIME_LABEL: t.astimezone(UTC).isoformat().replace("+00:00", "Z")}


class ScheduleStore:
    """The schedules bucket: one record per schedule, written with compare-and-set."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def load(self, key: str) -> tuple[ScheduleRecord, int] | None:
        """The record and its revision, or None."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return ScheduleRecord.model_validate_json(entry.value), entry.revision or 0

    async def create(self, record: ScheduleRecord) -> bool:
        """Store a new record; False if one is there already."""
        try:
            await self.kv.create(record.key, record.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def save(self, record: ScheduleRecord, revision: int) -> bool:
        """Write ``record`` if the stored one is still at ``revision``."""
        try:
            await self.kv.update(record.key, record.model_dump_json().encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def update(self, key: str, change: Callable[[ScheduleRecord], ScheduleRecord]
                     ) -> ScheduleRecord | None:
        """Apply ``change`` with compare-and-set until it lands; None if there is none."""
        for _ in range(_CAS_TRIES):
            loaded = await self.load(key)
            if loaded is None:
                return None
            record = change(loaded[0])
            if await self.save(record, loaded[1]):
                return record
        raise Unavailable(f"schedule {key} is being changed by many at once; try again")

    async def delete(self, key: str) -> bool:
        """Delete a record; False if there was none."""
        if await self.load(key) is None:
            return False
        await self.kv.delete(key)
        return True

    async def records(self) -> list[ScheduleRecord]:
        """Every schedule's record (one listing of the bucket, :func:`orchestrator.kvscan.scan`)."""
        return [ScheduleRecord.model_validate_json(e.value) for e in await scan(self.kv)
                if e.value]


async def publish_tick(publisher: AsyncPublisher, subjects: Subjects, record: ScheduleRecord,
                       *, kick: str | None = None) -> None:
    """Publish the record's next tick (or, with ``kick``, one due now, for a trigger or a
    backfill: its message id is ``kick``'s)."""
    due = datetime.now(UTC) if kick is not None else record.next_due
    if due is None:
        return
    tick = ScheduleTick(key=record.key, due=due)
    msg_id = f"sched:{record.key}:" + (f"kick:{kick}" if kick is not None
                                       else due.strftime("%Y%m%dT%H%M%S.%fZ"))
    await publisher.stored(subjects.schedule_tick(record.key),
                           tick.model_dump_json().encode(), {MSG_ID: msg_id})


class ScheduleRunner:
    """Takes schedule ticks and fires what is due.

    Args:
        nc: Connected NATS client.
        subjects: The deployment's names.
        store: The schedules bucket.
        publisher: Where ticks are published.
        client: How runs are started, stopped and looked at (the API).
        clock: The time (UTC).
    """

    def __init__(self, nc: Client, subjects: Subjects, *, store: ScheduleStore,
                 publisher: AsyncPublisher, client: NatsflowClient,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.nc = nc
        self.subjects = subjects
        self.store = store
        self.publisher = publisher
        self.client = client
        self.clock = clock
        self._sub: PullConsumer | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Start taking ticks and sweeping."""
        self._sub = await PullConsumer(self.nc, self.subjects.inbox_stream,
                                       self.subjects.schedule_consumer, batch=64).start()
        self._loops = [asyncio.create_task(self._tick_loop(self._sub)),
                       asyncio.create_task(self._sweep_loop())]

    async def stop(self) -> None:
        """Stop; ticks in hand are redelivered to another orchestrator later."""
        self._stopping.set()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._sub is not None:
            await self._sub.stop()

    async def _tick_loop(self, sub: PullConsumer) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await sub.next_batch(64, timeout=1.0)
            except (ConsumerStalled, nats.errors.Error, nats.js.errors.Error):
                await asyncio.sleep(0.5)
                continue
            await asyncio.gather(*(self._handle(msg) for msg in msgs))

    async def _handle(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # NATS or the API unreachable, a lost compare-and-set race: again shortly.
            log.warning("schedule tick %s not handled yet: %r", msg.subject, exc)
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=1.0)

    async def handle(self, msg: Msg) -> None:
        """One tick: park it until due, else advance its schedule and ack."""
        try:
            tick = ScheduleTick.model_validate_json(msg.data)
        except ValidationError:
            log.warning("dropping a malformed schedule tick on %s", msg.subject)
            await msg.ack()
            return
        now = self.clock()
        if tick.due > now:
            await msg.nak(delay=(tick.due - now).total_seconds())
            return
        for _ in range(_CAS_TRIES):
            loaded = await self.store.load(tick.key)
            if loaded is None:  # deleted: its ticks die out
                await msg.ack()
                return
            record, revision = loaded
            if record.outbox:  # a crashed taker's: carry it out first
                record = await self._carry_out(record, revision)
                loaded = await self.store.load(tick.key)
                if loaded is None:
                    continue
                record, revision = loaded
            now = self.clock()
            running = await self._running(record, now)
            moved = advance(record, now, running=running)
            if moved != record:
                if not await self.store.save(moved, revision):
                    continue  # someone else moved it: look again
                if moved.outbox:
                    loaded = await self.store.load(tick.key)
                    if loaded is not None and loaded[0] == moved:
                        await self._carry_out(moved, loaded[1])
            await publish_tick(self.publisher, self.subjects, moved)
            await msg.ack()
            return
        raise Unavailable(f"schedule {tick.key}: too many concurrent changes")

    async def _running(self, record: ScheduleRecord, now: datetime) -> bool:
        """Whether the schedule's latest run is still going."""
        if record.last_run is None:
            return False
        try:
            reply = await self.client.get(record.last_run)
        except WorkflowNotFound:
            # Just decided, its create may still be landing; long since, it never
            # started (its definition was deleted, say): nothing to wait for.
            return _may_be_landing(record.last_started_at, now)
        state = reply.status.state if reply.status is not None else WorkflowState.RUNNING
        return state not in WORKFLOW_TERMINAL

    async def _carry_out(self, record: ScheduleRecord, revision: int) -> ScheduleRecord:
        """Start and stop what the outbox says, then clear it (compare-and-set)."""
        for effect in record.outbox:
            if isinstance(effect, StartRun):
                await self._start_run(record.schedule, effect)
            elif isinstance(effect, StopRun):
                await self._stop_run(effect)
        done = record.model_copy(update={"outbox": []})
        await self.store.save(done, revision)  # lost: whoever won cleared it or will
        return done

    async def _start_run(self, schedule: Schedule, run: StartRun) -> None:
        target, labels = schedule.workflow, run_labels(schedule, run.fire_time)
        try:
            if target.config is not None:
                config = WorkflowConfig.model_validate({
                    **target.config.model_dump(exclude_none=True),
                    "id": run.workflow_id, "namespace": schedule.namespace,
                    "labels": {**target.config.labels, **labels}})
                await self.client.create(config)
            else:
                assert target.definition is not None
                await self.client.run(target.definition, schedule.input,
                                      version=target.version, workflow_id=run.workflow_id,
                                      labels=labels, namespace=schedule.namespace)
        except IdConflict:
            pass  # that fire time's workflow exists: started before
        except (InvalidRequest, NotFound) as exc:
            # The definition was deleted, the input no longer fits: the run cannot
            # start; the schedule goes on (what became of it is logged).
            log.error("schedule %s could not start %s: %s", schedule.name, run.workflow_id,
                      exc)
        log.debug("schedule %s fired %s", schedule.name, fire_time_token(run.fire_time))

    async def _stop_run(self, stop: StopRun) -> None:
        try:
            await self.client.stop(stop.workflow_id)
        except AlreadyFinished:
            pass
        except WorkflowNotFound:
            # Its create is persisted but not applied yet (the API stopped waiting for
            # it, the engine is retrying it): the stop came first, and dropping it would
            # leave the run going for good, and what waits behind it waiting. Raised,
            # the outbox stays and the tick comes again (create, then stop, again).
            if _may_be_landing(stop.since, self.clock()):
                raise Unavailable(f"run {stop.workflow_id} to stop has not landed yet"
                                  ) from None

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except (NatsflowError, nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("schedule sweep failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SWEEP_INTERVAL)

    async def sweep(self) -> None:
        """Publish again the tick of every schedule whose next tick is overdue."""
        late = self.clock() - timedelta(seconds=_OVERDUE)
        for record in await self.store.records():
            if record.next_due is not None and record.next_due < late:
                await publish_tick(self.publisher, self.subjects, record)
