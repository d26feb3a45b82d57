"""What every worker flavour shares once its messages arrive.

``natsflow.worker`` fetches tasks with its own loops; ``natsflow.faststream`` lets
FastStream's subscribers fetch them. Both register handlers with the same checks, declare
the same streams and consumers, run each delivery through :func:`execute_delivery` and
obey cancel notices, through one :class:`TaskServing`; only the fetching differs.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contracts.builtins import RESERVED_TASK_PREFIX, is_reserved_task
from contracts.messages import CancelNotice
from contracts.priorities import LEVELS
from contracts.subjects import TASK_TYPE_RE, Subjects
from transport.streams import Topology, ensure_consumer, ensure_stream

from ._execute import RunningAttempts, execute_delivery
from ._handler import TaskHandler
from ._publish import Publisher
from ._settle import DeliveredMessage

__all__ = ["MAX_TASK_DELIVERIES", "TaskServing", "check_limits", "check_new_task_type"]

log = logging.getLogger("natsflow.worker")

#: Deliveries of one task without a result before it is dead-lettered (a poison task).
MAX_TASK_DELIVERIES = 10


def check_limits(*, ack_wait: float, max_deliveries: int) -> None:
    """Refuse settings no worker can serve with.

    Raises:
        ValueError: one of them is out of range.
    """
    if ack_wait <= 0:
        raise ValueError("ack_wait must be positive")
    if max_deliveries < 1:
        raise ValueError("max_deliveries must be at least 1")


def check_new_task_type(task_type: str, registered: Container[str], *,
                        reserved_ok: bool = False) -> None:
    """Refuse a task type that cannot be registered next to ``registered``.

    Raises:
        ValueError: the task type is invalid, reserved (``natsflow.*``, natsflow's
            built-in steps, unless ``reserved_ok``) or already registered.
    """
    if not TASK_TYPE_RE.match(task_type):
        raise ValueError(f"invalid task type {task_type!r}")
    if is_reserved_task(task_type) and not reserved_ok:
        raise ValueError(f"task type {task_type!r} is reserved: task types starting with "
                         f"{RESERVED_TASK_PREFIX!r} are natsflow's built-in steps")
    if task_type in registered:
        raise ValueError(f"task type {task_type!r} is already registered")


@dataclass
class TaskServing:
    """The task types one worker serves, and the attempts it is running.

    Attributes:
        topology: The deployment's stream and consumer configs (its ``task_ack_wait``
            is the task consumers' ack wait).
        handlers: The handler of each task type served.
        max_deliveries: Deliveries of a task without a result before it is dead-lettered.
        running: The attempts running now, so cancel notices can reach them.
    """

    topology: Topology
    handlers: dict[str, TaskHandler] = field(default_factory=dict)
    max_deliveries: int = MAX_TASK_DELIVERIES
    running: RunningAttempts = field(default_factory=RunningAttempts)

    @property
    def subjects(self) -> Subjects:
        """The deployment's names."""
        return self.topology.subjects

    async def declare(self, js: Any) -> None:
        """Create the tasks and dead-letter streams if missing, and each task type's consumer.

        Streams are created if missing, never changed: the orchestrator owns their
        configs. The consumers are brought to this worker's configs and checked.

        Raises:
            contracts.errors.ConfigMismatch: a consumer cannot be made fit.
        """
        await ensure_stream(js, self.topology.tasks())
        # Malformed tasks are dead-lettered here; without the stream they would loop.
        await ensure_stream(js, self.topology.dlq())
        for task_type in self.handlers:
            for level in LEVELS:  # one consumer per priority level (docs/priorities.md)
                await ensure_consumer(js, self.subjects.tasks_stream,
                                      self.topology.worker_consumer(task_type, level),
                                      heartbeat=self.topology.task_ack_wait / 3)

    async def deliver(self, msg: DeliveredMessage, handler: TaskHandler, *, js: Publisher,
                      blobs: Any, max_payload: int) -> None:
        """Run one delivery end to end (see :func:`execute_delivery`).

        ``max_payload`` is the server's (``nc.max_payload``): a dead letter is cut to fit it.
        """
        await execute_delivery(msg, handler, js=js, blobs=blobs, subjects=self.subjects,
                               running=self.running, ack_wait=self.topology.task_ack_wait,
                               max_deliveries=self.max_deliveries, max_payload=max_payload)

    def obey_cancel(self, data: bytes, *, subject: str) -> None:
        """Cancel the attempt a cancel notice names, if it runs here; ignore bad notices."""
        try:
            notice = CancelNotice.model_validate_json(data)
        except ValidationError:
            log.warning("ignoring malformed cancel notice on %s", subject)
            return
        if self.running.cancel(notice):
            log.info("cancelled %s/%s attempt %d", notice.workflow_id, notice.step_id,
                     notice.attempt)
