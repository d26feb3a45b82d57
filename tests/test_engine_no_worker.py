"""A task nobody takes, in the pure engine: schedule_to_start and the worker-grace marker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from test_engine import T0, config, events, fail, ok

from contracts.errors import InvalidGraph
from contracts.messages import TaskProgress
from contracts.models import EventType, StepState, WorkerWaitReason, WorkflowState
from orchestrator.engine import EngineSettings, decide
from orchestrator.records import (
    CancelEffect,
    CreateWorkflow,
    EventEffect,
    PauseWorkflow,
    ResultInput,
    ResumeWorkflow,
    RetryWorkflow,
    StopWorkflow,
    TaskEffect,
    TimerEffect,
    TimerFired,
    WorkflowInput,
    WorkflowRecord,
)
from orchestrator.workers import (
    ConsumerView,
    subject_matches,
    tasks_without_worker,
    worker_presence,
)

GRACE = EngineSettings(worker_grace=5.0)


def play(cfg: Any, steps: list[tuple[float, WorkflowInput]], *,
         settings: EngineSettings | None = None) -> tuple[WorkflowRecord, list[Any]]:
    """Create at T0, then apply each input at T0 + its seconds; all effects."""
    d = decide(None, CreateWorkflow(config=cfg, fingerprint="f"), T0, settings)
    assert d.record is not None
    record, effects = d.record, list(d.effects)
    for at, inp in steps:
        d = decide(record, inp, T0 + timedelta(seconds=at), settings)
        if d.record is not None:
            record = d.record
            effects.extend(d.effects)
    return record, effects


def timers(eff: list[Any], purpose: str) -> list[TimerFired]:
    return [e.timer for e in eff if isinstance(e, TimerEffect) and e.timer.purpose == purpose]


def started(step: str = "a", attempt: int = 1) -> ResultInput:
    return ResultInput(result=TaskProgress(workflow_id="w", step_id=step, attempt=attempt))


def waiting_events(eff: list[Any]) -> list[Any]:
    return [e.event for e in eff if isinstance(e, EventEffect)
            and e.event.type == EventType.STEP_WAITING_FOR_WORKER]


# -- schedule_to_start ------------------------------------------------------------------


def test_schedule_to_start_fails_a_queued_attempt_and_the_retry_policy_applies() -> None:
    cfg = config([{"id": "a", "task": "nobody.serves", "schedule_to_start": 10,
                   "retry": {"max_attempts": 2, "initial_interval": 0}}])
    _rec, eff = play(cfg, [])
    (task,) = [e.task for e in eff if isinstance(e, TaskEffect)]
    assert task.start_by == T0 + timedelta(seconds=10)
    assert task.report_start_at == T0 + timedelta(seconds=5)  # half way to the look
    (first,) = timers(eff, "schedule-to-start")
    assert (first.due, first.attempt) == (T0 + timedelta(seconds=10), 1)

    rec, eff = play(cfg, [(10, first)])
    step = rec.status.step("a")
    assert (step.state, step.attempts) == (StepState.DISPATCHED, 2)  # retried at once
    assert step.error is not None and step.error.code == "schedule-to-start-timeout"
    assert step.error.retryable and "nobody.serves" in step.error.message
    assert step.error.details == {"task": "nobody.serves"}
    assert any(isinstance(e, CancelEffect) for e in eff)  # a worker taking it stops
    (second,) = [t for t in timers(eff, "schedule-to-start") if t.attempt == 2]
    assert second.due == T0 + timedelta(seconds=20)

    rec, _ = play(cfg, [(10, first), (20, second)])
    assert rec.status.state == WorkflowState.FAILED
    assert rec.status.error is not None
    assert rec.status.error.code == "schedule-to-start-timeout"


def test_schedule_to_start_spares_an_attempt_a_worker_started_and_stale_timers() -> None:
    cfg = config([{"id": "a", "task": "t", "schedule_to_start": 10,
                   "retry": {"max_attempts": 3, "initial_interval": 0}}])
    _rec, eff = play(cfg, [])
    (timer,) = timers(eff, "schedule-to-start")
    rec, _ = play(cfg, [(3, started()), (10, timer)])
    assert rec.status.step("a").state == StepState.RUNNING
    assert rec.status.step("a").error is None
    # The first attempt timed out; its timer coming again (a redelivery) ends nothing.
    rec, _ = play(cfg, [(10, timer), (10.5, timer)])
    assert rec.status.step("a").attempts == 2
    assert rec.status.step("a").state == StepState.DISPATCHED
    rec, _ = play(cfg, [(10, timer), (11, started(attempt=2)), (12, ok("a", attempt=2))])
    assert rec.status.state == WorkflowState.COMPLETED


def test_schedule_to_start_is_off_by_default_and_not_for_map_items_or_engine_kinds() -> None:
    _rec, eff = play(config([{"id": "a", "task": "t"}]), [])
    (task,) = [e.task for e in eff if isinstance(e, TaskEffect)]
    assert task.start_by is None and task.report_start_at is None
    assert not [e for e in eff if isinstance(e, TimerEffect)]
    with pytest.raises(InvalidGraph, match="schedule_to_start"):
        config([{"id": "m", "kind": "map", "items": "[1]",
                 "step": {"task": "t", "schedule_to_start": 5}}])
    with pytest.raises(ValueError, match="schedule_to_start"):
        config([{"id": "s", "kind": "sleep", "duration": 1, "schedule_to_start": 5}])
    for kind in ({"kind": "request", "subject": "svc.x"},
                 {"kind": "http", "url": "https://example.com"},
                 {"kind": "publish", "subject": "x.y"}):
        _rec, eff = play(config([{"id": "a", "schedule_to_start": 3, **kind}]), [])
        (task,) = [e.task for e in eff if isinstance(e, TaskEffect)]
        assert task.start_by == T0 + timedelta(seconds=3)


# -- the worker-grace marker ------------------------------------------------------------


def seeing(timer: TimerFired, *consumers: ConsumerView) -> TimerFired:
    """The timer as the shell hands it over: with the tasks stream's consumers."""
    return timer.model_copy(update={"consumers": list(consumers)})


def test_grace_marks_a_queued_step_with_its_task_and_the_start_clears_it() -> None:
    cfg = config([{"id": "a", "task": "nobody.serves"}])
    rec, eff = play(cfg, [], settings=GRACE)
    (grace,) = timers(eff, "worker-grace")
    assert (grace.due, grace.step_id, grace.attempt) == (T0 + timedelta(seconds=5), None, 1)
    assert rec.status.worker_check_at == grace.due
    (task,) = [e.task for e in eff if isinstance(e, TaskEffect)]
    assert task.report_start_at == T0 + timedelta(seconds=2.5)
    other = ConsumerView(filters=("natsflow.task.someone.else",), waiting=1, in_progress=0)
    seen = seeing(grace, other)

    rec, eff = play(cfg, [(5, seen)], settings=GRACE)
    step = rec.status.step("a")
    assert step.state == StepState.DISPATCHED  # still queued, now visibly so
    assert step.waiting_for_worker == WorkerWaitReason.NO_CONSUMER
    assert rec.status.worker_check_at is None
    assert len(timers(eff, "worker-grace")) == 1  # nothing younger: no next look
    (ev,) = waiting_events(eff)
    assert (ev.step_id, ev.attempt) == ("a", 1)
    assert ev.data["task"] == "nobody.serves" and ev.data["reason"] == "no-consumer"
    assert ev.data["waited"] == 5.0
    assert "no worker serves this task type" in ev.data["message"]

    # A redelivered timer says nothing twice; a worker starting it clears the marker.
    rec, eff = play(cfg, [(5, seen), (6, seen), (60, started()), (61, ok("a"))],
                    settings=GRACE)
    assert len(waiting_events(eff)) == 1
    assert rec.status.state == WorkflowState.COMPLETED
    assert rec.status.step("a").waiting_for_worker is None
    assert events(eff).index("step.waiting_for_worker") < events(eff).index("step.started")
    rec, _ = play(cfg, [(5, seen), (60, started())], settings=GRACE)
    assert rec.status.step("a").state == StepState.RUNNING
    assert rec.status.step("a").waiting_for_worker is None


def test_the_reason_follows_the_consumers_and_unknown_when_the_shell_could_not_look() -> None:
    cfg = config([{"id": "a", "task": "t"}])
    _rec, eff = play(cfg, [], settings=GRACE)
    (grace,) = timers(eff, "worker-grace")
    mine = ("natsflow.task.t",)
    for timer, reason in [
            (grace, WorkerWaitReason.UNKNOWN),
            (seeing(grace, ConsumerView(filters=mine, waiting=0, in_progress=0)),
             WorkerWaitReason.NO_WORKER),
            (seeing(grace, ConsumerView(filters=("natsflow.task.>",), waiting=0,
                                        in_progress=2)), WorkerWaitReason.BUSY)]:
        rec, eff = play(cfg, [(5, timer)], settings=GRACE)
        assert rec.status.step("a").waiting_for_worker == reason
        assert waiting_events(eff)[0].data["reason"] == reason.value
    rec, eff = play(cfg, [(1, started()), (5, grace)], settings=GRACE)
    assert rec.status.step("a").waiting_for_worker is None
    assert not waiting_events(eff)


def test_one_look_per_workflow_and_it_arms_the_next_for_younger_attempts() -> None:
    chain = config([{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"]},
                    {"id": "c", "task": "t", "depends_on": ["b"]}])
    rec, eff = play(chain, [(1, ok("a")), (2, ok("b")), (3, ok("c"))], settings=GRACE)
    assert rec.status.state == WorkflowState.COMPLETED
    (look,) = timers(eff, "worker-grace")  # three dispatches, one timer
    rec2, _ = play(chain, [(1, ok("a")), (2, ok("b")), (3, ok("c")), (5, seeing(look))],
                   settings=GRACE)
    assert rec2.status == rec.status  # a finished workflow ignores it

    cfg = config([{"id": "a", "task": "t", "retry": {"max_attempts": 2, "initial_interval": 0}},
                  {"id": "b", "task": "t"}])
    steps: list[tuple[float, WorkflowInput]] = [
        (2, fail("a"))]  # a goes again at t=2
    _rec, eff = play(cfg, steps, settings=GRACE)
    (first,) = timers(eff, "worker-grace")
    steps.append((5, seeing(first)))
    rec, eff = play(cfg, steps, settings=GRACE)
    assert rec.status.step("b").waiting_for_worker == WorkerWaitReason.NO_CONSUMER
    assert rec.status.step("a").waiting_for_worker is None  # queued 3 s only
    second = timers(eff, "worker-grace")[-1]
    assert second.due == T0 + timedelta(seconds=7) == rec.status.worker_check_at
    steps.append((7, seeing(second)))
    rec, eff = play(cfg, steps, settings=GRACE)
    assert rec.status.step("a").waiting_for_worker == WorkerWaitReason.NO_CONSUMER
    assert [e.step_id for e in waiting_events(eff)] == ["b", "a"]
    assert rec.status.worker_check_at is None


def test_a_new_attempt_a_timeout_or_a_stop_clears_the_marker() -> None:
    cfg = config([{"id": "a", "task": "t", "schedule_to_start": 30,
                   "retry": {"max_attempts": 2, "initial_interval": 0}}])
    _rec, eff = play(cfg, [], settings=GRACE)
    (grace,) = timers(eff, "worker-grace")
    (limit,) = timers(eff, "schedule-to-start")
    rec, eff = play(cfg, [(5, grace), (30, limit)], settings=GRACE)
    step = rec.status.step("a")
    assert (step.attempts, step.waiting_for_worker) == (2, None)
    dues = [t.due for t in timers(eff, "worker-grace")]
    assert dues == [T0 + timedelta(seconds=5), T0 + timedelta(seconds=35)]
    # The first look coming again marks nothing on the new attempt.
    rec, _ = play(cfg, [(5, grace), (30, limit), (31, grace)], settings=GRACE)
    assert rec.status.step("a").waiting_for_worker is None
    rec, eff = play(cfg, [(5, grace), (6, StopWorkflow())], settings=GRACE)
    assert rec.status.state == WorkflowState.STOPPING
    (stop_grace,) = timers(eff, "stop-grace")
    rec, _ = play(cfg, [(5, grace), (6, StopWorkflow()), (16, stop_grace)], settings=GRACE)
    assert rec.status.state == WorkflowState.STOPPED
    assert rec.status.step("a").state == StepState.CANCELLED
    assert rec.status.step("a").waiting_for_worker is None


def test_a_retried_workflow_looks_again_for_its_new_run() -> None:
    cfg = config([{"id": "a", "task": "t"}])
    stop_at = [(1.0, StopWorkflow())]
    _rec, eff = play(cfg, stop_at, settings=GRACE)
    (stop_grace,) = timers(eff, "stop-grace")
    steps: list[tuple[float, WorkflowInput]] = [*stop_at, (11, stop_grace),
                                                (12, RetryWorkflow())]
    rec, eff = play(cfg, steps, settings=GRACE)
    assert rec.status.state == WorkflowState.RUNNING and rec.status.runs == 2
    again = timers(eff, "worker-grace")[-1]
    assert (again.due, again.attempt) == (T0 + timedelta(seconds=17), 2)
    rec, _ = play(cfg, [*steps, (17, seeing(again))], settings=GRACE)
    assert rec.status.step("a").waiting_for_worker == WorkerWaitReason.NO_CONSUMER


def test_a_paused_workflow_holds_the_look_until_resumed() -> None:
    cfg = config([{"id": "a", "task": "t"}])
    _rec, eff = play(cfg, [], settings=GRACE)
    (grace,) = timers(eff, "worker-grace")
    seen = seeing(grace, ConsumerView(filters=(), waiting=3, in_progress=0))
    rec, eff = play(cfg, [(1, PauseWorkflow()), (5, seen)], settings=GRACE)
    assert rec.status.step("a").waiting_for_worker is None and not waiting_events(eff)
    rec, eff = play(cfg, [(1, PauseWorkflow()), (5, seen), (9, ResumeWorkflow())],
                    settings=GRACE)
    assert rec.status.step("a").waiting_for_worker == WorkerWaitReason.BUSY
    assert len(waiting_events(eff)) == 1


def test_without_a_grace_period_no_timer_is_armed() -> None:
    _rec, eff = play(config([{"id": "a", "task": "t"}]), [],
                     settings=EngineSettings(worker_grace=None))
    assert timers(eff, "worker-grace") == []


# -- what the shell sees of the consumers (pure) ----------------------------------------


def test_subject_matching_follows_nats_wildcards() -> None:
    assert subject_matches("p.task.email.send", "p.task.email.send")
    assert subject_matches("p.task.*.send", "p.task.email.send")
    assert subject_matches("p.task.>", "p.task.email.send")
    assert not subject_matches("p.task.>", "p.task")
    assert not subject_matches("p.task.email", "p.task.email.send")
    assert not subject_matches("p.task.email.send.x", "p.task.email.send")
    assert not subject_matches("p.task.*", "p.task.email.send")


def test_worker_presence_and_the_tasks_no_consumer_takes() -> None:
    subject = "p.task.email.send"
    idle = ConsumerView(filters=("p.task.email.send",), waiting=0, in_progress=0)
    pulling = ConsumerView(filters=("p.task.email.*",), waiting=1, in_progress=0)
    working = ConsumerView(filters=("p.task.>",), waiting=0, in_progress=3)
    other = ConsumerView(filters=("p.task.sms.send",), waiting=5, in_progress=5)
    assert worker_presence(None, subject) == WorkerWaitReason.UNKNOWN
    assert worker_presence([], subject) == WorkerWaitReason.NO_CONSUMER
    assert worker_presence([other], subject) == WorkerWaitReason.NO_CONSUMER
    assert worker_presence([other, idle], subject) == WorkerWaitReason.NO_WORKER
    assert worker_presence([idle, pulling], subject) == WorkerWaitReason.BUSY
    assert worker_presence([working], subject) == WorkerWaitReason.BUSY
    counts = {"p.task.email.send": 2, "p.task.sms.send": 4, "p.task.fax.send": 1,
              "p.task.pager": 0}
    assert tasks_without_worker(counts, [other], head="p.task.") == {
        "email.send": 2, "fax.send": 1}
    assert tasks_without_worker(counts, [other, working], head="p.task.") == {}
