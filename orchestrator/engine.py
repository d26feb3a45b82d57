"""The workflow engine: a pure state machine.

``decide(record, input, now)`` returns the next record, the effects to publish and the
reply for the requester. No I/O, no clock, never raises for anything an input can
contain: a failed workflow is a value. Every input is idempotent — a duplicate or stale
input (a result for an attempt that is no longer running, a second start, a redelivered
create) changes nothing — which is what makes at-least-once delivery safe.

This module owns what each input means: after the checks every input passes (the
commander's namespaces, a report's token, a result before its workflow's first save),
``decide`` looks the input's type up in ``_APPLY``, one ``_apply_<input>`` function per
kind of input, which works on a :class:`~orchestrator.transition.Transition`.

How a step goes (``Transition.advance``, :mod:`orchestrator.transition`): a pending step
whose dependencies are all finished is *ready*; its ``join`` rule and ``when`` condition
decide whether it runs, is skipped or is cancelled (a dependency failed under
``on_failure: continue``). A step that runs is *begun* by its kind
(:mod:`orchestrator.kinds`): worker kinds become task messages, the others are timers,
signals, child workflows or computed on the spot. When the flow is over, a failed or
stopped workflow first runs the compensations of its succeeded steps, newest first
(state ``compensating``), then ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from contracts.errors import (
    AlreadyFinished,
    ErrorInfo,
    IdConflict,
    TooManySignals,
    WorkflowNotFound,
)
from contracts.messages import TaskProgress, TaskSucceeded
from contracts.models import (
    STEP_ACTIVE,
    STEP_IN_FLIGHT,
    WORKFLOW_ACTIVE,
    WORKFLOW_TERMINAL,
    EventType,
    MapStep,
    PendingSignal,
    StepConfig,
    StepKind,
    StepState,
    StepStatus,
    WaitStep,
    WorkerWaitReason,
    WorkflowState,
    WorkflowStatus,
    WorkflowStep,
)
from contracts.namespaces import visible
from contracts.priorities import effective
from contracts.schedules import FIRE_TIME_LABEL, SCHEDULE_LABEL

from . import control, fanout, kinds, limits, steps
from .permits import PermitInput
from .records import (
    CreateWorkflow,
    Decisions,
    Effect,
    MapJoined,
    PauseWorkflow,
    Reply,
    ResultInput,
    ResumeWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StopWorkflow,
    TimerFired,
    WorkflowDecision,
    WorkflowInput,
    WorkflowRecord,
)
from .tokens import same_token
from .transition import EngineSettings, StepKinds, Transition
from .workers import worker_presence

__all__ = ["MAX_PENDING_SIGNALS", "EngineSettings", "decide", "decide_all", "new_record"]

#: Signals kept for wait steps that have not started; more are refused.
MAX_PENDING_SIGNALS = 100

#: What a ``step.waiting_for_worker`` event tells a user, by what the shell saw.
_WAIT_REASON = {
    WorkerWaitReason.NO_CONSUMER: "no worker serves this task type (no consumer on the "
                                  "tasks stream takes it); start one",
    WorkerWaitReason.NO_WORKER: "its consumer exists but no worker is pulling from it; "
                                "start a worker",
    WorkerWaitReason.BUSY: "its workers are busy; the task is queued behind others",
    WorkerWaitReason.UNKNOWN: "the task type's consumers could not be looked at",
}


def new_record(inp: CreateWorkflow, now: datetime) -> WorkflowRecord:
    """The record of a workflow just created (state ``created``, no events yet)."""
    cfg = inp.config
    assert cfg.id is not None, "the API assigns an id before creating"
    undoes = {s.compensate: s.id for s in cfg.steps if s.compensate}
    status = WorkflowStatus(
        id=cfg.id, name=cfg.name, state=WorkflowState.CREATED, input=cfg.input,
        namespace=cfg.namespace, labels=cfg.labels, batch_id=inp.batch_id,
        parent=cfg.parent, created_at=now,
        definition=cfg.definition, definition_version=cfg.definition_version,
        priority=effective(cfg.priority),
        steps=[StepStatus(id=s.id, kind=StepKind(s.kind),
                          task=s.step.task_type if isinstance(s, MapStep) else s.task_type,
                          depends_on=list(s.depends_on),
                          compensates=undoes.get(s.id)) for s in cfg.steps],
    )
    # Built from validated parts; model_construct skips re-running the graph check.
    return WorkflowRecord.model_construct(config=cfg, fingerprint=inp.fingerprint,
                                          status=status, outputs_bytes=0, outbox=[],
                                          outbox_at=None, trace=inp.trace)



def decide(record: WorkflowRecord | None, inp: WorkflowInput, now: datetime,
           settings: EngineSettings | None = None) -> WorkflowDecision:
    """Apply one input to one workflow.

    Args:
        record: The stored record, or None if the workflow does not exist.
        inp: What happened.
        now: The time of the decision (event times, deadlines).
        settings: Engine knobs.

    Returns:
        The decision; ``decision.record`` is None when nothing changed.
    """
    settings = settings or EngineSettings()
    if isinstance(inp, CreateWorkflow):
        return _create(record, inp, now, settings)  # the one input that needs no record

    # A workflow outside the commander's namespaces answers as one that does not exist:
    # checked on the record the command applies to, so no earlier read races it.
    if isinstance(inp, StartWorkflow | StopWorkflow | SignalWorkflow | PauseWorkflow
                  | ResumeWorkflow | RetryWorkflow) and (
            record is None or not visible(record.status.namespace, inp.namespaces)):
        return WorkflowDecision(record=None, reply=Reply(
            error=WorkflowNotFound("no such workflow").info()))
    if isinstance(inp, ResultInput):
        step = None if record is None else next(
            (s for s in record.status.steps if s.id == inp.result.step_id), None)
        forged = _forged(step, inp, settings)
        if forged is not None:
            return WorkflowDecision(record=None, reply=Reply(refused=forged))

    if record is None:
        # A result may come before its workflow's first save (tasks leave with it).
        return WorkflowDecision(record=None, reply=Reply(early=isinstance(inp, ResultInput)))

    tx = Transition(record, now, settings, _KINDS)
    error = _APPLY[type(inp)](tx, inp)
    if error is not None:  # refused: nothing changes
        return WorkflowDecision(record=None, reply=Reply(error=error))
    tx.advance()
    return tx.decision(Reply(early=tx.early))


def decide_all(record: WorkflowRecord | None, inputs: Sequence[WorkflowInput], now: datetime,
               settings: EngineSettings | None = None) -> Decisions[WorkflowRecord]:
    """Apply inputs to one workflow in order, each to the record the one before left.

    The same as :func:`decide` on each in turn (``tests/test_engine_batched.py`` holds
    the two equal), but a run of reports, timers and joins shares one
    :class:`Transition`: a map's many item results in one batch copy its progress and
    build a record once, not once each. Commands keep a transition each: a refused one
    must leave nothing behind.
    """
    settings = settings or EngineSettings()
    current = record
    effects: list[Effect] = []
    replies: list[Reply] = []
    tx: Transition | None = None
    for inp in inputs:
        if current is not None and isinstance(inp, _SHARED):
            if tx is None:
                tx = Transition(current, now, settings, _KINDS)
            replies.append(_apply_shared(tx, inp, settings))
            continue
        if tx is not None:
            current, tx = _close(tx, current, effects), None
        decision = decide(current, inp, now, settings)
        if decision.record is not None:
            current = decision.record
            effects.extend(decision.effects)
        replies.append(decision.reply)
    if tx is not None:
        current = _close(tx, current, effects)
    return Decisions(current, effects, replies)


#: Inputs that are never refused once past the token check: they can share a transition.
_SHARED = (ResultInput, TimerFired, MapJoined)


def _apply_shared(tx: Transition, inp: ResultInput | TimerFired | MapJoined,
                  settings: EngineSettings) -> Reply:
    """``decide`` for one input of a shared transition whose record exists."""
    if isinstance(inp, ResultInput):
        forged = _forged(tx.steps.get(inp.result.step_id), inp, settings)
        if forged is not None:
            return Reply(refused=forged)
    tx.early = False
    _APPLY[type(inp)](tx, inp)
    tx.advance()
    tx.end_input()
    return Reply(early=tx.early)


def _close(tx: Transition, current: WorkflowRecord | None, effects: list[Effect]
           ) -> WorkflowRecord | None:
    """End a shared transition: its record, or ``current`` if it changed nothing."""
    decision = tx.decision(Reply())
    if decision.record is None:
        return current
    effects.extend(decision.effects)
    return decision.record


def _create(record: WorkflowRecord | None, inp: CreateWorkflow, now: datetime,
            settings: EngineSettings) -> WorkflowDecision:
    """A new workflow (started unless ``config.start`` is false); a repeat changes nothing."""
    if record is not None:
        if record.fingerprint == inp.fingerprint:
            return WorkflowDecision(record=None, reply=Reply(created=False))
        err = IdConflict(f"workflow {record.status.id} exists with a different config",
                         field="id")
        return WorkflowDecision(record=None, reply=Reply(error=err.info()))
    tx = Transition(new_record(inp, now), now, settings, _KINDS)
    created: dict[str, object] = {"name": inp.config.name}
    # A scheduled run says which schedule and fire time it is (contracts.schedules).
    for label, key in ((SCHEDULE_LABEL, "schedule"), (FIRE_TIME_LABEL, "fire_time")):
        if label in inp.config.labels:
            created[key] = inp.config.labels[label]
    if inp.rerun_of:
        created["rerun_of"] = inp.rerun_of
    tx.emit(EventType.WORKFLOW_CREATED, data=created)
    control.reuse(tx, inp)
    if inp.config.start:
        tx.start()
    return tx.decision(Reply(created=True))


def _forged(step: StepStatus | None, inp: ResultInput,
            settings: EngineSettings) -> ErrorInfo | None:
    """Why a report does not count (its token is not its attempt's), or None if it does.

    A plain step's current attempt is checked against the token its status keeps (what
    was sent, whatever the key is now); anything else, an earlier or later attempt, a map
    item, a workflow not stored yet, against the token the key gives. An attempt sent
    without a token (no key then) accepts any report.
    """
    res = inp.result
    if step is not None and step.attempts == res.attempt:
        expected = step.token
    else:
        expected = settings.token(res.workflow_id, res.step_id, res.attempt)
    if expected is None or same_token(res.token, expected):
        return None
    return ErrorInfo(code="forged-result", step=res.step_id, retryable=False,
                     message=f"a {res.kind} report for {res.workflow_id}/{res.step_id} "
                             f"attempt {res.attempt} without that attempt's token: "
                             "refused (reports echo the token of the task they answer)")


# -- one handler per input kind ---------------------------------------------------
# Each applies its input to the transition and returns None, or the error that refuses
# it (the decision then changes nothing). ``decide`` advances the workflow after it.

def _apply_start(tx: Transition, inp: StartWorkflow) -> ErrorInfo | None:
    """Start a created workflow; any later state has started already."""
    if tx.status.state == WorkflowState.CREATED:
        tx.start()
    return None


def _apply_stop(tx: Transition, inp: StopWorkflow) -> ErrorInfo | None:
    """Stop the workflow (running steps get the stop grace period to report)."""
    done = _finished(tx)
    if done is None:
        tx.stop(inp.reason)
    return done


def _apply_signal(tx: Transition, inp: SignalWorkflow) -> ErrorInfo | None:
    """Deliver a signal to a workflow that has not finished."""
    done = _finished(tx)
    return done if done is not None else _signal(tx, inp)


def _finished(tx: Transition) -> ErrorInfo | None:
    if tx.status.state in WORKFLOW_TERMINAL:
        return AlreadyFinished(f"workflow {tx.status.id} is already {tx.status.state}").info()
    return None


def _apply_control(tx: Transition,
                   inp: PauseWorkflow | ResumeWorkflow | RetryWorkflow) -> ErrorInfo | None:
    """Pause, resume or retry (:mod:`orchestrator.control`)."""
    return control.control(tx, inp, fire=_apply_timer)


def _signal(tx: Transition, sig: SignalWorkflow) -> ErrorInfo | None:
    """A wait step for it takes the signal, or it is kept until one starts."""
    st = tx.status
    for cfg in tx.config.steps:
        step = tx.steps[cfg.id]
        if (isinstance(cfg, WaitStep) and cfg.signal == sig.name
                and step.state == StepState.WAITING):
            tx.emit(EventType.SIGNAL_RECEIVED, step=cfg.id, data={"name": sig.name})
            tx.succeed(cfg, step, sig.payload)
            return None
    if len(st.signals) >= MAX_PENDING_SIGNALS:
        return TooManySignals(f"{MAX_PENDING_SIGNALS} signals are already waiting",
                              field="name").info()
    st.signals.append(PendingSignal(name=sig.name, payload=sig.payload,
                                    received_at=tx.now))
    tx.emit(EventType.SIGNAL_RECEIVED, data={"name": sig.name, "kept": True})
    return None


def _apply_joined(tx: Transition, inp: MapJoined) -> None:
    """The shell collected a map step's item outputs (:mod:`orchestrator.fanout`)."""
    step = tx.steps.get(inp.step_id)
    if step is not None and tx.status.state in WORKFLOW_ACTIVE:
        cfg = tx.cfgs[step.id]
        if isinstance(cfg, MapStep):
            fanout.on_joined(tx, cfg, tx.own(step), inp)


def _apply_result(tx: Transition, inp: ResultInput) -> None:
    """A worker's (or a child workflow's) report about one attempt or one map item."""
    res = inp.result
    item = fanout.parse_item(res.step_id)
    if item is not None:
        mapped = tx.steps.get(item[0])
        cfg = tx.cfgs.get(item[0])
        if (mapped is not None and isinstance(cfg, MapStep)
                and mapped.state == StepState.RUNNING and mapped.attempts >= 1
                and tx.status.state in WORKFLOW_ACTIVE):
            fanout.on_item_result(tx, cfg, tx.own(mapped), item[1], inp)
        return
    step = tx.steps.get(res.step_id)
    if (step is not None and step.attempts < res.attempt
            and tx.status.state not in WORKFLOW_TERMINAL):
        # An attempt this record has not dispatched yet: its task left while the
        # dispatch was being saved, and this copy is older than that save.
        tx.early = True
        return
    if (step is None or step.attempts != res.attempt or step.state not in STEP_ACTIVE
            or tx.status.state in WORKFLOW_TERMINAL):
        return  # stale or duplicate: that attempt is no longer running
    cfg = tx.cfgs[res.step_id]
    if cfg.task_type is None and not isinstance(cfg, WorkflowStep):
        return  # the engine runs this kind itself; nobody reports on it
    step = tx.own(step)
    if step.state == StepState.DISPATCHED:
        step.state = StepState.RUNNING
        step.waiting_for_worker = None
        step.started_at = res.started_at or tx.now
        step.heartbeat_at = step.started_at
        tx.emit(EventType.STEP_STARTED, step=step.id, attempt=res.attempt,
                time=step.started_at)
    if isinstance(res, TaskProgress):
        step.heartbeat_at = tx.now
        tx.dirty = True
        if res.progress is not None:
            step.progress = res.progress
            tx.emit(EventType.STEP_PROGRESS, step=step.id, attempt=res.attempt,
                    data={"progress": res.progress})
    elif isinstance(res, TaskSucceeded):
        tx.succeed(cfg, step, res.output, attempt=res.attempt)
    else:
        tx.on_failure(cfg, step, res.error)


def _apply_timer(tx: Transition, timer: TimerFired) -> None:
    """A durable timer came due; its ``purpose`` says what for."""
    st = tx.status
    if st.state in WORKFLOW_TERMINAL:
        return
    if st.state == WorkflowState.PAUSED:
        # Held until the resume, which fires it (its guards are checked then).
        st.deferred_timers.append(timer.model_dump(mode="json"))
        tx.dirty = True
        return
    if timer.purpose == "stop-grace":
        if st.state != WorkflowState.STOPPING:
            return
        for s in list(st.steps):
            if s.state in STEP_IN_FLIGHT:
                s = tx.own(s)
                s.state = StepState.CANCELLED
                s.finished_at = tx.now
                s.waiting_for_worker = None
                tx.emit(EventType.STEP_CANCELLED, step=s.id, attempt=s.attempts,
                        data={"reason": "no answer within the stop grace period"})
        tx.conclude(WorkflowState.STOPPED, None)
        return
    if timer.purpose == "workflow-timeout":
        if tx.running and timer.attempt in (0, st.runs):
            tx.cancel_all("the workflow timed out")
            tx.conclude(WorkflowState.FAILED, ErrorInfo(
                code="workflow-timeout", retryable=False,
                message=f"the workflow did not finish within {tx.config.timeout}s"))
        return
    if timer.purpose == "worker-grace":
        _check_workers(tx, timer)
        return
    if timer.purpose == "rate-limit":
        limits.on_rate_timer(tx, timer)
        return
    item = fanout.parse_item(timer.step_id or "")
    if item is not None:
        mapped = tx.steps.get(item[0])
        cfg_ = tx.cfgs.get(item[0])
        if (mapped is not None and isinstance(cfg_, MapStep)
                and mapped.state == StepState.RUNNING and st.state in WORKFLOW_ACTIVE):
            fanout.on_item_timer(tx, cfg_, tx.own(mapped), item[1], timer)
        return
    step = tx.steps.get(timer.step_id or "")
    if step is None or st.state not in (WorkflowState.RUNNING, WorkflowState.COMPENSATING):
        return
    cfg = tx.cfgs[step.id]
    if timer.purpose == "retry":
        if step.state == StepState.RETRYING and step.attempts + 1 == timer.attempt:
            tx.begin(cfg, step)
    elif timer.purpose == "total-timeout":
        if (step.state in STEP_ACTIVE | {StepState.RETRYING, StepState.THROTTLED}
                and timer.attempt == step.attempt_base + 1):
            tx.time_out(cfg, step, ErrorInfo(
                code="step-total-timeout", retryable=False, step=step.id,
                message=f"the step did not finish within {cfg.total_timeout}s"))
    elif step.attempts != timer.attempt or step.state not in STEP_ACTIVE:
        return  # that attempt is over
    elif timer.purpose == "sleep":
        if step.state == StepState.WAITING and step.wake_at is not None:
            tx.succeed(cfg, step, {"slept_until": step.wake_at.isoformat()})
    elif timer.purpose == "heartbeat":
        _check_heartbeat(tx, cfg, step, due=timer.due)
    elif timer.purpose == "schedule-to-start":
        if step.state == StepState.DISPATCHED:
            limit = steps.schedule_to_start(cfg)
            tx.time_out(cfg, step, ErrorInfo(
                code="schedule-to-start-timeout", retryable=True, step=step.id,
                message=f"no worker started task {step.task!r} (attempt "
                        f"{timer.attempt}) within {limit}s",
                details={"task": step.task}))
    else:
        tx.time_out(cfg, step, ErrorInfo(
            code="step-timeout", retryable=True, step=step.id,
            message=f"attempt {timer.attempt} timed out after {cfg.timeout}s"))


def _check_workers(tx: Transition, timer: TimerFired) -> None:
    """The worker-grace look: mark attempts queued for the grace period, and arm the
    next look for those dispatched since."""
    st = tx.status
    if st.worker_check_at is None or timer.due != st.worker_check_at:
        return  # a look of an earlier run, or one this record already took
    st.worker_check_at = None
    tx.dirty = True
    grace = tx.settings.worker_grace
    if not grace or st.state not in (WorkflowState.RUNNING, WorkflowState.COMPENSATING):
        return
    window = timedelta(seconds=grace)
    later: datetime | None = None
    for step in list(st.steps):
        if (step.state != StepState.DISPATCHED or step.waiting_for_worker is not None
                or step.dispatched_at is None or step.task is None):
            continue
        due = step.dispatched_at + window
        if due <= max(tx.now, timer.due):
            reason = (WorkerWaitReason.UNKNOWN if timer.consumers is None else
                      worker_presence(timer.consumers,
                                      tx.settings.subjects.task(step.task,
                                                                tx.config.priority)))
            _wait_for_worker(tx, step, reason)
        else:
            later = due if later is None else min(later, due)
    if later is not None:
        tx.arm_worker_check(later)


def _wait_for_worker(tx: Transition, step: StepStatus, reason: WorkerWaitReason) -> None:
    """The grace period ended with the attempt still queued: say so, and why."""
    step = tx.own(step)
    step.waiting_for_worker = reason
    waited = (tx.now - step.dispatched_at).total_seconds() if step.dispatched_at else 0
    tx.emit(EventType.STEP_WAITING_FOR_WORKER, step=step.id, attempt=step.attempts,
            data={"task": step.task, "reason": reason.value,
                  "waited": round(max(waited, 0.0), 3),
                  "message": f"no worker has started task {step.task!r}: "
                             f"{_WAIT_REASON[reason]}"})


def _check_heartbeat(tx: Transition, cfg: StepConfig, step: StepStatus, *, due: datetime) -> None:
    """A heartbeat look: time the attempt out if its worker went quiet, else look again."""
    limit = steps.heartbeat_timeout(cfg)
    if limit is None:
        return
    window = timedelta(seconds=limit)
    last = step.heartbeat_at if step.state == StepState.RUNNING else None
    # Judged at the timer's due time: a timer handled a moment early would otherwise
    # re-arm itself at that same due time, which JetStream drops as a duplicate.
    if last is None or last + window > max(tx.now, due):
        # Not started yet (queued), or alive: look again one window after the last sign.
        base = last or tx.now
        tx.timer("heartbeat", base + window, step=step.id, attempt=step.attempts)
        tx.dirty = True
        return
    tx.time_out(cfg, step, ErrorInfo(
        code="heartbeat-timeout", retryable=True, step=step.id,
        message=f"no heartbeat from the worker for {limit}s"))


_Apply = Callable[[Transition, Any], ErrorInfo | None]

#: What each input (but the create, see ``decide``) does to a workflow, by its type.
_APPLY: dict[type[Any], _Apply] = {
    StartWorkflow: _apply_start,
    StopWorkflow: _apply_stop,
    SignalWorkflow: _apply_signal,
    PauseWorkflow: _apply_control,
    ResumeWorkflow: _apply_control,
    RetryWorkflow: _apply_control,
    ResultInput: _apply_result,
    MapJoined: _apply_joined,
    TimerFired: _apply_timer,
    PermitInput: limits.on_permit,
}

#: How steps begin by their kind; the transition cannot import the kinds (they build on it).
_KINDS = StepKinds(begin=kinds.begin, cancel_items=fanout.cancel_items,
                   admit=limits.admit, gate=limits.gate, settle=limits.settle)
