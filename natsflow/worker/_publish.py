"""What the worker stores in JetStream: results, progress and dead letters."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

from nats.aio.client import DEFAULT_MAX_PAYLOAD_SIZE
from pydantic import ValidationError

from contracts.dead_letters import dead_letter
from contracts.errors import ErrorInfo
from contracts.headers import MSG_ID
from contracts.messages import TaskFailed, TaskMessage, TaskProgress, TaskSucceeded
from contracts.subjects import Subjects
from transport.transient import ConditionLog, describe, is_transient

from ._settle import DeliveredMessage

__all__ = [
    "Publisher",
    "malformed_task_info",
    "publish_dead_letter",
    "publish_progress",
    "publish_result",
    "result_msg_id",
    "result_payload",
]

log = logging.getLogger("natsflow.worker")
#: Transient faults (NATS away): one line per condition with a count, not one per task.
_conditions = ConditionLog(log)


class Publisher(Protocol):
    """JetStream publishing that waits for the stream's ack (``JetStreamContext`` fits)."""

    async def publish(self, subject: str, payload: bytes = b"", *,
                      headers: dict[str, Any] | None = None) -> Any: ...


def result_payload(result: TaskSucceeded | TaskFailed) -> bytes:
    """The JSON of ``result``; output that is not JSON becomes an ``invalid-output`` failure."""
    try:
        return result.model_dump_json().encode()
    except Exception as exc:  # pydantic raises several types for unserializable values
        failed = TaskFailed(workflow_id=result.workflow_id, step_id=result.step_id,
                            attempt=result.attempt, started_at=result.started_at,
                            token=result.token,
                            error=ErrorInfo(code="invalid-output", retryable=False,
                                            message=f"output is not JSON-serializable: {exc}"))
        return failed.model_dump_json().encode()


async def publish_result(js: Publisher, task: TaskMessage,
                         result: TaskSucceeded | TaskFailed, *,
                         trace: dict[str, str] | None = None) -> bool:
    """Store ``result`` at ``task.reply_to``, deduplicated per attempt; True once acked.

    ``trace``: trace context headers to send with it. The report answers ``task``: it
    carries the task's ``token``, without which the orchestrator refuses it.
    """
    result = _answering(task, result)
    try:
        await js.publish(task.reply_to, result_payload(result),
                         headers={**(trace or {}), MSG_ID: result_msg_id(task)})
    except Exception as exc:
        _failed("publish results", exc, "could not publish result of %s",
                task.idempotency_key)
        return False
    return True


def _failed(what: str, exc: Exception, msg: str, *args: Any) -> None:
    """Log a failed publication: a transient one once per condition, others in full."""
    if is_transient(exc):
        _conditions(f"could not {what} ({type(exc).__name__})", msg + ": %s", *args,
                    describe(exc))
    else:
        log.warning(msg, *args, exc_info=exc)


async def publish_progress(js: Publisher, task: TaskMessage, progress: TaskProgress, *,
                           trace: dict[str, str] | None = None) -> None:
    """Store a progress report; progress is best effort, so failures are only logged."""
    progress = _answering(task, progress)
    try:
        await js.publish(task.reply_to, progress.model_dump_json().encode(),
                         headers=trace or None)
    except Exception as exc:
        _failed("publish progress", exc, "could not publish progress of %s",
                task.idempotency_key)


R = TypeVar("R", bound=TaskSucceeded | TaskFailed | TaskProgress)


def result_msg_id(task: TaskMessage) -> str:
    """The ``Nats-Msg-Id`` of the result of ``task``: the same for every redelivery of
    the attempt, and with its token in it, so that nobody who lacks the token can have
    JetStream drop the real result as the duplicate of a forged one."""
    if task.token is None:
        return f"{task.idempotency_key}:result"
    return f"{task.idempotency_key}:result:{task.token}"


def _answering(task: TaskMessage, report: R) -> R:
    """``report`` as an answer to ``task``: its attempt, and the token that proves it
    (taken from the task message the orchestrator sent, never from anything else)."""
    if (report.workflow_id, report.step_id, report.attempt, report.token) == (
            task.workflow_id, task.step_id, task.attempt, task.token):
        return report
    return cast(R, report.model_copy(update={
        "workflow_id": task.workflow_id, "step_id": task.step_id, "attempt": task.attempt,
        "token": task.token}))


def malformed_task_info(exc: ValidationError | ValueError) -> ErrorInfo:
    """Why a delivery is not a usable :class:`~contracts.messages.TaskMessage`."""
    return ErrorInfo(code="malformed-task", message=f"not a valid TaskMessage: {exc}",
                     retryable=False)


async def publish_dead_letter(js: Publisher, subjects: Subjects, msg: DeliveredMessage,
                              reason: ErrorInfo, *,
                              max_payload: int = DEFAULT_MAX_PAYLOAD_SIZE) -> bool:
    """Store ``msg`` as a dead letter under ``reason.code``; True once acked.

    ``max_payload``: the server's limit, which the letter is kept within (see
    :mod:`contracts.dead_letters`).
    """
    payload, headers = dead_letter(msg, reason, time=datetime.now(UTC), max_payload=max_payload)
    try:
        await js.publish(subjects.dlq(reason.code), payload, headers=headers or None)
    except Exception as exc:
        _failed("store dead letters", exc, "could not dead-letter message on %s", msg.subject)
        return False
    return True
