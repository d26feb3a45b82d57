"""How each step kind begins an attempt.

Part of the engine, pure: no I/O, no clock. Builds on the transition
(:mod:`orchestrator.transition`) and on what a step's config says
(:mod:`orchestrator.steps`). Worker kinds (``task`` and the built-in
``request``/``http``/``publish``) become task messages; the others wait on a timer, a
signal or a child workflow, fan out (:mod:`orchestrator.fanout`), or finish on the spot.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from contracts.errors import ErrorInfo
from contracts.language.checks import parse_duration, parse_until
from contracts.language.expr import evaluate, render
from contracts.messages import TaskMessage
from contracts.models import EventType as Ev
from contracts.models import (
    MapStep,
    ParentRef,
    SleepStep,
    StepConfig,
    StepState,
    StepStatus,
    SwitchStep,
    TransformStep,
    WaitStep,
    WorkflowStep,
)

from .fanout import begin_map
from .records import StartChildEffect, TaskEffect
from .steps import (
    StepInputError,
    child_id,
    evaluate_for,
    heartbeat_timeout,
    schedule_to_start,
    task_input,
)
from .transition import Transition

__all__ = ["begin"]


def begin(tx: Transition, cfg: StepConfig, step: StepStatus) -> None:
    """Begin attempt ``step.attempts`` of a step (the attempt is already counted).

    Raises:
        StepInputError: an expression failed; the engine fails the step.
    """
    wid = tx.status.id
    attempt = step.attempts
    if cfg.task_type is not None:
        inp = task_input(cfg, tx.context(), step.input_override)
        step.state = StepState.DISPATCHED
        hb = heartbeat_timeout(cfg)
        deadline = tx.now + timedelta(seconds=cfg.timeout) if cfg.timeout else None
        to_start = schedule_to_start(cfg)
        grace = tx.settings.worker_grace
        start_by = tx.now + timedelta(seconds=to_start) if to_start else None
        # Whoever runs the attempt says so halfway to the first look at whether one does,
        # so a running attempt is neither failed nor marked as waiting for a worker.
        looks = [s for s in (to_start, grace) if s]
        report_at = tx.now + timedelta(seconds=min(looks) / 2) if looks else None
        tx.effects.append(TaskEffect(task=TaskMessage(
            workflow_id=wid, step_id=cfg.id, attempt=attempt, task=cfg.task_type,
            input=inp, idempotency_key=f"{wid}:{cfg.id}:{attempt}",
            reply_to=tx.settings.subjects.result(wid), deadline=deadline,
            heartbeat_interval=tx.settings.heartbeat, heartbeat_timeout=hb,
            start_by=start_by, report_start_at=report_at, token=step.token),
            priority=tx.config.priority))
        tx.emit(Ev.STEP_DISPATCHED, step=cfg.id, attempt=attempt,
                data={"task": cfg.task_type})
        if hb is not None:
            tx.timer("heartbeat", tx.now + timedelta(seconds=hb), step=cfg.id,
                     attempt=attempt)
        if start_by is not None:
            tx.timer("schedule-to-start", start_by, step=cfg.id, attempt=attempt)
        if grace:
            tx.arm_worker_check(tx.now + timedelta(seconds=grace))
    elif isinstance(cfg, TransformStep):
        tx.succeed(cfg, step, evaluate_for(cfg.id, "output", render, cfg.output, tx.context()))
    elif isinstance(cfg, SwitchStep):
        _switch(tx, cfg, step)
    elif isinstance(cfg, SleepStep):
        due = _wake_time(cfg, tx.context(), tx.now)
        if due <= tx.now:
            tx.succeed(cfg, step, {"slept_until": due.isoformat()})
            return
        step.state = StepState.WAITING
        step.wake_at = due
        tx.emit(Ev.STEP_WAITING, step=cfg.id, attempt=attempt,
                data={"until": due.isoformat()})
        tx.timer("sleep", due, step=cfg.id, attempt=attempt)
    elif isinstance(cfg, WaitStep):
        kept = tx.take_signal(cfg.signal)
        if kept is not None:
            tx.succeed(cfg, step, kept.payload)
            return
        step.state = StepState.WAITING
        tx.emit(Ev.STEP_WAITING, step=cfg.id, attempt=attempt, data={"signal": cfg.signal})
    elif isinstance(cfg, MapStep):
        begin_map(tx, cfg, step)
    else:
        assert isinstance(cfg, WorkflowStep)
        inp = evaluate_for(cfg.id, "input", render, cfg.input, tx.context())
        cid = child_id(wid, cfg.id, attempt)
        step.state = StepState.WAITING
        step.child_id = cid
        tx.effects.append(StartChildEffect(
            child_id=cid, definition=cfg.definition, version=cfg.version, input=inp,
            parent=ParentRef(workflow_id=wid, step_id=cfg.id, attempt=attempt),
            namespace=tx.status.namespace, priority=tx.config.priority))
        tx.emit(Ev.STEP_WAITING, step=cfg.id, attempt=attempt,
                data={"child": cid, "definition": cfg.definition})


def _switch(tx: Transition, cfg: SwitchStep, step: StepStatus) -> None:
    value = evaluate_for(cfg.id, "value", evaluate, cfg.value, tx.context())
    key = value if isinstance(value, str) else json.dumps(value)
    case = key if key in cfg.cases else "default"
    chosen = set(cfg.cases.get(key, cfg.default))
    tx.succeed(cfg, step, {"case": case, "value": value})
    for branch in [*cfg.cases.values(), cfg.default]:
        for sid in branch:
            other = tx.steps[sid]
            if sid not in chosen and other.state == StepState.PENDING:
                tx.skip(other, f"switch {cfg.id!r} chose {case!r}")


def _wake_time(cfg: SleepStep, ctx: dict[str, Any], now: datetime) -> datetime:
    field = "until" if cfg.until is not None else "duration"
    value = evaluate_for(cfg.id, field, render, getattr(cfg, field), ctx)
    try:
        if cfg.until is not None:
            return parse_until(value)
        return now + timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise StepInputError(ErrorInfo(code="input-error", step=cfg.id, field=field,
                                       message=str(exc))) from None
