"""natsflow's promises, checked mechanically from what a deployment stores.

The promises (docs/guarantees.md):

1. Every accepted workflow reaches exactly one terminal state, whatever crashes.
2. No step begins before its dependencies have ended with one succeeding (all of them,
   for the default ``join: all``); each attempt is dispatched once.
3. Each workflow's event stream has a gap-free ``seq`` from 1, exactly one terminal
   event per run, and agrees with the stored state.

(4, at-least-once tasks with an idempotency key, and 5, poison messages end in the
dead-letter stream, are properties of messages, not of a workflow's history; the fault
suite checks them where it makes them happen.)

:func:`check_workflow` is pure: it looks at one workflow's stored status and the events
read back from the events stream. :func:`collect` reads both for a set of workflows,
:func:`verify` checks them all. A workflow created with ``start: false`` and never started
is not expected to end: it is reported as not started, not as a broken promise 1.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from contracts.errors import WorkflowNotFound
from contracts.models import (
    EVENT_TERMINAL,
    STEP_TERMINAL,
    WORKFLOW_TERMINAL,
    Event,
    EventType,
    StepState,
    WorkflowState,
    WorkflowStatus,
)
from natsflow.client import NatsflowClient

__all__ = ["Report", "Violation", "check_all", "check_workflow", "collect", "not_started",
           "verify"]

_ENDS_STEP = {
    EventType.STEP_SUCCEEDED: StepState.SUCCEEDED,
    EventType.STEP_FAILED: StepState.FAILED,
    EventType.STEP_CANCELLED: StepState.CANCELLED,
    EventType.STEP_SKIPPED: StepState.SKIPPED,
}
#: Step events that do not mean the step began (it may be left out or cut short first).
_NOT_BEGUN = frozenset({EventType.STEP_SKIPPED, EventType.STEP_CANCELLED})
_TERMINAL_STATE = {
    EventType.WORKFLOW_COMPLETED: WorkflowState.COMPLETED,
    EventType.WORKFLOW_FAILED: WorkflowState.FAILED,
    EventType.WORKFLOW_STOPPED: WorkflowState.STOPPED,
}


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken promise of one workflow."""

    workflow_id: str
    promise: int
    message: str

    def __str__(self) -> str:
        return f"{self.workflow_id}: promise {self.promise}: {self.message}"


def check_workflow(workflow_id: str, status: WorkflowStatus | None,
                   events: Sequence[Event], *, join_all: bool = True) -> list[Violation]:
    """Every way this workflow's stored status and events break promises 1-3.

    Args:
        workflow_id: The workflow.
        status: Its stored status (None: the deployment does not know it).
        events: Its events as read from the events stream, duplicates included.
        join_all: Every step joins ``all`` (the default); with False a step may begin
            once its dependencies have ended and one of them succeeded.
    """
    out: list[Violation] = []

    def broken(promise: int, message: str) -> None:
        out.append(Violation(workflow_id, promise, message))

    # 1: known, and ended (or never started, so not expected to end).
    if status is None:
        broken(1, "accepted but not stored")
    elif status.state not in WORKFLOW_TERMINAL and not not_started(status):
        broken(1, f"not terminal: {status.state.value}")

    # 3: seq 1..n once each, created first, one terminal per run, last is terminal.
    seqs = Counter(e.seq for e in events)
    twice = sorted(s for s, n in seqs.items() if n > 1)
    if twice:
        broken(3, f"seq stored more than once: {twice[:10]}")
    ordered = sorted({e.seq: e for e in events}.values(), key=lambda e: e.seq)
    if [e.seq for e in ordered] != list(range(1, len(ordered) + 1)):
        missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
        broken(3, f"seq has gaps: missing {missing[:10]}")
    if not ordered:
        broken(3, "no events")
        return out
    if ordered[0].type != EventType.WORKFLOW_CREATED:
        broken(3, f"first event is {ordered[0].type.value}")
    terminals = [e for e in ordered if e.type in EVENT_TERMINAL]
    runs = status.runs if status is not None else 1
    # A run still going (or never started) has no terminal event yet.
    ended = runs if status is None or status.state in WORKFLOW_TERMINAL else runs - 1
    if len(terminals) != ended:
        broken(3, f"{len(terminals)} terminal events for {ended} run(s)")
    if status is not None and status.state in WORKFLOW_TERMINAL:
        last = ordered[-1]
        if last.type not in EVENT_TERMINAL:
            broken(3, f"last event is {last.type.value}, the state {status.state.value}")
        elif _TERMINAL_STATE[last.type] != status.state:
            broken(3, f"last event {last.type.value} but stored state {status.state.value}")
        if status.last_seq != ordered[-1].seq:
            broken(3, f"stored last_seq {status.last_seq}, events end at {ordered[-1].seq}")

    # 2: a step begins only after its dependencies; each attempt dispatched once.
    if status is not None:
        out.extend(_order_violations(workflow_id, status, ordered, join_all=join_all))
        dispatched = Counter((e.step_id, e.attempt) for e in ordered
                             if e.type == EventType.STEP_DISPATCHED)
        again = sorted(f"{s}#{a}" for (s, a), n in dispatched.items() if n > 1)
        if again:
            broken(2, f"attempts dispatched more than once: {again[:10]}")
        if status.state in WORKFLOW_TERMINAL:
            out.extend(_step_state_violations(workflow_id, status, ordered))
    return out


def not_started(status: WorkflowStatus | None) -> bool:
    """True for a workflow created with ``start: false`` and not started since.

    A create with ``start: true`` is started in the same decision, so a stored
    ``created`` state always means the workflow waits for ``workflow.start``.
    """
    return status is not None and status.state == WorkflowState.CREATED


def _order_violations(workflow_id: str, status: WorkflowStatus, ordered: Sequence[Event],
                      *, join_all: bool) -> list[Violation]:
    deps = {s.id: list(s.depends_on) for s in status.steps}
    state: dict[str, StepState] = {}
    began: set[tuple[str, int | None]] = set()
    out: list[Violation] = []
    for e in ordered:
        if e.type == EventType.WORKFLOW_RETRIED:
            # A retry re-opens failed steps; they begin again after what they need.
            state = {k: v for k, v in state.items() if v == StepState.SUCCEEDED}
            continue
        if e.step_id is None or not e.type.value.startswith("step."):
            continue
        key = (e.step_id, e.attempt)
        if e.type not in _NOT_BEGUN and key not in began and e.step_id in deps:
            began.add(key)
            ended = [state.get(d) for d in deps[e.step_id]]
            ok = all(s in STEP_TERMINAL for s in ended) and (
                all(s == StepState.SUCCEEDED for s in ended) if join_all
                else (not ended or StepState.SUCCEEDED in ended))
            if not ok:
                have = {d: (s.value if s else "not ended")
                        for d, s in zip(deps[e.step_id], ended, strict=True)}
                out.append(Violation(workflow_id, 2, f"{e.step_id} began (seq {e.seq}, "
                                     f"{e.type.value}) before its dependencies: {have}"))
        if e.type in _ENDS_STEP:
            state[e.step_id] = _ENDS_STEP[e.type]
    return out


def _step_state_violations(workflow_id: str, status: WorkflowStatus,
                           ordered: Sequence[Event]) -> list[Violation]:
    last: dict[str, StepState] = {}
    for e in ordered:
        if e.step_id is not None and e.type in _ENDS_STEP:
            last[e.step_id] = _ENDS_STEP[e.type]
    return [Violation(workflow_id, 3, f"step {s.id} stored {s.state.value}, events say "
                      f"{last[s.id].value}")
            for s in status.steps if s.id in last and last[s.id] != s.state]


async def collect(client: NatsflowClient, workflow_ids: Iterable[str] | None = None, *,
                  concurrency: int = 32) -> dict[str, tuple[WorkflowStatus | None,
                                                             list[Event]]]:
    """Every stored event of each workflow, and its stored status.

    Args:
        client: A client of the deployment.
        workflow_ids: The workflows (None: every workflow with an event stored).
        concurrency: Status requests in flight at once.
    """
    events: dict[str, list[Event]] = {}
    js = client.nc.jetstream()
    stream = client.subjects.events_stream
    last = (await js.stream_info(stream)).state.last_seq
    if last:
        sub = await js.subscribe(client.subjects.all_events, stream=stream,
                                 ordered_consumer=True,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        try:
            while True:
                msg = await sub.next_msg(timeout=10.0)
                try:
                    event = Event.model_validate_json(msg.data)
                except ValidationError:
                    pass
                else:
                    events.setdefault(event.workflow_id, []).append(event)
                if msg.metadata.sequence.stream >= last:
                    break
        finally:
            await sub.unsubscribe()
    ids = sorted(set(workflow_ids) if workflow_ids is not None else set(events))
    limit = asyncio.Semaphore(concurrency)

    async def status_of(wid: str) -> WorkflowStatus | None:
        async with limit:
            try:
                return (await client.get(wid)).status
            except WorkflowNotFound:
                return None

    statuses = await asyncio.gather(*(status_of(w) for w in ids))
    return {w: (s, events.get(w, [])) for w, s in zip(ids, statuses, strict=True)}


@dataclass(frozen=True, slots=True)
class Report:
    """What :func:`verify` found: the workflows checked, broken promises, and the
    workflows created with ``start: false`` and never started (not violations)."""

    checked: int
    violations: list[Violation] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)


async def verify(client: NatsflowClient, workflow_ids: Iterable[str] | None = None, *,
                 join_all: bool = True) -> Report:
    """Check ``workflow_ids`` (None: every one with events) against promises 1-3."""
    found = await collect(client, workflow_ids)
    out: list[Violation] = []
    waiting: list[str] = []
    for wid, (status, evs) in found.items():
        out.extend(check_workflow(wid, status, evs, join_all=join_all))
        if not_started(status):
            waiting.append(wid)
    return Report(checked=len(found), violations=out, not_started=waiting)


async def check_all(client: NatsflowClient, workflow_ids: Iterable[str] | None = None, *,
                    join_all: bool = True) -> tuple[int, list[Violation]]:
    """(workflows checked, violations) for ``workflow_ids`` (None: every one with events)."""
    report = await verify(client, workflow_ids, join_all=join_all)
    return report.checked, report.violations
