"""Pause, resume, retry and rerun in the pure engine."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_engine import T0, config, events, fail, ok, run

from contracts.models import StepState, WorkflowState
from orchestrator.engine import decide
from orchestrator.records import (
    CreateWorkflow,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    StopWorkflow,
    TaskEffect,
    TimerEffect,
    TimerFired,
)


def tasks(eff: list[Any]) -> list[tuple[str, int]]:
    return [(e.task.step_id, e.task.attempt) for e in eff if isinstance(e, TaskEffect)]


CHAIN = [{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"]},
         {"id": "c", "task": "t", "depends_on": ["b"]}]


def test_a_paused_workflow_keeps_results_but_starts_nothing_until_resumed() -> None:
    cfg = config(CHAIN)
    rec, eff = run(cfg, [PauseWorkflow(), ok("a", output=1)])
    assert rec.status.state == WorkflowState.PAUSED
    assert rec.status.step("a").state == StepState.SUCCEEDED
    assert tasks(eff) == [("a", 1)]
    rec2, eff2 = run(cfg, [PauseWorkflow(), ok("a", output=1), ResumeWorkflow()])
    assert rec2.status.state == WorkflowState.RUNNING and tasks(eff2)[-1] == ("b", 1)
    evs = events(eff2)
    assert evs.index("workflow.paused") < evs.index("workflow.resumed")
    assert evs[-2:] == ["workflow.resumed", "step.dispatched"]


def test_timers_that_come_due_while_paused_fire_on_resume() -> None:
    cfg = config([{"id": "nap", "kind": "sleep", "duration": 60},
                  {"id": "b", "task": "t", "depends_on": ["nap"]}])
    _rec, eff = run(cfg, [])
    (timer,) = [e.timer for e in eff if isinstance(e, TimerEffect)]
    rec, eff2 = run(cfg, [PauseWorkflow(), timer])
    assert rec.status.step("nap").state == StepState.WAITING
    assert len(rec.status.deferred_timers) == 1 and not tasks(eff2)
    rec2, eff3 = run(cfg, [PauseWorkflow(), timer, ResumeWorkflow()])
    assert rec2.status.step("nap").state == StepState.SUCCEEDED
    assert rec2.status.deferred_timers == [] and tasks(eff3) == [("b", 1)]


def test_pause_and_resume_are_refused_in_the_wrong_state() -> None:
    cfg = config(CHAIN)
    rec, _ = run(cfg, [])
    resume = decide(rec, ResumeWorkflow(), T0)
    assert resume.record is None and resume.reply.error is None  # running: a no-op
    done, _ = run(config([{"id": "a", "task": "t"}]), [ok("a")])
    refused = decide(done, PauseWorkflow(), T0)
    assert refused.reply.error is not None and refused.reply.error.code == "invalid-state"
    assert "completed" in refused.reply.error.message
    missing = decide(None, PauseWorkflow(), T0)
    assert missing.reply.error is not None
    assert missing.reply.error.code == "workflow-not-found"
    stopped, _ = run(cfg, [PauseWorkflow(), StopWorkflow(), fail("a", retryable=False)])
    assert stopped.status.state == WorkflowState.STOPPED


def test_a_failure_while_paused_fails_fast_on_resume() -> None:
    cfg = config([{"id": "a", "task": "t"}, {"id": "b", "task": "t"}])
    rec, _ = run(cfg, [PauseWorkflow(), fail("a", retryable=False)])
    assert rec.status.state == WorkflowState.PAUSED
    rec2, eff = run(cfg, [PauseWorkflow(), fail("a", retryable=False), ResumeWorkflow()])
    assert rec2.status.state == WorkflowState.FAILED
    assert rec2.status.step("b").state == StepState.CANCELLED
    assert events(eff).count("workflow.failed") == 1


def test_retry_runs_the_failed_steps_again_keeping_outputs_with_fresh_attempts() -> None:
    cfg = config([{"id": "a", "task": "t"},
                  {"id": "b", "task": "t", "depends_on": ["a"], "input": {"x": 1},
                   "retry": {"max_attempts": 2, "initial_interval": 0}},
                  {"id": "c", "task": "t", "depends_on": ["b"]}])
    history = [ok("a", output="A"), fail("b"), fail("b", attempt=2)]
    rec, _ = run(cfg, history)
    assert rec.status.state == WorkflowState.FAILED
    retry = RetryWorkflow(inputs={"b": {"x": 2}})
    rec2, eff = run(cfg, [*history, retry])
    assert rec2.status.state == WorkflowState.RUNNING and rec2.status.runs == 2
    assert rec2.status.step("a").output == "A"
    b = rec2.status.step("b")
    assert (b.state, b.attempts, b.attempt_base) == (StepState.DISPATCHED, 3, 2)
    sent = [e.task for e in eff if isinstance(e, TaskEffect)]
    assert sent[-1].input == {"x": 2} and sent[-1].idempotency_key == "w:b:3"
    assert "workflow.retried" in events(eff)
    # The retried step has its own budget of attempts: one retryable failure is retried.
    rec3, _ = run(cfg, [*history, retry, fail("b", attempt=3), ok("b", attempt=4),
                        ok("c")])
    assert rec3.status.state == WorkflowState.COMPLETED
    assert events(eff).count("workflow.failed") == 1


def test_retry_is_refused_unless_failed_or_stopped_and_not_compensated() -> None:
    cfg = config(CHAIN)
    rec, _ = run(cfg, [])
    refused = decide(rec, RetryWorkflow(), T0)
    assert refused.reply.error is not None and refused.reply.error.code == "invalid-state"
    saga = config([{"id": "a", "task": "t", "compensate": "undo"},
                   {"id": "b", "task": "t", "depends_on": ["a"]}, {"id": "undo", "task": "t"}])
    done, _ = run(saga, [ok("a"), fail("b", retryable=False), ok("undo")])
    assert done.status.state == WorkflowState.FAILED
    compensated = decide(done, RetryWorkflow(), T0)
    assert compensated.reply.error is not None
    assert "compensated" in compensated.reply.error.message
    failed, _ = run(cfg, [fail("a", retryable=False)])
    unknown = decide(failed, RetryWorkflow(inputs={"zz": {}}), T0)
    assert unknown.reply.error is not None and unknown.reply.error.field == "inputs.zz"


def test_an_old_timer_does_not_touch_the_retried_run() -> None:
    cfg = config([{"id": "a", "task": "t", "timeout": 30}], timeout=100)
    _rec, eff = run(cfg, [])
    old = [e.timer for e in eff if isinstance(e, TimerEffect)]
    rec, _ = run(cfg, [fail("a", retryable=False), RetryWorkflow(), *old])
    assert rec.status.state == WorkflowState.RUNNING
    assert rec.status.step("a").state == StepState.DISPATCHED


def test_a_rerun_reuses_the_given_outputs_and_runs_the_rest() -> None:
    cfg = config(CHAIN)
    d = decide(None, CreateWorkflow(config=cfg, fingerprint="f", reuse={"a": "A"},
                                    rerun_of="old"), T0)
    rec = d.record
    assert rec is not None and rec.status.rerun_of == "old"
    a = rec.status.step("a")
    assert (a.state, a.output, a.reused_from) == (StepState.SUCCEEDED, "A", "old")
    assert tasks(d.effects) == [("b", 1)]
    assert decide(rec, TimerFired(workflow_id="w", purpose="retry", step_id="b", attempt=9,
                                  due=T0), T0 + timedelta(seconds=1)).record is None
