"""Schedules: workflows that start themselves on a clock (one home for the model).

A :class:`Schedule` names a workflow (a stored definition, or an inline config) with its
input, and a :class:`ScheduleSpec`: a cron expression (5 fields, or 6 with seconds
first), ``every`` a duration (with an ``offset``), or a list of one-shot ``at`` times, in
an IANA time zone, between an optional ``start`` and ``end``, with an optional
``jitter``. What happens when a fire time comes while the previous run is still going is
its :class:`Overlap` policy; fire times missed while no orchestrator ran are run if they
are within ``catchup_window``, else skipped and counted.

Fire times are computed here, purely (:func:`fire_times`); each run's workflow id is
:func:`run_id` of its schedule and nominal fire time, so one fire time can never start
two workflows. Daylight saving time, for cron and naive ``at`` times: the expression
matches *wall-clock* times in the zone, each matching wall-clock time fires once. A
wall-clock time that does not exist (the hour skipped when clocks go forward) fires at
the first instant after the gap, once however many matched in the gap; a wall-clock time
that happens twice (the hour repeated when clocks go back) fires at its first occurrence
only. ``every`` counts real (UTC) time and is not affected by DST.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from contracts.errors import ValidationFailed
from contracts.models import WorkflowConfig, WorkflowState
from contracts.namespaces import DEFAULT_NAMESPACE, Namespace, Scope, is_default
from contracts.subjects import TOKEN_RE

__all__ = [
    "FIRE_TIME_LABEL",
    "MAX_BACKFILL",
    "SCHEDULE_LABEL",
    "BackfillReply",
    "BackfillRequest",
    "CreateScheduleRequest",
    "DeleteScheduleReply",
    "ListSchedulesRequest",
    "Overlap",
    "PauseScheduleRequest",
    "RunOutcome",
    "Schedule",
    "ScheduleInfo",
    "ScheduleList",
    "ScheduleRef",
    "ScheduleRun",
    "ScheduleSpec",
    "ScheduleSummary",
    "ScheduleTarget",
    "ScheduleFireReply",
    "fire_time_token",
    "fire_times",
    "jitter_of",
    "parse_duration",
    "run_id",
    "schedule_key",
]

#: The label every scheduled run carries: its schedule's name.
SCHEDULE_LABEL: Final = "natsflow.schedule"
#: The label every scheduled run carries: its nominal fire time (RFC 3339, UTC).
FIRE_TIME_LABEL: Final = "natsflow.fire_time"
#: Most fire times one backfill may ask for.
MAX_BACKFILL: Final = 1000

_DURATION_RE: Final = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_Frozen = ConfigDict(extra="forbid", frozen=True)


def parse_duration(value: Any) -> Any:
    """Seconds from ``90``, ``"90"``, ``"90s"``, ``"1h30m"``, ``"1d"`` (else unchanged,
    for the field's own check to refuse)."""
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        m = _DURATION_RE.match(text)
        if not text or m is None:
            raise ValueError(f"{value!r} is not a duration (e.g. 30s, 5m, 1h30m, 1d)")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        return ((d * 24 + h) * 60 + mi) * 60 + s
    return value


#: A duration in whole seconds: a number, or ``30s``, ``5m``, ``1h30m``, ``1d``.
Duration = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]


class Overlap(StrEnum):
    """What a fire time does while the schedule's previous run is still going."""

    #: Start nothing for it (reported as skipped).
    SKIP = "skip"
    #: Start it when the previous run ends; at most one waits, later ones are skipped.
    BUFFER_ONE = "buffer_one"
    #: Start each in turn when the one before it ends.
    BUFFER_ALL = "buffer_all"
    #: Stop the previous run; start this one when it has ended.
    CANCEL_OTHER = "cancel_other"
    #: Stop the previous run and start this one at once.
    TERMINATE_OTHER = "terminate_other"
    #: Start it anyway: runs overlap.
    ALLOW_ALL = "allow_all"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as "
                         "Europe/Paris or UTC)") from None


class ScheduleSpec(BaseModel):
    """When a schedule fires: exactly one of ``cron``, ``every`` and ``at``."""

    model_config = _Frozen

    cron: str | None = Field(default=None, max_length=200, description=(
        "5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first; "
        "`L`, `#` and names (MON, JAN) as in Debian cron."))
    every: Duration | None = Field(default=None, ge=1, description=(
        "Fire every this long, counted from the Unix epoch plus `offset` (UTC)."))
    offset: Duration = Field(default=0, description="With `every`: shift the fire times.")
    at: list[datetime] | None = Field(default=None, min_length=1, max_length=1000,
                                      description="One-shot fire times; a time without "
                                      "an offset is a wall-clock time in `timezone`.")
    timezone: str = Field(default="UTC", max_length=64,
                          description="IANA time zone of `cron` and naive `at` times.")
    start: datetime | None = Field(default=None, description="No fire time before this.")
    end: datetime | None = Field(default=None, description="No fire time after this.")
    jitter: Duration = Field(default=0, le=86_400, description=(
        "Start each run up to this many seconds after its fire time (the same delay for "
        "a fire time whoever computes it); the run's id keeps the fire time."))

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        fields = value.split()
        if len(fields) not in (5, 6):
            raise ValueError(f"a cron expression has 5 fields (or 6, seconds first), "
                             f"not {len(fields)}")
        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        _zone(value)
        return value

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time with its UTC offset (e.g. 2026-01-01T00:00:00Z)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSpec:
        given = [k for k in ("cron", "every", "at") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValidationFailed("give exactly one of `cron`, `every` and `at`",
                                   field="spec.cron" if not given else f"spec.{given[1]}")
        if self.offset and self.every is None:
            raise ValidationFailed("`offset` goes with `every`", field="spec.offset")
        if self.start and self.end and self.end < self.start:
            raise ValidationFailed("`end` is before `start`", field="spec.end")
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The spec's time zone."""
        return _zone(self.timezone)


class ScheduleTarget(BaseModel):
    """The workflow a schedule starts: a stored ``definition`` (latest, or ``version``)
    or an inline ``config``."""

    model_config = _Frozen

    definition: str | None = Field(default=None, min_length=1, max_length=100,
                                   pattern=TOKEN_RE.pattern)
    version: int | None = Field(default=None, ge=1)
    config: WorkflowConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ScheduleTarget:
        if (self.config is None) == (self.definition is None):
            raise ValidationFailed("give exactly one of `definition` and `config`",
                                   field="workflow.definition")
        if self.config is not None and self.version is not None:
            raise ValidationFailed("`version` goes with `definition`",
                                   field="workflow.version")
        if self.config is not None and self.config.id is not None:
            raise ValidationFailed("a scheduled run's id is the schedule's; leave `id` out",
                                   field="workflow.config.id")
        return self


class Schedule(BaseModel):
    """A schedule as its user writes it (the body of ``POST /schedules``)."""

    model_config = _Frozen

    name: str = Field(min_length=1, max_length=64, pattern=TOKEN_RE.pattern)
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default)
    workflow: ScheduleTarget
    input: dict[str, Any] = Field(default_factory=dict,
                                  description="Each run's input (with `definition`).")
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    spec: ScheduleSpec
    overlap: Overlap = Overlap.SKIP
    catchup_window: Duration = Field(default=60, description=(
        "A fire time missed (no orchestrator ran) by up to this long still runs; older "
        "ones are skipped and counted as missed."))
    paused: bool = False
    note: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _input_place(self) -> Schedule:
        if self.workflow.config is not None and self.input:
            raise ValidationFailed("with an inline `config`, the input goes inside it",
                                   field="input")
        return self


class RunOutcome(StrEnum):
    """What became of one fire time."""

    STARTED = "started"
    SKIPPED = "skipped"
    BUFFERED = "buffered"
    MISSED = "missed"


class ScheduleRun(BaseModel):
    """One fire time and what became of it (and, in answers, its run's state)."""

    model_config = _Frozen

    fire_time: datetime
    workflow_id: str
    outcome: RunOutcome
    reason: Literal["", "overlap", "catchup", "manual", "backfill"] = ""
    state: WorkflowState | None = Field(default=None, exclude_if=lambda v: v is None)


class CreateScheduleRequest(BaseModel):
    """``schedule.create``: store a schedule (the same one again: unchanged)."""

    model_config = _Frozen

    schedule: Schedule
    namespaces: Scope = None


class ScheduleRef(BaseModel):
    """``schedule.get/trigger/delete/unpause``: one schedule by name."""

    model_config = _Frozen

    name: str = Field(min_length=1, max_length=64, pattern=TOKEN_RE.pattern)
    namespace: Namespace = Field(default=DEFAULT_NAMESPACE, exclude_if=is_default)
    namespaces: Scope = None


class PauseScheduleRequest(ScheduleRef):
    """``schedule.pause``: stop firing, saying why."""

    note: str = Field(default="", max_length=500)


class BackfillRequest(ScheduleRef):
    """``schedule.backfill``: run the fire times between ``start`` and ``end`` now."""

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _range(self) -> BackfillRequest:
        for name in ("start", "end"):
            if getattr(self, name).tzinfo is None:
                raise ValidationFailed("give a time with its UTC offset", field=name)
        if self.end < self.start:
            raise ValidationFailed("`end` is before `start`", field="end")
        return self


class ListSchedulesRequest(BaseModel):
    """``schedule.list``: every schedule (of ``namespace`` only, if given)."""

    model_config = _Frozen

    namespace: Namespace | None = Field(default=None, exclude_if=lambda v: v is None)
    namespaces: Scope = None


class ScheduleInfo(BaseModel):
    """A schedule, its state, its next fire times and its last runs."""

    model_config = _Frozen

    schedule: Schedule
    created: bool = Field(default=False, description="`schedule.create`: stored anew.")
    next_fire_times: list[datetime] = Field(default_factory=list)
    recent: list[ScheduleRun] = Field(default_factory=list, description="Newest first.")
    missed: int = Field(default=0, description="Fire times skipped as too old to catch up.")
    buffered: list[datetime] = Field(default_factory=list)


class ScheduleSummary(BaseModel):
    """One line of ``schedule.list``."""

    model_config = _Frozen

    name: str
    namespace: Namespace = DEFAULT_NAMESPACE
    paused: bool
    note: str = ""
    next_fire_time: datetime | None = None


class ScheduleList(BaseModel):
    """Answer of ``schedule.list``, by namespace and name."""

    model_config = _Frozen

    schedules: list[ScheduleSummary]


class ScheduleFireReply(BaseModel):
    """Answer of ``schedule.trigger``: the fire time it made and its run's id."""

    model_config = _Frozen

    fire_time: datetime
    workflow_id: str


class BackfillReply(BaseModel):
    """Answer of ``schedule.backfill``: the fire times queued, oldest first."""

    model_config = _Frozen

    fire_times: list[datetime]


class DeleteScheduleReply(BaseModel):
    """Answer of ``schedule.delete``."""

    model_config = _Frozen

    deleted: bool


# -- pure computations -------------------------------------------------------------------
def schedule_key(namespace: str, name: str) -> str:
    """The schedule's key in the schedules bucket (and its tick subject's tail)."""
    return name if is_default(namespace) else f"{namespace}.{name}"


def fire_time_token(t: datetime) -> str:
    """A fire time as an id part: ``20260102T030405Z`` (UTC, whole seconds)."""
    return t.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def run_id(namespace: str, name: str, t: datetime) -> str:
    """The workflow id of the run of schedule ``name`` for fire time ``t``."""
    head = name if is_default(namespace) else f"{namespace}-{name}"
    return f"{head}-{fire_time_token(t)}"


def jitter_of(key: str, t: datetime, jitter: int) -> float:
    """The delay (seconds, in ``[0, jitter)``) of fire time ``t``: the same wherever it
    is computed, so every orchestrator starts that run at the same moment."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{key}|{fire_time_token(t)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * jitter


def _gap_end(naive: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the DST gap that wall-clock time ``naive`` falls in."""
    lo = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)  # before the gap, by offset
    hi = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    lo, hi = min(lo, hi), max(lo, hi)
    after = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _instant(naive: datetime, zone: ZoneInfo) -> datetime:
    """The instant of wall-clock time ``naive`` in ``zone``: its first occurrence; the
    end of the gap for one that does not exist."""
    aware = naive.replace(tzinfo=zone, fold=0)
    back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != naive:
        return _gap_end(naive, zone)
    return aware.astimezone(UTC)


def _cron_times(spec: ScheduleSpec, after: datetime) -> Iterator[datetime]:
    assert spec.cron is not None
    zone = spec.zone
    # Wall-clock iteration (a naive start): each matching wall-clock time once.
    local = after.astimezone(zone).replace(tzinfo=None, microsecond=0)
    # From an hour before: a wall-clock time of the repeated hour's first pass that is
    # still after ``after`` by the clock (``after`` in the second pass) is not lost.
    for naive in CronSim(spec.cron, local - timedelta(hours=1)):
        yield _instant(naive, zone)


def _every_times(spec: ScheduleSpec, after: datetime) -> Iterator[datetime]:
    assert spec.every is not None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    elapsed = int((after - epoch).total_seconds()) - spec.offset
    k = elapsed // spec.every + 1
    while True:
        yield epoch + timedelta(seconds=spec.offset + k * spec.every)
        k += 1


def _at_times(spec: ScheduleSpec) -> Iterator[datetime]:
    assert spec.at is not None
    zone = spec.zone
    yield from sorted(t.astimezone(UTC) if t.tzinfo else _instant(t, zone) for t in spec.at)


def fire_times(spec: ScheduleSpec, after: datetime, *, until: datetime | None = None,
               limit: int | None = None) -> Iterator[datetime]:
    """The spec's fire times strictly after ``after`` (and at most ``until``), in order,
    in UTC, within ``start``/``end``; at most ``limit`` of them."""
    if spec.start is not None and after < spec.start:
        after = spec.start - timedelta(microseconds=1)
    last = spec.end if until is None else (until if spec.end is None else min(until,
                                                                                spec.end))
    source = (_cron_times(spec, after) if spec.cron is not None
              else _every_times(spec, after) if spec.every is not None
              else _at_times(spec))
    previous: datetime | None = None
    count = 0
    for t in source:
        if t <= after or (previous is not None and t <= previous):
            continue  # before the window, or a time of a gap already fired
        if last is not None and t > last:
            return
        previous = t
        yield t
        count += 1
        if limit is not None and count >= limit:
            return
