"""Running one delivered task: parse, call the handler, heartbeat, report, settle."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import DEFAULT_MAX_PAYLOAD_SIZE
from pydantic import ValidationError

from contracts.blobs import find_blobs
from contracts.dead_letters import give_up_on_letter
from contracts.errors import ErrorInfo
from contracts.messages import (
    CancelNotice,
    TaskFailed,
    TaskMessage,
    TaskProgress,
    TaskSucceeded,
)
from contracts.subjects import Subjects
from transport.consume import delivery_count
from transport.streams import TASK_HEARTBEAT
from transport.tracing import extract, inject, mark_error, span

from ._blobs import resolve_blobs
from ._context import TaskContext
from ._errors import TaskError
from ._handler import TaskHandler, invalid_input_info, to_json_value
from ._publish import (
    Publisher,
    malformed_task_info,
    publish_dead_letter,
    publish_progress,
    publish_result,
)
from ._settle import (
    DeliveredMessage,
    after_dead_letter,
    after_missed_start,
    after_result,
    after_shutdown,
    settle,
)

__all__ = ["AttemptKey", "RunningAttempts", "error_info_for", "execute_delivery"]

log = logging.getLogger("natsflow.worker")

AttemptKey = tuple[str, str, int]  # (workflow_id, step_id, attempt)

CANCELLED = ErrorInfo(code="cancelled", message="cancelled by a cancel notice", retryable=False)


@dataclass
class RunningAttempts:
    """The handler tasks running now, by attempt, so cancel notices can reach them."""

    _by_key: dict[AttemptKey, dict[asyncio.Task[object], TaskContext]] = field(
        default_factory=dict)

    def add(self, key: AttemptKey, task: asyncio.Task[object], ctx: TaskContext) -> None:
        """Register a running handler."""
        self._by_key.setdefault(key, {})[task] = ctx

    def remove(self, key: AttemptKey, task: asyncio.Task[object]) -> None:
        """Forget a handler that finished."""
        entries = self._by_key.get(key)
        if entries is not None:
            entries.pop(task, None)
            if not entries:
                del self._by_key[key]

    def cancel(self, notice: CancelNotice) -> int:
        """Cancel every handler running the noticed attempt; returns how many."""
        entries = self._by_key.get((notice.workflow_id, notice.step_id, notice.attempt), {})
        for task, ctx in entries.items():
            ctx.mark_cancelled()
            task.cancel()
        return len(entries)


def error_info_for(exc: Exception) -> ErrorInfo:
    """The error a handler's exception is reported as."""
    if isinstance(exc, TaskError):
        return exc.info()
    return ErrorInfo(code="worker-error", message=repr(exc), retryable=True)


async def execute_delivery(msg: DeliveredMessage, handler: TaskHandler, *, js: Publisher,
                           blobs: Any, subjects: Subjects, running: RunningAttempts,
                           ack_wait: float | None = None,
                           max_deliveries: int | None = None,
                           max_payload: int = DEFAULT_MAX_PAYLOAD_SIZE) -> None:
    """Handle one delivery end to end; never raises except on cancellation (shutdown).

    Args:
        msg: The delivery from the task type's consumer.
        handler: The handler of that task type.
        js: Where results, progress and dead letters are published.
        blobs: The JetStream context input blobs are read through (its object store).
        subjects: The deployment's names.
        running: Registry that cancel notices use to reach this attempt.
        ack_wait: The consumer's ack wait: heartbeats come at least three times in it.
        max_deliveries: A task delivered more often than this without a result (its
            workers died or hung each time) is not run again: its attempt fails with
            ``too-many-deliveries`` and the message is dead-lettered.
        max_payload: The server's limit, which a dead letter is kept within.

    A message whose dead letter cannot be stored is tried again, but not for ever:
    after ``LETTER_RETRIES`` more deliveries (see :mod:`contracts.dead_letters`) it is
    dropped, with one error log line.
    """
    deliveries = delivery_count(msg)
    give_up = give_up_on_letter(deliveries, limit=max_deliveries or 0)
    try:
        task = TaskMessage.model_validate_json(msg.data)
    except ValidationError as exc:
        log.warning("dead-lettering malformed task on %s: %s", msg.subject, exc)
        published = await publish_dead_letter(js, subjects, msg, malformed_task_info(exc),
                                              max_payload=max_payload)
        if not published and give_up:
            log.error("dropping a malformed task on %s after %d deliveries: it could not "
                      "be dead-lettered either", msg.subject, deliveries)
        await settle(msg, after_dead_letter(published, give_up=give_up))
        return

    started_at = datetime.now(UTC)
    if max_deliveries is not None and deliveries > max_deliveries:
        reason = ErrorInfo(
            code="too-many-deliveries", retryable=False,
            message=f"delivered {deliveries} times without a result (its workers died or "
                    f"hung each time); not run again")
        log.warning("dead-lettering task %s: %s", task.idempotency_key, reason.message)
        lettered = await publish_dead_letter(js, subjects, msg, reason,
                                             max_payload=max_payload)
        poisoned = TaskFailed(workflow_id=task.workflow_id, step_id=task.step_id,
                              attempt=task.attempt, started_at=started_at, error=reason)
        reported = await publish_result(js, task, poisoned)
        if not (lettered and reported) and give_up:
            missing = " and ".join(what for what, stored in (("dead letter", lettered),
                                                              ("failure", reported))
                                   if not stored)
            log.error("dropping task %s after %d deliveries: its %s could not be stored",
                      task.idempotency_key, deliveries, missing)
        await settle(msg, after_dead_letter(lettered and reported, give_up=give_up))
        return
    if task.start_by is not None and started_at > task.start_by:
        log.info("dropping task %s unrun: it was to start by %s (schedule_to_start)",
                 task.idempotency_key, task.start_by.isoformat())
        await settle(msg, after_missed_start())
        return
    incoming = extract(msg.headers)
    # Reports go back with the trace context: the task span's, or the task's own.
    reply_trace = inject({}, incoming)
    if find_blobs(task.input):
        try:
            task = task.model_copy(update={"input": await resolve_blobs(blobs, task.input)})
        except Exception as exc:  # the blob is gone or unreadable: the attempt fails
            unreadable = TaskFailed(
                workflow_id=task.workflow_id, step_id=task.step_id, attempt=task.attempt,
                started_at=started_at, error=ErrorInfo(
                    code="blob-unavailable", retryable=True,
                    message=f"could not read an input blob: {exc}"))
            await settle(msg, after_result(await publish_result(js, task, unreadable,
                                                                trace=reply_trace)))
            return

    async def progress_sink(progress: TaskProgress) -> None:
        await publish_progress(js, task, progress, trace=reply_trace)

    ctx = TaskContext(task, started_at=started_at, delivery=msg, progress_sink=progress_sink,
                      trace=incoming)
    interval = task.heartbeat_interval if task.heartbeat_interval > 0 else TASK_HEARTBEAT
    if ack_wait is not None:
        # In-progress acks must come well inside this consumer's ack wait, whatever the
        # orchestrator suggests, or a running task is redelivered.
        interval = min(interval, ack_wait / 3)
    beating: _Heartbeat | asyncio.Task[None]
    report: _StartReport | None = None
    if task.heartbeat_timeout:  # its first beat is a report: the orchestrator knows
        beating = asyncio.create_task(_heartbeat(ctx, interval,
                                                 liveness=task.heartbeat_timeout))
    else:
        beating = _Heartbeat(ctx, interval)
        if task.report_start_at is not None:
            report = _StartReport(ctx, (task.report_start_at - started_at).total_seconds())
    try:
        with span(f"natsflow.task {task.task}", incoming, kind="consumer", attributes={
                "natsflow.workflow.id": task.workflow_id, "natsflow.step.id": task.step_id,
                "natsflow.attempt": task.attempt, "natsflow.task": task.task}):
            reply_trace.update(inject({}, incoming))  # now the span's context, when on
            try:
                result = await _run_handler(handler, ctx, running)
            except asyncio.CancelledError:
                await settle(msg, after_shutdown())
                raise
            if isinstance(result, TaskFailed):
                mark_error(result.error.code, result.error.message)
            published = await publish_result(js, task, result, trace=reply_trace)
            await settle(msg, after_result(published))
    finally:
        beating.cancel()
        if report is not None:
            report.cancel()


async def _heartbeat(ctx: TaskContext, interval: float, *, liveness: float | None) -> None:
    """Keep the attempt alive while its handler runs.

    JetStream gets an in-progress ack every ``interval``. With a ``liveness`` limit (the
    step's ``heartbeat_timeout``) the orchestrator must hear from the worker too: an
    empty progress report (``progress: null``) goes to ``reply_to`` at once and then at
    least three times per limit, so one lost report does not kill a live attempt.
    """
    if liveness is None or liveness <= 0:
        while True:
            await asyncio.sleep(interval)
            await ctx.heartbeat()
    period = min(interval, liveness / 3)
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period  # a slow publish must not stretch the period
        await ctx.progress(None)  # an in-progress ack plus the report
        await asyncio.sleep(max(0.0, due - loop.time()))


class _Heartbeat:
    """Calls ``ctx.heartbeat()`` every ``interval`` seconds until cancelled.

    A timer, not a task: most attempts end long before their first beat, and a timer
    costs far less to start and cancel than a task.
    """

    def __init__(self, ctx: TaskContext, interval: float) -> None:
        self._ctx = ctx
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._beat: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(interval, self._due)

    def _due(self) -> None:
        self._timer = None
        self._beat = self._loop.create_task(self._ctx.heartbeat())
        self._beat.add_done_callback(self._done)

    def _done(self, beat: asyncio.Task[None]) -> None:
        if self._beat is beat:  # not cancelled meanwhile: the next beat is one interval away
            self._beat = None
            self._timer = self._loop.call_later(self._interval, self._due)

    def cancel(self) -> None:
        """Stop beating (a beat in flight is cancelled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.cancel()


class _StartReport:
    """Tells the orchestrator once, ``delay`` seconds from now, that the attempt runs.

    The orchestrator hears of a start only from a report; it asks for one (the task's
    ``report_start_at``) when it will look, at a worker-grace or schedule-to-start timer,
    whether a worker has the attempt. Most attempts end before that, and send nothing.
    """

    def __init__(self, ctx: TaskContext, delay: float) -> None:
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        self._sent: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            max(0.0, delay), self._due)

    def _due(self) -> None:
        self._timer = None
        self._sent = self._loop.create_task(self._ctx.progress(None))

    def cancel(self) -> None:
        """The attempt ended (its result is out): a report would say nothing new."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sent, self._sent = self._sent, None
        if sent is not None:
            sent.cancel()


async def _run_handler(handler: TaskHandler, ctx: TaskContext,
                       running: RunningAttempts) -> TaskSucceeded | TaskFailed:
    task = ctx.message

    def failed(error: ErrorInfo) -> TaskFailed:
        return TaskFailed(workflow_id=task.workflow_id, step_id=task.step_id,
                          attempt=task.attempt, started_at=ctx.started_at, error=error)

    try:
        data = handler.parse_input(task.input)
    except ValidationError as exc:
        return failed(invalid_input_info(exc))

    key: AttemptKey = (task.workflow_id, task.step_id, task.attempt)
    call: asyncio.Task[object] = asyncio.create_task(handler.fn(ctx, data))
    running.add(key, call, ctx)
    try:
        output = await call
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the worker is stopping: not a result
        return failed(CANCELLED)
    except Exception as exc:
        level = logging.INFO if isinstance(exc, TaskError) else logging.WARNING
        ctx.logger.log(level, "task %s failed: %r", task.task, exc,
                       exc_info=not isinstance(exc, TaskError))
        return failed(error_info_for(exc))
    finally:
        running.remove(key, call)
    return TaskSucceeded(workflow_id=task.workflow_id, step_id=task.step_id,
                         attempt=task.attempt, started_at=ctx.started_at,
                         output=to_json_value(output))
