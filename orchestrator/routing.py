"""Where each effect goes: its subject, its message body and its ``Nats-Msg-Id``.

One function per effect type, chosen from :data:`Router`'s table by the effect's
type: the message id is what makes a replayed outbox harmless (JetStream drops a
message whose id it stored within its duplicate window), so each is derived from
what the effect *is*, never from when it was sent. An effect without an id (a
cancel notice) is a plain NATS message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts.errors import ErrorInfo
from contracts.subjects import Subjects

from . import fanout
from .outputs import OutputStore
from .permits import LimitEffect
from .pools import pool_id
from .records import (
    CancelEffect,
    Effect,
    EventEffect,
    JoinMapEffect,
    MapJoined,
    MemberFinished,
    NotifyBatchEffect,
    NotifyParentEffect,
    PutOutputEffect,
    SummaryEffect,
    TaskEffect,
    TimerEffect,
    WebhookEffect,
    WorkflowCommandEffect,
)

__all__ = ["Routed", "Router", "leaves_early"]

#: (subject, body, message id); no id: a plain NATS message, not a JetStream one.
Routed = tuple[str, bytes, str | None]


def leaves_early(effect: Effect) -> bool:
    """Sent with the record's write rather than after it: a plain step's task."""
    return isinstance(effect, TaskEffect) and fanout.parse_item(effect.task.step_id) is None


class Router:
    """Turns effects into messages (no I/O).

    Args:
        subjects: The deployment's names.
        outputs: The output store (map items' outputs); None if no map step runs here.
    """

    def __init__(self, subjects: Subjects, outputs: OutputStore | None = None) -> None:
        self.subjects = subjects
        self.outputs = outputs
        # Keyed by the effect's type. Start-child and join-map are absent: they become
        # other messages first (a create command, a MapJoined) after a lookup.
        self._table: dict[type[Any], Callable[[str, Any], Routed]] = {
            EventEffect: self._event,
            TaskEffect: self._task,
            TimerEffect: self._timer,
            CancelEffect: self._cancel,
            NotifyBatchEffect: self._notify_batch,
            SummaryEffect: self._summary,
            PutOutputEffect: self._put_output,
            WebhookEffect: self._webhook,
            NotifyParentEffect: self._notify_parent,
            WorkflowCommandEffect: self._workflow_command,
            LimitEffect: self._limit,
        }

    def route(self, key: str, effect: Effect) -> Routed:
        """The message of ``effect``, an effect of record ``key``.

        Raises:
            TypeError: an effect that is not sent as it is (start-child, join-map).
        """
        try:
            to = self._table[type(effect)]
        except KeyError:
            raise TypeError(f"a {effect.kind} effect has no message of its own") from None
        return to(key, effect)

    def join(self, join: JoinMapEffect, joined: MapJoined) -> Routed:
        """The message handing a map's joined outputs to its workflow."""
        return (self.subjects.workflow_command(join.workflow_id),
                joined.model_dump_json().encode(),
                f"join:{join.workflow_id}:{join.step_id}:{join.attempt}")

    @staticmethod
    def joined(join: JoinMapEffect, output: Any, size: int) -> MapJoined:
        """The MapJoined of a map's outputs, read from the output store."""
        return MapJoined(step_id=join.step_id, attempt=join.attempt, output=output, size=size)

    @staticmethod
    def join_failed(join: JoinMapEffect, why: str) -> MapJoined:
        """The MapJoined of a map whose outputs are too large even for the blob store."""
        return MapJoined(step_id=join.step_id, attempt=join.attempt, error=ErrorInfo(
            code="output-too-large", message=why, step=join.step_id))

    # -- one per effect type ------------------------------------------------------
    def _event(self, key: str, effect: EventEffect) -> Routed:
        ev = effect.event
        return (self.subjects.event(ev.workflow_id, ev.type.value),
                ev.model_dump_json().encode(), f"ev:{ev.workflow_id}:{ev.seq}")

    def _task(self, key: str, effect: TaskEffect) -> Routed:
        t = effect.task
        # The token in the id: nobody who lacks it can have the real task dropped
        # as the duplicate of one published first under the same id.
        return (self.subjects.task(t.task, effect.priority), t.model_dump_json().encode(),
                f"task:{t.idempotency_key}" + (f":{t.token}" if t.token else ""))

    def _timer(self, key: str, effect: TimerEffect) -> Routed:
        tm = effect.timer
        # The due time is part of the id: a heartbeat timer is armed again and again.
        return (self.subjects.timer(tm.workflow_id), tm.model_dump_json().encode(),
                f"timer:{tm.workflow_id}:{tm.step_id}:{tm.attempt}:{tm.purpose}:"
                f"{tm.due.timestamp()}")

    def _cancel(self, key: str, effect: CancelEffect) -> Routed:
        notice = effect.notice
        return self.subjects.cancel(notice.workflow_id), notice.model_dump_json().encode(), None

    def _notify_batch(self, key: str, effect: NotifyBatchEffect) -> Routed:
        body = MemberFinished(workflow_id=effect.workflow_id, state=effect.state)
        return (self.subjects.batch_command(effect.batch_id), body.model_dump_json().encode(),
                f"done:{effect.workflow_id}")

    def _summary(self, key: str, effect: SummaryEffect) -> Routed:
        sm = effect.summary
        return (self.subjects.kv_put(self.subjects.summaries_bucket, sm.id),
                sm.model_dump_json(exclude_none=True).encode(), f"sum:{sm.id}:{effect.seq}")

    def _put_output(self, key: str, effect: PutOutputEffect) -> Routed:
        assert self.outputs is not None, "map steps need an output store"
        return (self.outputs.put_subject(effect.key), effect.output_json(),
                f"out:{effect.key}")

    def _webhook(self, key: str, effect: WebhookEffect) -> Routed:
        d = effect.delivery
        # One message per (event, webhook): a replayed outbox never queues it twice.
        return (self.subjects.webhook(d.event.workflow_id), d.model_dump_json().encode(),
                f"wh:{d.event.workflow_id}:{d.event.seq}:{d.index}")

    def _notify_parent(self, key: str, effect: NotifyParentEffect) -> Routed:
        res = effect.result
        return (self.subjects.result(res.workflow_id), res.model_dump_json().encode(),
                f"child:{key}:{res.attempt}")

    def _workflow_command(self, key: str, effect: WorkflowCommandEffect) -> Routed:
        return (self.subjects.workflow_command(effect.workflow_id),
                effect.command.model_dump_json().encode(),
                f"bcmd:{key}:{effect.workflow_id}:{effect.command.kind}")

    def _limit(self, key: str, effect: LimitEffect) -> Routed:
        pool = pool_id(effect.claim)
        # One request per holder, claim and op: a replayed outbox asks (or gives back) once.
        return (self.subjects.limit(pool), effect.model_dump_json().encode(),
                f"lim:{effect.op}:{pool}:{effect.holder}:{effect.index}")
