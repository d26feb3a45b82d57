"""What the engine reads off a step's config: conditions, inputs, outputs, time limits.

Pure functions of a step's config and the expression context (no transition, no I/O):
its ``when`` condition, the rendered input of a worker kind's task, the checks an output
must pass, the workflow's output, and the limits a worker kind's attempt runs under.
Expression failures come out as :class:`StepInputError`, which the transition
(:mod:`orchestrator.transition`) turns into a failed step.
"""

from __future__ import annotations

import json
from typing import Any

from contracts.blobs import is_blob_ref
from contracts.errors import ErrorInfo, NatsflowError, SchemaMismatch
from contracts.language.checks import builtin_input
from contracts.language.expr import evaluate, render
from contracts.language.schema import validate_instance
from contracts.models import (
    MAX_OUTPUTS_BYTES,
    MAX_STEP_OUTPUT_BYTES,
    HttpStep,
    PublishStep,
    RequestStep,
    StepConfig,
    StepState,
    StepStatus,
    TaskStep,
    WorkflowConfig,
)

__all__ = ["StepInputError", "check_output", "child_id", "condition", "evaluate_for",
           "compact_json", "heartbeat_timeout", "json_size", "schedule_to_start", "task_input",
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


def compact_json(value: Any) -> bytes:
    """``value`` as compact JSON (ASCII: as many bytes as :func:`json_size` says)."""
    return json.dumps(value, separators=(",", ":")).encode()


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
