"""The schedule operations of ``<prefix>.api.schedule.*``, served by every orchestrator.

Each handler reads or changes a schedule's record in the schedules bucket (with
compare-and-set) and, where the schedule is to wake sooner than its tick says (created,
unpaused, triggered, backfilled), publishes a tick. Namespaces work as for definitions:
a schedule outside the request's scope answers as a missing one; a create outside it is
``namespace-forbidden``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.errors import IdConflict, ScheduleNotFound, ValidationFailed, WorkflowNotFound
from contracts.namespaces import check_may_create, visible
from contracts.operations import (
    SCHEDULE_BACKFILL,
    SCHEDULE_CREATE,
    SCHEDULE_DELETE,
    SCHEDULE_GET,
    SCHEDULE_LIST,
    SCHEDULE_PAUSE,
    SCHEDULE_TRIGGER,
    SCHEDULE_UNPAUSE,
    Operation,
)
from contracts.schedules import (
    MAX_BACKFILL,
    BackfillReply,
    BackfillRequest,
    CreateScheduleRequest,
    DeleteScheduleReply,
    ListSchedulesRequest,
    PauseScheduleRequest,
    RunOutcome,
    ScheduleFireReply,
    ScheduleInfo,
    ScheduleList,
    ScheduleRef,
    ScheduleSummary,
    fire_time_token,
    fire_times,
    run_id,
    schedule_key,
)
from contracts.subjects import Subjects
from natsflow.client import NatsflowClient
from transport.publish import AsyncPublisher

from .definitions import DefinitionStore
from .schedule_runner import ScheduleStore, publish_tick
from .schedules import Pending, ScheduleRecord, new_record

__all__ = ["ScheduleApi"]

#: Fire times ``schedule.get`` shows ahead.
_AHEAD = 5

Handler = Callable[[bytes], Awaitable[Any]]


class ScheduleApi:
    """The handlers of the schedule operations.

    Args:
        subjects: The deployment's names.
        store: The schedules bucket.
        publisher: Where ticks are published.
        client: How runs' states are read (``workflow.get``).
        definitions: The registry a schedule's ``definition`` must be in.
        clock: The time (UTC).
    """

    def __init__(self, subjects: Subjects, *, store: ScheduleStore, publisher: AsyncPublisher,
                 client: NatsflowClient, definitions: DefinitionStore | None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.subjects = subjects
        self.store = store
        self.publisher = publisher
        self.client = client
        self.definitions = definitions
        self.clock = clock

    def handlers(self) -> dict[Operation[Any, Any], Handler]:
        """Each schedule operation with its handler."""
        return {SCHEDULE_CREATE: self.create, SCHEDULE_GET: self.get,
                SCHEDULE_LIST: self.list, SCHEDULE_PAUSE: self.pause,
                SCHEDULE_UNPAUSE: self.unpause, SCHEDULE_TRIGGER: self.trigger,
                SCHEDULE_BACKFILL: self.backfill, SCHEDULE_DELETE: self.delete}

    async def _load(self, ref: ScheduleRef) -> ScheduleRecord:
        loaded = (await self.store.load(schedule_key(ref.namespace, ref.name))
                  if visible(ref.namespace, ref.namespaces) else None)
        if loaded is None:
            raise ScheduleNotFound(f"no schedule {ref.name!r} in namespace "
                                   f"{ref.namespace!r}", field="name")
        return loaded[0]

    async def _update(self, ref: ScheduleRef, change: Callable[[ScheduleRecord], None]
                      ) -> ScheduleRecord:
        await self._load(ref)  # visible, and there

        def changed(record: ScheduleRecord) -> ScheduleRecord:
            copy = record.model_copy(deep=True)
            change(copy)
            return copy

        record = await self.store.update(schedule_key(ref.namespace, ref.name), changed)
        if record is None:
            raise ScheduleNotFound(f"no schedule {ref.name!r}", field="name")
        return record

    async def _info(self, record: ScheduleRecord, *, created: bool = False) -> ScheduleInfo:
        ahead = ([] if record.schedule.paused
                 else list(fire_times(record.schedule.spec, record.cursor, limit=_AHEAD)))
        recent = []
        for run in record.recent:
            if run.outcome is RunOutcome.STARTED:
                try:
                    reply = await self.client.get(run.workflow_id)
                    state = reply.status.state if reply.status is not None else None
                except WorkflowNotFound:
                    state = None
                run = run.model_copy(update={"state": state})
            recent.append(run)
        return ScheduleInfo(schedule=record.schedule, created=created, next_fire_times=ahead,
                            recent=recent, missed=record.missed, buffered=record.buffered)

    async def create(self, data: bytes) -> ScheduleInfo:
        """``schedule.create``: CreateScheduleRequest -> ScheduleInfo."""
        req = CreateScheduleRequest.model_validate_json(data)
        s = req.schedule
        check_may_create(s.namespace, req.namespaces, field="schedule.namespace")
        if s.workflow.definition is not None and self.definitions is not None:
            # Refused now rather than failing at every fire time.
            await self.definitions.resolve_config(s.workflow.definition, s.workflow.version,
                                                  namespace=s.namespace)
        record = new_record(s, self.clock())
        if not await self.store.create(record):
            existing = await self.store.load(record.key)
            # Paused since (or not) is its state, not its body.
            state = {"paused", "note"}
            if existing is None or (existing[0].schedule.model_dump(exclude=state)
                                    != s.model_dump(exclude=state)):
                raise IdConflict(f"a schedule named {s.name!r} exists with another body; "
                                 "delete it first", field="schedule.name")
            return await self._info(existing[0])
        await publish_tick(self.publisher, self.subjects, record)
        return await self._info(record, created=True)

    async def get(self, data: bytes) -> ScheduleInfo:
        """``schedule.get``: ScheduleRef -> ScheduleInfo."""
        return await self._info(await self._load(ScheduleRef.model_validate_json(data)))

    async def list(self, data: bytes) -> ScheduleList:
        """``schedule.list``: ListSchedulesRequest -> ScheduleList."""
        req = ListSchedulesRequest.model_validate_json(data)
        lines = []
        for record in await self.store.records():
            s = record.schedule
            if not visible(s.namespace, req.namespaces) or (
                    req.namespace is not None and s.namespace != req.namespace):
                continue
            nxt = (None if s.paused
                   else next(fire_times(s.spec, record.cursor, limit=1), None))
            lines.append(ScheduleSummary(name=s.name, namespace=s.namespace, paused=s.paused,
                                         note=s.note, next_fire_time=nxt))
        lines.sort(key=lambda x: (x.namespace, x.name))
        return ScheduleList(schedules=lines)

    async def pause(self, data: bytes) -> ScheduleInfo:
        """``schedule.pause``: PauseScheduleRequest -> ScheduleInfo."""
        req = PauseScheduleRequest.model_validate_json(data)

        def pause(r: ScheduleRecord) -> None:
            r.schedule = r.schedule.model_copy(update={"paused": True, "note": req.note})
            r.next_due = None

        return await self._info(await self._update(req, pause))

    async def unpause(self, data: bytes) -> ScheduleInfo:
        """``schedule.unpause``: ScheduleRef -> ScheduleInfo (fires from now on)."""
        req = ScheduleRef.model_validate_json(data)
        now = self.clock()

        def unpause(r: ScheduleRecord) -> None:
            if not r.schedule.paused:
                return
            fresh = new_record(r.schedule.model_copy(update={"paused": False, "note": ""}),
                               now)
            r.schedule, r.cursor, r.next_due = fresh.schedule, fresh.cursor, fresh.next_due

        record = await self._update(req, unpause)
        await publish_tick(self.publisher, self.subjects, record)
        return await self._info(record)

    async def trigger(self, data: bytes) -> ScheduleFireReply:
        """``schedule.trigger``: ScheduleRef -> ScheduleFireReply (a fire time of now)."""
        req = ScheduleRef.model_validate_json(data)
        t = self.clock().replace(microsecond=0)

        def trigger(r: ScheduleRecord) -> None:
            if all(p.fire_time != t for p in r.pending):
                r.pending.append(Pending(fire_time=t, reason="manual"))

        record = await self._update(req, trigger)
        await publish_tick(self.publisher, self.subjects, record,
                           kick=f"manual:{fire_time_token(t)}")
        return ScheduleFireReply(fire_time=t, workflow_id=run_id(req.namespace, req.name, t))

    async def backfill(self, data: bytes) -> BackfillReply:
        """``schedule.backfill``: BackfillRequest -> BackfillReply."""
        req = BackfillRequest.model_validate_json(data)
        record = await self._load(req)
        times = list(fire_times(record.schedule.spec, req.start - timedelta(microseconds=1),
                                until=req.end, limit=MAX_BACKFILL + 1))
        if len(times) > MAX_BACKFILL:
            raise ValidationFailed(f"the range holds more than {MAX_BACKFILL} fire times",
                                   field="end")

        def backfill(r: ScheduleRecord) -> None:
            queued = {p.fire_time for p in r.pending}
            r.pending.extend(Pending(fire_time=t, reason="backfill")
                             for t in times if t not in queued)

        await self._update(req, backfill)
        if times:
            await publish_tick(self.publisher, self.subjects, record, kick=(
                f"backfill:{fire_time_token(times[0])}:{fire_time_token(times[-1])}:"
                f"{fire_time_token(self.clock())}"))
        return BackfillReply(fire_times=times)

    async def delete(self, data: bytes) -> DeleteScheduleReply:
        """``schedule.delete``: ScheduleRef -> DeleteScheduleReply."""
        req = ScheduleRef.model_validate_json(data)
        if not visible(req.namespace, req.namespaces):
            return DeleteScheduleReply(deleted=False)
        return DeleteScheduleReply(
            deleted=await self.store.delete(schedule_key(req.namespace, req.name)))
