"""The heartbeat check of the pure engine, at the edges the runtime produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.messages import TaskProgress
from contracts.models import StepState, WorkflowConfig
from orchestrator.engine import decide
from orchestrator.records import (
    CreateWorkflow,
    ResultInput,
    TimerEffect,
    TimerFired,
    WorkflowRecord,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = WorkflowConfig.model_validate({"name": "t", "id": "w", "steps": [
    {"id": "a", "task": "t", "heartbeat_timeout": 1, "retry": {"max_attempts": 2}}]})


def _heartbeat_timers(effects: list[object]) -> list[TimerFired]:
    return [e.timer for e in effects
            if isinstance(e, TimerEffect) and e.timer.purpose == "heartbeat"]


def test_a_heartbeat_timer_handled_a_moment_early_still_times_out_a_silent_attempt() -> None:
    created = decide(None, CreateWorkflow(config=CONFIG, fingerprint="f"), T0)
    assert created.record is not None
    (first,) = _heartbeat_timers(created.effects)
    alive_at = T0 + timedelta(milliseconds=6)
    started = decide(created.record, ResultInput(result=TaskProgress(
        workflow_id="w", step_id="a", attempt=1)), alive_at)
    assert started.record is not None
    # The first check finds the step alive and looks again one window after its sign.
    check = decide(started.record, first, first.due)
    assert check.record is not None
    (again,) = _heartbeat_timers(check.effects)
    assert again.due == alive_at + timedelta(seconds=1)
    # The runtime hands due timers over up to a few ms early; re-arming at the same due
    # time would be dropped as a duplicate by JetStream and the attempt never timed out.
    early = decide(check.record, again, again.due - timedelta(milliseconds=4))
    assert early.record is not None
    record: WorkflowRecord = early.record
    step = record.status.step("a")
    assert step.state == StepState.RETRYING
    assert step.error is not None and step.error.code == "heartbeat-timeout"
    assert _heartbeat_timers(early.effects) == []
