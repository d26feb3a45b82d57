"""Status events: what happened to a workflow, one ``Event`` per change, in order."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)


class EventType(StrEnum):
    """What happened. The value is also the tail of the event's subject."""

    WORKFLOW_CREATED = "workflow.created"
    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_FAILED = "workflow.failed"
    WORKFLOW_STOPPING = "workflow.stopping"
    WORKFLOW_STOPPED = "workflow.stopped"
    STEP_DISPATCHED = "step.dispatched"
    STEP_STARTED = "step.started"
    STEP_PROGRESS = "step.progress"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_RETRYING = "step.retrying"
    STEP_CANCELLED = "step.cancelled"
    STEP_SKIPPED = "step.skipped"
    STEP_WAITING = "step.waiting"
    SIGNAL_RECEIVED = "signal.received"
    WORKFLOW_COMPENSATING = "workflow.compensating"
    WORKFLOW_PAUSED = "workflow.paused"
    WORKFLOW_RESUMED = "workflow.resumed"
    WORKFLOW_RETRIED = "workflow.retried"
    #: A dispatched attempt was not started by any worker within the orchestrator's grace
    #: period; ``data`` names the ``task`` type and the ``reason`` (no-consumer, no-worker,
    #: busy, unknown). The step's ``waiting_for_worker`` says so until a worker starts it.
    STEP_WAITING_FOR_WORKER = "step.waiting_for_worker"
    #: A run waits for a permit of a concurrency limit; ``data``: ``limit``, ``key``,
    #: ``position`` (1 = next).
    WORKFLOW_QUEUED = "workflow.queued"
    #: A queued run got its permits (``data.waited``: seconds); it starts now.
    WORKFLOW_DEQUEUED = "workflow.dequeued"
    #: An attempt waits for a permit (``data``: ``limit``, ``key``, ``position``) or for
    #: its rate limit (``data.run_at``: when it may begin).
    STEP_THROTTLED = "step.throttled"
    #: A throttled attempt got its permits (``data.waited``: seconds); it begins now.
    STEP_UNTHROTTLED = "step.unthrottled"


EVENT_TERMINAL: Final[frozenset[EventType]] = frozenset(
    {EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED, EventType.WORKFLOW_STOPPED}
)


class Event(BaseModel):
    """A status event. ``seq`` is per workflow, starts at 1 and has no gaps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    seq: int = Field(ge=1)
    type: EventType
    time: datetime
    step_id: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)
