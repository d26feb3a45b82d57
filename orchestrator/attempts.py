"""Which step attempts a published decision ended, read from its events (pure).

Metrics count them and traces draw them; both look at a decision only after it was
stored and published, so the engine never knows about either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from contracts.models import EventType, StepKind, StepStatus

from .records import Effect, EventEffect, WorkflowRecord

__all__ = ["ATTEMPT_OUTCOME", "EndedAttempt", "ended_attempts"]

#: The event that ends one attempt of a step, and the outcome it counts as.
ATTEMPT_OUTCOME: Final = {
    EventType.STEP_SUCCEEDED: "succeeded",
    EventType.STEP_FAILED: "failed",
    EventType.STEP_RETRYING: "retrying",
    EventType.STEP_CANCELLED: "cancelled",
}
_ATTEMPT_BEGUN: Final = frozenset({EventType.STEP_DISPATCHED, EventType.STEP_STARTED})


@dataclass(frozen=True, slots=True)
class EndedAttempt:
    """One attempt of a step that ended in a decision."""

    step_id: str
    attempt: int
    kind: StepKind
    task: str
    outcome: str
    begun: datetime | None  # dispatched (or started); None if no record says when
    ended: datetime
    error_code: str | None


def ended_attempts(before: WorkflowRecord | None, after: WorkflowRecord,
                   effects: Sequence[Effect]) -> Iterator[EndedAttempt]:
    """The attempts whose outcome events are among ``effects``, in event order.

    Args:
        before: The record before the decision (None if new): it says when an attempt
            that ends now was dispatched.
        after: The record the decision made: each step's kind and task.
        effects: The decision's effects; only status events are looked at.
    """
    if not any(isinstance(e, EventEffect) and e.event.type in ATTEMPT_OUTCOME
               for e in effects):
        return  # most decisions end no attempt: build nothing for them
    begun: dict[tuple[str, int], datetime] = {}
    if before is not None:
        # Attempts already under way: dispatched (or started) in an earlier decision.
        for step in before.status.steps:
            if step.attempts and (at := step.dispatched_at or step.started_at):
                begun[(step.id, step.attempts)] = at
    steps: dict[str, StepStatus] = {s.id: s for s in after.status.steps}
    for effect in effects:
        if not isinstance(effect, EventEffect):
            continue
        event = effect.event
        if event.step_id is None or event.attempt is None:
            continue
        key = (event.step_id, event.attempt)
        if event.type in _ATTEMPT_BEGUN:
            if event.type == EventType.STEP_DISPATCHED:
                begun[key] = event.time
            else:
                begun.setdefault(key, event.time)
        elif event.type in ATTEMPT_OUTCOME:
            status = steps.get(event.step_id)
            error = event.data.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            yield EndedAttempt(
                step_id=event.step_id, attempt=event.attempt,
                kind=status.kind if status is not None else StepKind.TASK,
                task=(status.task if status is not None else None) or "",
                outcome=ATTEMPT_OUTCOME[event.type], begun=begun.get(key), ended=event.time,
                error_code=code)
