"""What a running handler knows about its attempt, and how it talks back."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from contracts.messages import TaskMessage, TaskProgress
from transport.tracing import TraceContext, inject

from ._handler import to_json_value
from ._settle import DeliveredMessage

__all__ = ["TaskContext"]

_task_log = logging.getLogger("natsflow.worker.task")

ProgressSink = Callable[[TaskProgress], Awaitable[None]]


class TaskContext:
    """The first argument of every handler: one attempt of one step.

    Attributes:
        logger: A logger that tags records with the workflow, step and attempt.
    """

    def __init__(self, message: TaskMessage, *, started_at: datetime, delivery: DeliveredMessage,
                 progress_sink: ProgressSink, trace: TraceContext | None = None) -> None:
        self._message = message
        self._trace = trace
        self._started_at = started_at
        self._delivery = delivery
        self._progress_sink = progress_sink
        self._cancelled = False
        self.logger = logging.LoggerAdapter(_task_log, {
            "workflow_id": message.workflow_id, "step_id": message.step_id,
            "attempt": message.attempt,
        })

    @property
    def message(self) -> TaskMessage:
        """The task message as delivered."""
        return self._message

    @property
    def workflow_id(self) -> str:
        """The workflow this step belongs to."""
        return self._message.workflow_id

    @property
    def step_id(self) -> str:
        """The step being run."""
        return self._message.step_id

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the first retry, ..."""
        return self._message.attempt

    @property
    def task(self) -> str:
        """The task type."""
        return self._message.task

    @property
    def idempotency_key(self) -> str:
        """``<workflow_id>:<step_id>:<attempt>``, the same on every redelivery of this attempt.

        Pass it to external systems to make side effects happen at most once per attempt.
        """
        return self._message.idempotency_key

    @property
    def deadline(self) -> datetime | None:
        """When the orchestrator gives up on this attempt, if it ever does."""
        return self._message.deadline

    @property
    def started_at(self) -> datetime:
        """When this worker began the attempt."""
        return self._started_at

    @property
    def trace(self) -> TraceContext | None:
        """The W3C trace context the task message came with (its workflow's), if any."""
        return self._trace

    def trace_headers(self) -> dict[str, str]:
        """``traceparent``/``tracestate`` headers for the calls the handler makes.

        With tracing on, the context of the task's span; off, the task's own context.
        """
        return inject({}, self._trace)

    @property
    def cancelled(self) -> bool:
        """True once a cancel notice for this attempt has arrived."""
        return self._cancelled

    def mark_cancelled(self) -> None:
        """Record that this attempt was asked to stop (called by the worker)."""
        self._cancelled = True

    async def heartbeat(self) -> None:
        """Tell JetStream the task is still being worked on (resets its ack wait).

        The worker already does this every ``heartbeat_interval``; call it yourself only
        around long blocking stretches that starve the event loop.
        """
        try:
            await self._delivery.in_progress()
        except Exception:  # a missed heartbeat only risks a redelivery; keep working
            self.logger.warning("could not send heartbeat", exc_info=True)

    async def progress(self, data: Any) -> None:
        """Report progress: a heartbeat plus a ``progress`` result sent to the orchestrator.

        Args:
            data: Any JSON value, or a pydantic model.
        """
        await self.heartbeat()
        m = self._message
        await self._progress_sink(TaskProgress(
            workflow_id=m.workflow_id, step_id=m.step_id, attempt=m.attempt,
            started_at=self._started_at, progress=to_json_value(data)))
