"""Schedules, purely: fire times (cron, every, at, time zones and DST), the spec's checks,
and how :func:`orchestrator.schedules.advance` applies each overlap policy, catch-up and
jitter. No NATS here; tests/test_schedules_nats.py runs them on a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from contracts.errors import ValidationFailed
from contracts.schedules import (
    Overlap,
    RunOutcome,
    Schedule,
    ScheduleSpec,
    fire_times,
    jitter_of,
    run_id,
)
from orchestrator.schedules import (
    Pending,
    ScheduleRecord,
    StartRun,
    StopRun,
    advance,
    due_of,
    new_record,
)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def times(spec: dict[str, Any], after: datetime, n: int) -> list[str]:
    return [t.isoformat() for t in fire_times(ScheduleSpec.model_validate(spec), after,
                                              limit=n)]


# -- fire times --------------------------------------------------------------------------
def test_cron_five_fields_and_six_with_seconds() -> None:
    assert times({"cron": "*/15 * * * *"}, T0, 3) == [
        "2026-06-01T12:15:00+00:00", "2026-06-01T12:30:00+00:00", "2026-06-01T12:45:00+00:00"]
    assert times({"cron": "*/20 * * * * *"}, T0, 3) == [
        "2026-06-01T12:00:20+00:00", "2026-06-01T12:00:40+00:00", "2026-06-01T12:01:00+00:00"]


def test_cron_in_a_time_zone() -> None:
    # 09:00 in Paris is 07:00 UTC in summer.
    assert times({"cron": "0 9 * * *", "timezone": "Europe/Paris"}, T0, 1) == [
        "2026-06-02T07:00:00+00:00"]


def test_every_with_an_offset_counts_from_the_epoch() -> None:
    assert times({"every": "1h", "offset": "5m"}, T0, 2) == [
        "2026-06-01T12:05:00+00:00", "2026-06-01T13:05:00+00:00"]
    assert times({"every": 90}, T0, 1) == ["2026-06-01T12:01:30+00:00"]


def test_one_shot_times_in_order_naive_ones_in_the_zone() -> None:
    spec = {"at": ["2026-06-03T10:00:00", "2026-06-02T00:00:00Z"], "timezone": "Asia/Tokyo"}
    assert times(spec, T0, 5) == ["2026-06-02T00:00:00+00:00", "2026-06-03T01:00:00+00:00"]


def test_start_and_end_bound_the_fire_times() -> None:
    spec = {"every": "1h", "start": "2026-06-01T15:00:00Z", "end": "2026-06-01T17:00:00Z"}
    assert times(spec, T0, 10) == ["2026-06-01T15:00:00+00:00", "2026-06-01T16:00:00+00:00",
                                   "2026-06-01T17:00:00+00:00"]


# DST in New York, 2026: clocks go forward on 8 March at 02:00 EST (07:00 UTC) to 03:00 EDT,
# and back on 1 November at 02:00 EDT (06:00 UTC) to 01:00 EST.
NY = "America/New_York"


def test_dst_a_fire_time_in_the_skipped_hour_fires_once_at_the_end_of_the_gap() -> None:
    got = times({"cron": "30 2 * * *", "timezone": NY}, datetime(2026, 3, 7, 12, tzinfo=UTC),
                3)
    assert got == ["2026-03-08T07:00:00+00:00",  # 03:00 EDT, the first instant after it
                   "2026-03-09T06:30:00+00:00", "2026-03-10T06:30:00+00:00"]


def test_dst_several_fire_times_in_the_skipped_hour_fire_once() -> None:
    got = times({"cron": "*/20 * * * *", "timezone": NY},
                datetime(2026, 3, 8, 6, 30, tzinfo=UTC), 5)
    # 01:40 EST, then 02:00/02:20/02:40 (do not exist) and 03:00 EDT: one fire at 07:00.
    assert got == ["2026-03-08T06:40:00+00:00", "2026-03-08T07:00:00+00:00",
                   "2026-03-08T07:20:00+00:00", "2026-03-08T07:40:00+00:00",
                   "2026-03-08T08:00:00+00:00"]


def test_dst_a_fire_time_in_the_repeated_hour_fires_once() -> None:
    daily = times({"cron": "30 1 * * *", "timezone": NY},
                  datetime(2026, 10, 31, 12, tzinfo=UTC), 2)
    assert daily == ["2026-11-01T05:30:00+00:00",  # 01:30 EDT; not again at 01:30 EST
                     "2026-11-02T06:30:00+00:00"]
    half_hourly = times({"cron": "*/30 * * * *", "timezone": NY},
                        datetime(2026, 11, 1, 4, 10, tzinfo=UTC), 5)
    assert half_hourly == ["2026-11-01T04:30:00+00:00", "2026-11-01T05:00:00+00:00",
                           "2026-11-01T05:30:00+00:00",  # 01:30 EDT; the EST pass: none
                           "2026-11-01T07:00:00+00:00", "2026-11-01T07:30:00+00:00"]


def test_dst_asked_from_inside_the_repeated_hour_loses_nothing_and_repeats_nothing() -> None:
    # 05:45 UTC is 01:45 EDT, first pass: 02:00 (EST) is next.
    assert times({"cron": "0 * * * *", "timezone": NY},
                 datetime(2026, 11, 1, 5, 45, tzinfo=UTC), 1) == ["2026-11-01T07:00:00+00:00"]


def test_every_ignores_dst() -> None:
    got = times({"every": "1h", "timezone": NY}, datetime(2026, 3, 8, 5, 30, tzinfo=UTC), 3)
    assert got == ["2026-03-08T06:00:00+00:00", "2026-03-08T07:00:00+00:00",
                   "2026-03-08T08:00:00+00:00"]


# -- bad specs name their field ----------------------------------------------------------
@pytest.mark.parametrize(("spec", "field"), [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"every": "soon"}, "every"),
    ({"every": 0}, "every"),
    ({"every": 60, "jitter": "2d"}, "jitter"),
    ({"at": ["yesterday"]}, "at.0"),
    ({"every": 60, "start": "2026-01-01T00:00:00"}, "start"),
])
def test_a_bad_spec_names_its_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ScheduleSpec.model_validate(spec)
    assert ".".join(map(str, info.value.errors()[0]["loc"])) == field


@pytest.mark.parametrize(("spec", "field"), [
    ({}, "spec.cron"),
    ({"cron": "* * * * *", "every": 60}, "spec.every"),
    ({"cron": "* * * * *", "offset": 5}, "spec.offset"),
    ({"every": 60, "start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
     "spec.end"),
])
def test_a_spec_that_is_not_one_kind_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        ScheduleSpec.model_validate(spec)
    assert info.value.field == field


def test_a_schedule_refuses_an_id_of_its_own_and_two_workflows() -> None:
    base: dict[str, Any] = {"name": "s", "spec": {"every": 60}}
    with pytest.raises(ValidationFailed) as info:
        Schedule.model_validate({**base, "workflow": {
            "config": {"id": "x", "name": "w", "steps": [{"id": "a", "task": "t"}]}}})
    assert info.value.field == "workflow.config.id"
    with pytest.raises(ValidationFailed) as info:
        Schedule.model_validate({**base, "workflow": {}})
    assert info.value.field == "workflow.definition"


# -- advance -----------------------------------------------------------------------------
def schedule(overlap: Overlap = Overlap.SKIP, **more: Any) -> Schedule:
    return Schedule.model_validate({"name": "nightly", "workflow": {"definition": "d"},
                                    "spec": {"every": 60}, "overlap": overlap, **more})


def fired(record: ScheduleRecord) -> list[str]:
    return [f"{e.kind}:{e.workflow_id}" for e in record.outbox]


def rid(minute: int) -> str:
    return run_id("default", "nightly", T0 + timedelta(minutes=minute))


def test_a_record_fires_from_when_it_is_stored() -> None:
    r = new_record(schedule(), T0 + timedelta(seconds=1))
    assert r.next_due == T0 + timedelta(minutes=1)
    assert advance(r, T0 + timedelta(seconds=59), running=False).outbox == []
    moved = advance(r, T0 + timedelta(minutes=1), running=False)
    assert fired(moved) == [f"start:{rid(1)}"]
    assert moved.cursor == T0 + timedelta(minutes=1)
    assert moved.next_due == T0 + timedelta(minutes=2)
    assert moved.last_run == rid(1) == "nightly-20260601T120100Z"


def test_advance_is_deterministic_and_does_not_change_its_input() -> None:
    r = new_record(schedule(Overlap.BUFFER_ALL), T0)
    a = advance(r, T0 + timedelta(minutes=3), running=True)
    b = advance(r, T0 + timedelta(minutes=3), running=True)
    assert a == b
    assert r.outbox == [] and r.cursor == T0


def three_due(overlap: Overlap, *, running: bool = False) -> ScheduleRecord:
    """Three fire times due at once (as after a short outage)."""
    r = new_record(schedule(overlap, catchup_window=600), T0)
    return advance(r, T0 + timedelta(minutes=3), running=running)


def outcomes(record: ScheduleRecord) -> list[tuple[str, RunOutcome]]:
    return sorted((run.workflow_id, run.outcome) for run in record.recent)


def test_skip_starts_the_first_and_skips_the_rest() -> None:
    r = three_due(Overlap.SKIP)
    assert fired(r) == [f"start:{rid(1)}"]
    assert outcomes(r) == [(rid(1), RunOutcome.STARTED), (rid(2), RunOutcome.SKIPPED),
                           (rid(3), RunOutcome.SKIPPED)]


def test_buffer_one_keeps_one_for_after_the_run() -> None:
    r = three_due(Overlap.BUFFER_ONE)
    assert fired(r) == [f"start:{rid(1)}"]
    assert r.buffered == [T0 + timedelta(minutes=2)]
    assert r.next_due is not None and r.next_due <= T0 + timedelta(minutes=3, seconds=1)
    r.outbox = []
    later = T0 + timedelta(minutes=3, seconds=5)
    assert advance(r, later, running=True).outbox == []  # still going: wait
    after = advance(r, later, running=False)
    assert fired(after) == [f"start:{rid(2)}"] and after.buffered == []


def test_buffer_all_runs_each_in_turn() -> None:
    r = three_due(Overlap.BUFFER_ALL)
    assert fired(r) == [f"start:{rid(1)}"]
    assert r.buffered == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)]
    r.outbox = []
    r = advance(r, T0 + timedelta(minutes=3, seconds=5), running=False)
    assert fired(r) == [f"start:{rid(2)}"] and len(r.buffered) == 1


def test_cancel_other_stops_the_running_one_and_waits_for_it() -> None:
    r = new_record(schedule(Overlap.CANCEL_OTHER), T0)
    r = advance(r, T0 + timedelta(minutes=1), running=False)
    r.outbox = []
    r = advance(r, T0 + timedelta(minutes=2), running=True)
    assert fired(r) == [f"stop:{rid(1)}"]
    assert r.buffered == [T0 + timedelta(minutes=2)]
    r.outbox = []
    r = advance(r, T0 + timedelta(minutes=2, seconds=1), running=False)
    assert fired(r) == [f"start:{rid(2)}"]


def test_terminate_other_stops_the_running_one_and_starts_at_once() -> None:
    r = three_due(Overlap.TERMINATE_OTHER)
    assert fired(r) == [f"start:{rid(1)}", f"stop:{rid(1)}", f"start:{rid(2)}",
                        f"stop:{rid(2)}", f"start:{rid(3)}"]
    # Each stop says when its run was decided: not found that soon, it may be landing.
    assert [e.since for e in r.outbox if isinstance(e, StopRun)] == [
        T0 + timedelta(minutes=3)] * 2


def test_a_stop_says_when_its_run_was_decided() -> None:
    r = new_record(schedule(Overlap.CANCEL_OTHER), T0)
    r = advance(r, T0 + timedelta(minutes=1, seconds=7), running=False)
    r.outbox = []
    r = advance(r, T0 + timedelta(minutes=2), running=True)
    assert r.outbox == [StopRun(workflow_id=rid(1), since=T0 + timedelta(minutes=1,
                                                                         seconds=7))]


def test_allow_all_starts_every_one() -> None:
    r = three_due(Overlap.ALLOW_ALL, running=True)
    assert fired(r) == [f"start:{rid(m)}" for m in (1, 2, 3)]


def test_catchup_runs_what_is_inside_the_window_and_counts_the_rest_missed() -> None:
    r = new_record(schedule(Overlap.ALLOW_ALL, catchup_window=150), T0)
    r = advance(r, T0 + timedelta(minutes=10), running=False)
    # Fire times 1..10 minutes: those older than 150 s (1..7) are missed; 8, 9, 10 run.
    assert fired(r) == [f"start:{rid(m)}" for m in (8, 9, 10)]
    assert r.missed == 7
    assert {run.workflow_id for run in r.recent if run.outcome is RunOutcome.MISSED} == {
        rid(m) for m in range(1, 8)}


def test_triggered_and_backfilled_fire_times_go_through_the_policy() -> None:
    r = new_record(schedule(Overlap.SKIP), T0)
    r.pending = [Pending(fire_time=T0 - timedelta(minutes=m), reason="backfill")
                 for m in (3, 2)]
    r = advance(r, T0 + timedelta(seconds=5), running=False)
    assert fired(r) == [f"start:{rid(-3)}"]
    assert outcomes(r) == [(rid(-3), RunOutcome.STARTED), (rid(-2), RunOutcome.SKIPPED)]
    assert r.pending == []


def test_a_paused_schedule_fires_nothing() -> None:
    r = new_record(schedule(paused=True), T0)
    assert r.next_due is None
    moved = advance(r, T0 + timedelta(hours=1), running=False)
    assert moved.outbox == [] and moved.next_due is None


def test_jitter_is_the_same_for_a_fire_time_wherever_it_is_computed() -> None:
    r = new_record(schedule(spec={"every": 60, "jitter": 30}), T0)
    t = T0 + timedelta(minutes=1)
    delay = jitter_of(r.key, t, 30)
    assert 0 <= delay < 30 and delay == jitter_of(r.key, t, 30)
    assert len({jitter_of(r.key, T0 + timedelta(minutes=m), 30) for m in range(20)}) > 10
    assert r.next_due == due_of(r, t) == t + timedelta(seconds=delay)
    assert advance(r, due_of(r, t) - timedelta(milliseconds=1), running=False).outbox == []
    assert [type(e) for e in advance(r, due_of(r, t), running=False).outbox] == [StartRun]


def test_run_ids_name_the_namespace_outside_the_default_one() -> None:
    assert run_id("default", "s", T0) == "s-20260601T120000Z"
    assert run_id("team-a", "s", T0) == "team-a-s-20260601T120000Z"
