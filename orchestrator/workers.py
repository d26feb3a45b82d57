"""What the tasks stream says of the workers of a task type (pure over consumer infos).

The engine learns that a worker took an attempt only from the worker's own report; what
it cannot know is *why* nobody did. The shell looks at the consumers of the tasks stream
(one ``consumers_info`` call, cached briefly) and hands them to the engine with the
worker-grace timer, as it hands it the time; the engine judges each queued task by them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from contracts.models import WorkerWaitReason

if TYPE_CHECKING:
    from nats.js.api import ConsumerInfo

__all__ = ["ConsumerView", "subject_matches", "tasks_without_worker", "worker_presence"]


class ConsumerView(BaseModel):
    """The part of a consumer's info that says whether workers serve it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filters: tuple[str, ...]  # empty: the consumer takes every subject of the stream
    waiting: int  # pull requests waiting on the server: idle workers asking for work
    in_progress: int  # delivered, not yet acked: workers at work

    @classmethod
    def of(cls, info: ConsumerInfo) -> ConsumerView:
        """The view of one ``ConsumerInfo``."""
        cfg = info.config
        filters = tuple(cfg.filter_subjects or ()) or (
            (cfg.filter_subject,) if cfg.filter_subject else ())
        return cls(filters=filters, waiting=info.num_waiting or 0,
                   in_progress=info.num_ack_pending or 0)

    def takes(self, subject: str) -> bool:
        """Whether this consumer is delivered messages of ``subject``."""
        return not self.filters or any(subject_matches(f, subject) for f in self.filters)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def worker_presence(consumers: Sequence[ConsumerView] | None, subject: str
                    ) -> WorkerWaitReason:
    """Why a task on ``subject`` may still be waiting, judged from the consumers.

    Args:
        consumers: The tasks stream's consumers (None: they could not be read).
        subject: The task type's subject.
    """
    if consumers is None:
        return WorkerWaitReason.UNKNOWN
    mine = [c for c in consumers if c.takes(subject)]
    if not mine:
        return WorkerWaitReason.NO_CONSUMER
    if any(c.waiting or c.in_progress for c in mine):
        return WorkerWaitReason.BUSY
    return WorkerWaitReason.NO_WORKER


def tasks_without_worker(counts: Mapping[str, int], consumers: Iterable[ConsumerView],
                         *, head: str) -> dict[str, int]:
    """Task types whose stored tasks no consumer takes, with how many there are.

    Args:
        counts: Messages in the tasks stream by subject (``stream_info`` with a filter).
        consumers: The tasks stream's consumers.
        head: What every task subject starts with (``Subjects.task("")``); the task
            type follows it.
    """
    views = list(consumers)
    out: dict[str, int] = {}
    for subject, n in counts.items():
        if n and subject.startswith(head) and not any(c.takes(subject) for c in views):
            task = subject[len(head):]
            out[task] = out.get(task, 0) + n
    return out
