"""The orchestrator's spans, drawn after the fact from a published decision.

The engine stays pure: it keeps the workflow's trace context in the record, and the
shell, once a decision is stored and published, emits a span per step attempt that
ended (from its dispatch to its outcome) and one for the workflow when it ends, each
a child of the workflow's context. No-ops unless tracing is enabled.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.models import EVENT_TERMINAL
from transport import tracing

from .attempts import ended_attempts
from .records import Effect, EventEffect, WorkflowRecord

__all__ = ["emit_decision_spans"]


def emit_decision_spans(before: WorkflowRecord | None, after: WorkflowRecord,
                        effects: Sequence[Effect]) -> None:
    """Emit the spans of attempts (and the workflow) that ``effects`` ended."""
    if not tracing.enabled():
        return
    status = after.status
    for ended in ended_attempts(before, after, effects):
        tracing.record_span(
            f"natsflow.step {ended.step_id}", after.trace,
            start=ended.begun or ended.ended, end=ended.ended,
            attributes={"natsflow.workflow.id": status.id, "natsflow.step.id": ended.step_id,
                        "natsflow.step.kind": ended.kind.value,
                        "natsflow.task": ended.task, "natsflow.attempt": ended.attempt,
                        "natsflow.outcome": ended.outcome},
            error=(ended.error_code or ended.outcome) if ended.outcome == "failed" else None)
    for effect in effects:
        if isinstance(effect, EventEffect) and effect.event.type in EVENT_TERMINAL:
            tracing.record_span(
                f"natsflow.workflow {status.name}", after.trace,
                start=status.started_at or status.created_at, end=effect.event.time,
                attributes={"natsflow.workflow.id": status.id,
                            "natsflow.workflow.name": status.name,
                            "natsflow.outcome": status.state.value},
                error=status.error.code if status.error is not None else None)
