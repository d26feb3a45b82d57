"""How each step kind begins an attempt, and the expression work around steps.

Pure helpers of the engine (:mod:`orchestrator.engine`): no I/O, no clock. Worker kinds
(``task`` and the built-in ``request``/``http``/``publish``) become task messages; the
others wait on a timer, a signal or a child workflow, or finish on the spot.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from contracts.blobs import is_blob_ref
from contracts.checks import builtin_input, parse_duration, parse_until
from contracts.errors import ErrorInfo, NatsflowError, SchemaMismatch
from contracts.expr import evaluate, render
from contracts.messages import TaskMessage
from contracts.models import (
    MAX_OUTPUTS_BYTES,
    MAX_STEP_OUTPUT_BYTES,
    HttpStep,
    MapStep,
    ParentRef,
    PublishStep,
    RequestStep,
    SleepStep,
    StepConfig,
    StepState,
    StepStatus,
    SwitchStep,
    TaskStep,
    TransformStep,
    WaitStep,
    WorkflowConfig,
    WorkflowStep,
)
from contracts.models import EventType as Ev
from contracts.schema import validate_instance

from .records import StartChildEffect, TaskEffect

if TYPE_CHECKING:
    from .engine import _Tx

__all__ = ["StepInputError", "begin", "check_output", "child_id", "condition",
           "evaluate_for", "heartbeat_timeout", "json_size", "schedule_to_start", "task_input",
           "workflow_output"]


class StepInputError(Exception):
    """A step cannot begin (or end) as configured; ``error`` says why."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


def evaluate_for(step: str, where: str, fn: Any, *args: Any) -> Any:
    """``fn(*args, field=where)`` (evaluate or render), failures as StepInputError."""
    return _eval(fn, step, where, *args)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON."""
    return len(json.dumps(value, separators=(",", ":")))


def _eval(fn: Any, step: str, where: str, *args: Any) -> Any:
    try:
        return fn(*args, field=where)
    except NatsflowError as exc:
        info = exc.info()
        raise StepInputError(info.model_copy(update={
            "code": "expression-error" if info.code == "expression-error" else "input-error",
            "step": step, "retryable": False})) from None


def condition(cfg: StepConfig, ctx: dict[str, Any]) -> bool:
    """The step's ``when``: must be a boolean."""
    assert cfg.when is not None
    value = _eval(evaluate, cfg.id, "when", cfg.when, ctx)
    if not isinstance(value, bool):
        raise StepInputError(ErrorInfo(
            code="expression-error", step=cfg.id, field="when",
            message=f"condition {cfg.when!r} gave {type(value).__name__} {value!r}, "
                    "not a boolean"))
    return value


def heartbeat_timeout(cfg: StepConfig) -> float | None:
    return cfg.heartbeat_timeout if isinstance(cfg, TaskStep) else None


def schedule_to_start(cfg: StepConfig) -> float | None:
    """Seconds an attempt of a worker kind may wait for a worker (None: no limit)."""
    if isinstance(cfg, TaskStep | RequestStep | HttpStep | PublishStep):
        return cfg.schedule_to_start
    return None


def child_id(workflow_id: str, step_id: str, attempt: int) -> str:
    """The id of the child workflow a workflow step starts (stable per attempt)."""
    return f"{workflow_id}-{step_id}-{attempt}"[:128]


def task_input(cfg: StepConfig, ctx: dict[str, Any],
               override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rendered input of a worker-kind step's task message (``override``: a retry's)."""
    def r(name: str, value: Any) -> Any:
        return _eval(render, cfg.id, name, value, ctx)

    if isinstance(cfg, TaskStep):
        out = r("input", cfg.input if override is None else override)
        assert isinstance(out, dict)
        return out
    assert isinstance(cfg, RequestStep | HttpStep | PublishStep)
    return builtin_input(cfg, r)


def begin(tx: _Tx, cfg: StepConfig, step: StepStatus) -> None:
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
            start_by=start_by, report_start_at=report_at, token=step.token)))
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
        tx.succeed(cfg, step, _eval(render, cfg.id, "output", cfg.output, tx.context()))
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
        from .fanout import begin_map  # fanout builds on this module
        begin_map(tx, cfg, step)
    else:
        assert isinstance(cfg, WorkflowStep)
        inp = _eval(render, cfg.id, "input", cfg.input, tx.context())
        cid = child_id(wid, cfg.id, attempt)
        step.state = StepState.WAITING
        step.child_id = cid
        tx.effects.append(StartChildEffect(
            child_id=cid, definition=cfg.definition, version=cfg.version, input=inp,
            parent=ParentRef(workflow_id=wid, step_id=cfg.id, attempt=attempt),
            namespace=tx.status.namespace))
        tx.emit(Ev.STEP_WAITING, step=cfg.id, attempt=attempt,
                data={"child": cid, "definition": cfg.definition})


def _switch(tx: _Tx, cfg: SwitchStep, step: StepStatus) -> None:
    value = _eval(evaluate, cfg.id, "value", cfg.value, tx.context())
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
    value = _eval(render, cfg.id, field, getattr(cfg, field), ctx)
    try:
        if cfg.until is not None:
            return parse_until(value)
        return now + timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise StepInputError(ErrorInfo(code="input-error", step=cfg.id, field=field,
                                       message=str(exc))) from None


def check_output(cfg: StepConfig, output: Any, used: int) -> int:
    """The output's size in bytes, if it fits the limits and the step's schema."""
    if cfg.output_schema is not None and not is_blob_ref(output):
        try:
            validate_instance(output, cfg.output_schema, field="output")
        except SchemaMismatch as exc:
            raise StepInputError(exc.info().model_copy(update={"step": cfg.id})) from None
    size = json_size(output)
    if size > MAX_STEP_OUTPUT_BYTES or used + size > MAX_OUTPUTS_BYTES:
        limit = MAX_STEP_OUTPUT_BYTES if size > MAX_STEP_OUTPUT_BYTES else MAX_OUTPUTS_BYTES - used
        raise StepInputError(ErrorInfo(
            code="output-too-large", step=cfg.id,
            message=f"output of {size} bytes is over the limit of {limit} bytes"))
    return size


def workflow_output(config: WorkflowConfig, ctx: dict[str, Any],
                    steps: list[StepStatus]) -> Any:
    """The workflow's output: its ``output`` template, or the leaves' outputs by id."""
    if config.output is not None:
        return _eval(render, "", "output", config.output, ctx)
    needed = {d for s in config.steps for d in s.depends_on}
    return {s.id: s.output for s in steps
            if s.state == StepState.SUCCEEDED and s.id not in needed and not s.compensates}
