"""A schedule's stored state and how it moves on: pure, time as input.

:func:`advance` takes a schedule's record, the time, and whether the schedule's latest
run is still going (the shell asked), and answers the new record: which fire times are
decided (the cursor), what is buffered, what was missed, and the *outbox* of runs to
start and stop. The shell saves the record (compare-and-set) before it carries out its
outbox, and clears the outbox once it has; a crash in between leaves the outbox in the
record, for whoever takes the schedule's next tick to carry out again. Both effects are
idempotent: a run's id is its schedule's and fire time's, and stopping an ended run is a
no-op.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.schedules import (
    Overlap,
    RunOutcome,
    Schedule,
    ScheduleRun,
    fire_times,
    jitter_of,
    run_id,
    schedule_key,
)

__all__ = ["BUFFER_POLL", "RECENT", "ScheduleRecord", "ScheduleTick", "StartRun", "StopRun",
           "advance", "due_of", "new_record"]

#: Newest fire times a record keeps, with what became of them.
RECENT: Final = 20
#: While a fire time is buffered behind a running run, look at that run this often (s).
BUFFER_POLL: Final = 1.0
#: Most missed fire times counted one by one in a single advance (beyond: jumped over).
_MISSED_SCAN: Final = 10_000
_Stored = ConfigDict(extra="forbid")


class StartRun(BaseModel):
    """Start the run of ``fire_time`` (its id is ``workflow_id``)."""

    model_config = _Stored

    kind: Literal["start"] = "start"
    fire_time: datetime
    workflow_id: str


class StopRun(BaseModel):
    """Stop run ``workflow_id`` (an overlap policy wants it gone)."""

    model_config = _Stored

    kind: Literal["stop"] = "stop"
    workflow_id: str
    since: datetime | None = Field(default=None, description=(
        "When the run was decided (its schedule's `last_started_at` then): not found "
        "that soon after, its create may still be landing, and the stop waits for it."))


Effect = Annotated[StartRun | StopRun, Field(discriminator="kind")]


class Pending(BaseModel):
    """A fire time asked for by hand (trigger, backfill), not yet put through."""

    model_config = _Stored

    fire_time: datetime
    reason: Literal["manual", "backfill"]


class ScheduleRecord(BaseModel):
    """What the schedules bucket holds for one schedule."""

    model_config = _Stored

    schedule: Schedule
    cursor: datetime = Field(description="Every fire time up to here is decided.")
    next_due: datetime | None = Field(default=None, description=(
        "When the schedule's next tick is due (its next fire time plus its jitter); "
        "None: paused, or no fire time left."))
    last_run: str | None = None
    last_started_at: datetime | None = Field(default=None, description=(
        "When `last_run` was decided: a run not found that soon after may still be "
        "landing, and counts as going."))
    buffered: list[datetime] = Field(default_factory=list)
    pending: list[Pending] = Field(default_factory=list)
    outbox: list[Effect] = Field(default_factory=list)
    recent: list[ScheduleRun] = Field(default_factory=list)
    missed: int = 0

    @property
    def key(self) -> str:
        """The record's key in the bucket."""
        return schedule_key(self.schedule.namespace, self.schedule.name)


class ScheduleTick(BaseModel):
    """A schedule's wake-up call, on ``<prefix>.sched.<key>``: due at ``due``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    due: datetime


def due_of(record: ScheduleRecord, t: datetime) -> datetime:
    """When fire time ``t`` of the record's schedule is due: ``t`` plus its jitter."""
    return t + timedelta(seconds=jitter_of(record.key, t, record.schedule.spec.jitter))


def _next_due(record: ScheduleRecord) -> datetime | None:
    if record.schedule.paused:
        return None
    nxt = next(fire_times(record.schedule.spec, record.cursor, limit=1), None)
    return None if nxt is None else due_of(record, nxt)


def new_record(schedule: Schedule, now: datetime) -> ScheduleRecord:
    """The record of a schedule stored at ``now``: it fires from then on."""
    record = ScheduleRecord(schedule=schedule, cursor=now)
    record.next_due = _next_due(record)
    return record


class _Pass:
    """One advance's working copy."""

    def __init__(self, record: ScheduleRecord, running: bool, now: datetime) -> None:
        self.r = record
        self.running = running
        self.now = now
        self.stopped: set[str] = set()

    def note(self, t: datetime, outcome: RunOutcome, reason: str = "") -> None:
        s = self.r.schedule
        run = ScheduleRun.model_validate({"fire_time": t, "outcome": outcome,
                                          "reason": reason,
                                          "workflow_id": run_id(s.namespace, s.name, t)})
        self.r.recent = [run, *[x for x in self.r.recent if x.fire_time != t]][:RECENT]

    def start(self, t: datetime, reason: str = "") -> None:
        s = self.r.schedule
        wid = run_id(s.namespace, s.name, t)
        self.r.outbox.append(StartRun(fire_time=t, workflow_id=wid))
        self.r.last_run = wid
        self.r.last_started_at = self.now
        self.running = True
        self.note(t, RunOutcome.STARTED, reason)

    def stop_last(self) -> None:
        last = self.r.last_run
        if last is not None and last not in self.stopped:
            self.stopped.add(last)
            self.r.outbox.append(StopRun(workflow_id=last, since=self.r.last_started_at))

    def fire(self, t: datetime, reason: str = "") -> None:
        policy = self.r.schedule.overlap
        if not self.running or policy is Overlap.ALLOW_ALL:
            self.start(t, reason)
        elif policy is Overlap.SKIP:
            self.note(t, RunOutcome.SKIPPED, "overlap")
        elif policy is Overlap.BUFFER_ONE:
            if self.r.buffered:
                self.note(t, RunOutcome.SKIPPED, "overlap")
            else:
                self.buffer(t)
        elif policy is Overlap.BUFFER_ALL:
            self.buffer(t)
        elif policy is Overlap.CANCEL_OTHER:
            self.stop_last()
            for older in self.r.buffered:  # only the newest waits for the stop
                self.note(older, RunOutcome.SKIPPED, "overlap")
            self.r.buffered = []
            self.buffer(t)
        else:  # TERMINATE_OTHER
            self.stop_last()
            self.start(t, reason)

    def buffer(self, t: datetime) -> None:
        self.r.buffered = [*self.r.buffered, t]
        self.note(t, RunOutcome.BUFFERED, "overlap")


def advance(record: ScheduleRecord, now: datetime, *, running: bool) -> ScheduleRecord:
    """The record once every fire time due by ``now`` is decided.

    Args:
        record: The stored record (not changed).
        now: The time.
        running: Whether the record's ``last_run`` is still going (False: none).

    Returns:
        A new record: its outbox holds the runs to start and stop.
    """
    r = record.model_copy(deep=True)
    if r.schedule.paused:
        r.next_due = None
        return r
    p = _Pass(r, running, now)
    # A buffered fire time goes first, once the run it waited for has ended.
    if r.buffered and not p.running:
        first, *rest = r.buffered
        r.buffered = rest
        p.start(first, "overlap")
    for asked in r.pending:
        p.fire(asked.fire_time, asked.reason)
    r.pending = []
    spec, window = r.schedule.spec, timedelta(seconds=r.schedule.catchup_window)
    oldest = now - window
    if r.cursor < oldest:
        # Missed while nothing ran: counted (up to a bound), never run.
        for scanned, t in enumerate(fire_times(spec, r.cursor, until=oldest)):
            if scanned >= _MISSED_SCAN:
                break
            r.missed += 1
            p.note(t, RunOutcome.MISSED, "catchup")
        r.cursor = oldest
    for t in fire_times(spec, r.cursor, until=now):
        if due_of(r, t) > now:
            break
        p.fire(t)
        r.cursor = t
    r.next_due = _next_due(r)
    if r.buffered:
        poll = now + timedelta(seconds=BUFFER_POLL)
        r.next_due = poll if r.next_due is None else min(r.next_due, poll)
    return r
