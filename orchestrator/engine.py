"""The workflow engine: a pure state machine.

``decide(record, input, now)`` returns the next record, the effects to publish and the
reply for the requester. No I/O, no clock, never raises for anything an input can
contain: a failed workflow is a value. Every input is idempotent — a duplicate or stale
input (a result for an attempt that is no longer running, a second start, a redelivered
create) changes nothing — which is what makes at-least-once delivery safe.

How a step goes (``_Tx.advance``): a pending step whose dependencies are all finished is
*ready*; its ``join`` rule and ``when`` condition decide whether it runs, is skipped or
is cancelled (a dependency failed under ``on_failure: continue``). A step that runs is
*begun* by its kind (:mod:`orchestrator.kinds`): worker kinds become task messages,
the others are timers, signals, child workflows or computed on the spot. When the flow
is over, a failed or stopped workflow first runs the compensations of its succeeded
steps, newest first (state ``compensating``), then ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from contracts.errors import (
    AlreadyFinished,
    ErrorInfo,
    IdConflict,
    TooManySignals,
    WorkflowNotFound,
)
from contracts.messages import CancelNotice, TaskFailed, TaskProgress, TaskSucceeded
from contracts.models import (
    STEP_ACTIVE,
    STEP_IN_FLIGHT,
    STEP_TERMINAL,
    WORKFLOW_ACTIVE,
    WORKFLOW_TERMINAL,
    Event,
    EventType,
    MapStep,
    PendingSignal,
    StepConfig,
    StepKind,
    StepState,
    StepStatus,
    WaitStep,
    WorkerWaitReason,
    WorkflowConfig,
    WorkflowState,
    WorkflowStatus,
    WorkflowStep,
    WorkflowSummary,
)
from contracts.namespaces import visible
from contracts.streams import TASK_HEARTBEAT
from contracts.subjects import Subjects
from contracts.webhooks import deliveries_for

from . import control, fanout, kinds
from .records import (
    CancelEffect,
    CreateWorkflow,
    Effect,
    EventEffect,
    MapJoined,
    NotifyBatchEffect,
    NotifyParentEffect,
    PauseWorkflow,
    Reply,
    ResultInput,
    ResumeWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StopWorkflow,
    SummaryEffect,
    TimerEffect,
    TimerFired,
    WebhookEffect,
    WorkflowCommandEffect,
    WorkflowDecision,
    WorkflowInput,
    WorkflowRecord,
)
from .tokens import attempt_token, same_token
from .workers import worker_presence

__all__ = ["MAX_PENDING_SIGNALS", "EngineSettings", "decide", "new_record"]

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


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Knobs of the engine that are not part of a workflow's config.

    Args:
        subjects: Names of the deployment (where workers send results).
        stop_grace: Seconds a stopping workflow waits for running steps to report.
        heartbeat: Seconds between a worker's in-progress acks.
        worker_grace: Seconds a dispatched attempt may wait for a worker before its step
            is marked ``waiting_for_worker`` (event ``step.waiting_for_worker``); None
            marks nothing (and arms no timer for it).
        result_key: The deployment's result key (:mod:`orchestrator.tokens`): every
            dispatched attempt carries a token made with it, and a report with the wrong
            token is refused. None sends no tokens and refuses nothing (engine tests).
    """

    subjects: Subjects = field(default_factory=Subjects)
    stop_grace: float = 10.0
    heartbeat: float = TASK_HEARTBEAT
    worker_grace: float | None = None
    result_key: bytes | None = field(default=None, repr=False)

    def token(self, workflow_id: str, step_id: str, attempt: int) -> str | None:
        """The result token of an attempt (None without a result key)."""
        if self.result_key is None:
            return None
        return attempt_token(self.result_key, workflow_id, step_id, attempt)


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
        if record is not None:
            if record.fingerprint == inp.fingerprint:
                return WorkflowDecision(record=None, reply=Reply(created=False))
            err = IdConflict(f"workflow {record.status.id} exists with a different config",
                             field="id")
            return WorkflowDecision(record=None, reply=Reply(error=err.info()))
        tx = _Tx(new_record(inp, now), now, settings)
        created: dict[str, object] = {"name": inp.config.name}
        if inp.rerun_of:
            created["rerun_of"] = inp.rerun_of
        tx.emit(EventType.WORKFLOW_CREATED, data=created)
        control.reuse(tx, inp)
        if inp.config.start:
            tx.start()
        return tx.decision(Reply(created=True))

    # A workflow outside the commander's namespaces answers as one that does not exist:
    # checked on the record the command applies to, so no earlier read races it.
    if isinstance(inp, StartWorkflow | StopWorkflow | SignalWorkflow | PauseWorkflow
                  | ResumeWorkflow | RetryWorkflow) and (
            record is None or not visible(record.status.namespace, inp.namespaces)):
        return WorkflowDecision(record=None, reply=Reply(
            error=WorkflowNotFound("no such workflow").info()))
    if isinstance(inp, ResultInput):
        forged = _forged(record, inp, settings)
        if forged is not None:
            return WorkflowDecision(record=None, reply=Reply(refused=forged))

    if record is None:
        # A result may come before its workflow's first save (tasks leave with it).
        return WorkflowDecision(record=None, reply=Reply(early=isinstance(inp, ResultInput)))

    tx = _Tx(record, now, settings)
    if isinstance(inp, StartWorkflow):
        if tx.status.state == WorkflowState.CREATED:
            tx.start()
    elif isinstance(inp, StopWorkflow | SignalWorkflow):
        if tx.status.state in WORKFLOW_TERMINAL:
            done = AlreadyFinished(f"workflow {tx.status.id} is already {tx.status.state}")
            return WorkflowDecision(record=None, reply=Reply(error=done.info()))
        if isinstance(inp, StopWorkflow):
            tx.stop(inp.reason)
        else:
            error = tx.on_signal(inp)
            if error is not None:
                return WorkflowDecision(record=None, reply=Reply(error=error))
    elif isinstance(inp, PauseWorkflow | ResumeWorkflow | RetryWorkflow):
        error = control.control(tx, inp)
        if error is not None:
            return WorkflowDecision(record=None, reply=Reply(error=error))
    elif isinstance(inp, ResultInput):
        tx.on_result(inp)
    elif isinstance(inp, MapJoined):
        tx.on_joined(inp)
    else:
        tx.on_timer(inp)
    tx.advance()
    return tx.decision(Reply(early=tx.early))


def _forged(record: WorkflowRecord | None, inp: ResultInput,
            settings: EngineSettings) -> ErrorInfo | None:
    """Why a report does not count (its token is not its attempt's), or None if it does.

    A plain step's current attempt is checked against the token its status keeps (what
    was sent, whatever the key is now); anything else, an earlier or later attempt, a map
    item, a workflow not stored yet, against the token the key gives. An attempt sent
    without a token (no key then) accepts any report.
    """
    res = inp.result
    step = None if record is None else next(
        (s for s in record.status.steps if s.id == res.step_id), None)
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


class _Tx:
    """One transition: a working copy of the record plus the effects so far."""

    def __init__(self, record: WorkflowRecord, now: datetime, settings: EngineSettings) -> None:
        # Copy on write: the status and its step list are copied here, a step only when
        # it changes (see own()); outputs are shared, never mutated.
        self.status = record.status.model_copy(update={
            "steps": list(record.status.steps), "signals": list(record.status.signals),
            "compensation": list(record.status.compensation)})
        self._index = {s.id: i for i, s in enumerate(self.status.steps)}
        self._owned: set[int] = set()
        self.owned_maps: set[int] = set()
        self.config: WorkflowConfig = record.config
        self.cfgs: dict[str, StepConfig] = {c.id: c for c in record.config.steps}
        self.fingerprint = record.fingerprint
        self.trace = record.trace
        self.outputs_bytes = record.outputs_bytes
        self.now = now
        self.settings = settings
        self.effects: list[Effect] = []
        self.dirty = False  # changed without an event (a heartbeat)
        self.early = False  # an input for a dispatch not saved yet (see on_result)
        self.state_before: WorkflowState | None = (
            None if record.status.last_seq == 0 else record.status.state)
        self.steps = {s.id: s for s in self.status.steps}

    # -- plumbing -----------------------------------------------------------------
    def own(self, step: StepStatus) -> StepStatus:
        """This transition's own copy of ``step``, safe to change."""
        if id(step) in self._owned:
            return step
        copy = step.model_copy()
        self.status.steps[self._index[step.id]] = copy
        self.steps[step.id] = copy
        self._owned.add(id(copy))
        return copy

    def decision(self, reply: Reply) -> WorkflowDecision:
        # Every change of state emits an event, so no effects means nothing changed
        # (but a heartbeat, which only moves a time).
        if not self.effects and not self.dirty:
            return WorkflowDecision(record=None, reply=reply)
        if self.status.state != self.state_before:
            # The list index follows the state (and nothing else: steps churn too much).
            self.effects.append(SummaryEffect(summary=WorkflowSummary.of(self.status),
                                              seq=self.status.last_seq))
        record = WorkflowRecord.model_construct(
            config=self.config, fingerprint=self.fingerprint, status=self.status,
            outputs_bytes=self.outputs_bytes, outbox=list(self.effects), outbox_at=self.now,
            trace=self.trace)
        return WorkflowDecision(record=record, effects=list(self.effects), reply=reply)

    def emit(self, type_: EventType, *, step: str | None = None, attempt: int | None = None,
             data: dict[str, object] | None = None, time: datetime | None = None) -> None:
        self.status.last_seq += 1
        event = Event(workflow_id=self.status.id, seq=self.status.last_seq, type=type_,
                      time=time or self.now, step_id=step, attempt=attempt, data=data or {})
        self.effects.append(EventEffect(event=event))
        self.effects.extend(WebhookEffect(delivery=d)
                            for d in deliveries_for(self.config.webhooks, event))

    def timer(self, purpose: Any, due: datetime, *, step: str | None = None,
              attempt: int = 0) -> None:
        self.effects.append(TimerEffect(timer=TimerFired(
            workflow_id=self.status.id, step_id=step, attempt=attempt, purpose=purpose,
            due=due)))

    def arm_worker_check(self, due: datetime) -> None:
        """Look at queued attempts at ``due``, unless a look is armed already.

        One timer per workflow, not per dispatch: a chain of quick steps costs one.
        The look arms the next one for whatever is still too young to judge.
        """
        if self.status.worker_check_at is None:
            self.status.worker_check_at = due
            self.timer("worker-grace", due, attempt=self.status.runs)

    @property
    def running(self) -> bool:
        return self.status.state == WorkflowState.RUNNING

    def context(self) -> dict[str, Any]:
        """What expressions see: input, finished steps, the workflow itself."""
        steps: dict[str, Any] = {}
        for s in self.status.steps:
            if s.state in STEP_TERMINAL:
                steps[s.id] = {"output": s.output, "state": s.state.value,
                               "error": s.error.model_dump(exclude_none=True)
                               if s.error else None}
        st = self.status
        return {"input": st.input, "steps": steps,
                "workflow": {"id": st.id, "name": st.name, "labels": st.labels}}

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self.status.state = WorkflowState.RUNNING
        self.status.started_at = self.now
        self.emit(EventType.WORKFLOW_STARTED)
        if self.config.timeout:
            self.timer("workflow-timeout", self.now + timedelta(seconds=self.config.timeout),
                       attempt=self.status.runs)
        self.advance()

    def stop(self, reason: str | None) -> None:
        st = self.status
        if st.state in (WorkflowState.STOPPING, WorkflowState.COMPENSATING):
            return  # already on its way out; compensations are not interrupted
        for s in list(st.steps):
            if s.compensates:
                continue  # kept for the compensation that follows the stop
            if s.state in (StepState.PENDING, StepState.RETRYING):
                s = self.own(s)
                s.state = StepState.CANCELLED
                s.next_attempt_at = None
            elif s.state == StepState.WAITING:
                self.cancel_step(s, "workflow stopped")
        in_flight = [s for s in st.steps if s.state in STEP_IN_FLIGHT]
        for s in in_flight:
            self.notify_cancel(s)
        if not in_flight:
            self.conclude(WorkflowState.STOPPED, None)
            return
        st.state = WorkflowState.STOPPING
        self.emit(EventType.WORKFLOW_STOPPING, data={"reason": reason} if reason else {})
        self.timer("stop-grace", self.now + timedelta(seconds=self.settings.stop_grace))

    def conclude(self, state: WorkflowState, error: ErrorInfo | None) -> None:
        """End a failed or stopped workflow, compensating its succeeded steps first."""
        st = self.status
        undo = sorted((s for s in st.steps if s.state == StepState.SUCCEEDED
                       and self.cfgs[s.id].compensate),
                      key=lambda s: (s.finished_at or self.now, self._index[s.id]),
                      reverse=True)
        comps = [c for s in undo if (c := self.cfgs[s.id].compensate) is not None
                 and self.steps[c].state == StepState.PENDING]
        if state == WorkflowState.COMPLETED or not comps:
            self.finish(state, error)
            return
        st.state = WorkflowState.COMPENSATING
        st.outcome = state
        st.error = error
        st.compensation = comps
        self.emit(EventType.WORKFLOW_COMPENSATING,
                  data={"steps": list(comps), "outcome": state.value})
        self.next_compensation()

    def next_compensation(self) -> None:
        """Begin the next compensation, or end the workflow when none is left."""
        st = self.status
        while st.state == WorkflowState.COMPENSATING:
            if any(self.steps[c].state in STEP_ACTIVE | {StepState.RETRYING}
                   for c in self.cfgs if self.steps[c].compensates):
                return
            if not st.compensation:
                outcome = st.outcome or WorkflowState.FAILED
                st.outcome = None
                self.finish(outcome, st.error)
                return
            comp = st.compensation.pop(0)
            self.begin(self.cfgs[comp], self.steps[comp])

    def finish(self, state: WorkflowState, error: ErrorInfo | None) -> None:
        st = self.status
        st.state = state
        st.finished_at = self.now
        st.error = error
        for s in list(st.steps):
            if s.state == StepState.PENDING:  # compensations nobody needed
                s = self.own(s)
                s.state = StepState.SKIPPED
        if state == WorkflowState.COMPLETED:
            self.emit(EventType.WORKFLOW_COMPLETED, data={"output": st.output})
        elif state == WorkflowState.FAILED:
            assert error is not None
            self.emit(EventType.WORKFLOW_FAILED,
                      data={"error": error.model_dump(exclude_none=True)})
        else:
            self.emit(EventType.WORKFLOW_STOPPED)
        if st.batch_id is not None:
            self.effects.append(NotifyBatchEffect(batch_id=st.batch_id, workflow_id=st.id,
                                                  state=state.value))
        if st.parent is not None:
            p = st.parent
            result: TaskSucceeded | TaskFailed
            # The parent's engine knows the child's report by the token of its step's
            # attempt, which the same key gives here.
            token = self.settings.token(p.workflow_id, p.step_id, p.attempt)
            if state == WorkflowState.COMPLETED:
                result = TaskSucceeded(workflow_id=p.workflow_id, step_id=p.step_id,
                                       attempt=p.attempt, output=st.output, token=token)
            else:
                result = TaskFailed(workflow_id=p.workflow_id, step_id=p.step_id,
                                    attempt=p.attempt, token=token, error=ErrorInfo(
                                        code=error.code if error else "child-stopped",
                                        message=f"child workflow {st.id} {state.value}"
                                        + (f": {error.message}" if error else ""),
                                        retryable=False))
            self.effects.append(NotifyParentEffect(result=result))

    def maybe_finish_stopping(self) -> None:
        if self.status.state == WorkflowState.STOPPING and not any(
                s.state in STEP_IN_FLIGHT for s in self.status.steps):
            self.conclude(WorkflowState.STOPPED, None)

    # -- scheduling ---------------------------------------------------------------
    def advance(self) -> None:
        """Run, skip or cancel every ready step until nothing changes; then maybe end."""
        progressed = True
        while progressed and self.running:
            progressed = False
            for cfg in self.config.steps:
                step = self.steps[cfg.id]
                if step.state != StepState.PENDING or step.compensates or not self.running:
                    continue
                verdict = self.readiness(cfg)
                if verdict is None:
                    continue
                progressed = True
                if verdict == "run":
                    self.begin(cfg, step)
                elif verdict == "cancel":
                    step = self.own(step)
                    step.state = StepState.CANCELLED
                    step.finished_at = self.now
                    self.emit(EventType.STEP_CANCELLED, step=step.id,
                              data={"reason": "a dependency failed"})
                else:
                    self.skip(step, verdict)
        self.maybe_complete()

    def readiness(self, cfg: StepConfig) -> str | None:
        """None (not yet), "run", "cancel", or the reason it is skipped."""
        deps = [self.steps[d] for d in cfg.depends_on]
        if any(d.state not in STEP_TERMINAL for d in deps):
            return None
        failed = any(d.state in (StepState.FAILED, StepState.CANCELLED) for d in deps)
        if cfg.join == "all":
            if failed:
                return "cancel"
            if any(d.state == StepState.SKIPPED for d in deps):
                return "a dependency was skipped"
        elif deps and not any(d.state == StepState.SUCCEEDED for d in deps):
            return "cancel" if failed else "every dependency was skipped"
        return "run"

    def skip(self, step: StepStatus, reason: str) -> None:
        step = self.own(step)
        step.state = StepState.SKIPPED
        step.finished_at = self.now
        self.emit(EventType.STEP_SKIPPED, step=step.id, data={"reason": reason})

    def begin(self, cfg: StepConfig, step: StepStatus) -> None:
        """Start one attempt of a step (its condition first, on the first attempt)."""
        step = self.own(step)
        first = step.attempts == step.attempt_base
        if cfg.when is not None and first:
            try:
                go = kinds.condition(cfg, self.context())
            except kinds.StepInputError as exc:
                step.attempts += 1
                self.fail_step(cfg, step, exc.error, final=True)
                return
            if not go:
                self.skip(step, "condition is false")
                return
        if first and cfg.total_timeout:
            self.timer("total-timeout", self.now + timedelta(seconds=cfg.total_timeout),
                       step=cfg.id, attempt=step.attempt_base + 1)
        step.attempts += 1
        step.next_attempt_at = None
        step.waiting_for_worker = None
        step.dispatched_at = self.now
        # Kept for the kinds whose attempts someone reports on: the token they must echo.
        step.token = (self.settings.token(self.status.id, step.id, step.attempts)
                      if cfg.task_type is not None or isinstance(cfg, WorkflowStep) else None)
        try:
            kinds.begin(self, cfg, step)
        except kinds.StepInputError as exc:
            self.fail_step(cfg, step, exc.error, final=True)
            return
        if step.state in STEP_ACTIVE and cfg.timeout:
            self.timer("timeout", self.now + timedelta(seconds=cfg.timeout), step=cfg.id,
                       attempt=step.attempts)

    def maybe_complete(self) -> None:
        st = self.status
        if not self.running:
            return
        flow = [s for s in st.steps if not s.compensates]
        if not all(s.state in STEP_TERMINAL for s in flow):
            return
        failed = [s for s in flow if s.state == StepState.FAILED]
        if failed:
            first = min(failed, key=lambda s: (s.finished_at or self.now, self._index[s.id]))
            err = first.error or ErrorInfo(code="step-failed", message="")
            self.conclude(WorkflowState.FAILED, ErrorInfo(
                code=err.code, message=f"step {first.id!r} failed: {err.message}",
                step=first.id, retryable=False))
            return
        try:
            st.output = kinds.workflow_output(self.config, self.context(), st.steps)
        except kinds.StepInputError as exc:
            self.conclude(WorkflowState.FAILED, exc.error.model_copy(
                update={"code": "output-error", "field": "output", "step": None}))
            return
        self.finish(WorkflowState.COMPLETED, None)

    # -- outcomes of steps --------------------------------------------------------
    def succeed(self, cfg: StepConfig, step: StepStatus, output: Any, *,
                attempt: int | None = None) -> None:
        """A step's attempt produced ``output`` (size and schema are checked here)."""
        step = self.own(step)
        try:
            size = kinds.check_output(cfg, output, self.outputs_bytes)
        except kinds.StepInputError as exc:
            self.fail_step(cfg, step, exc.error, final=True)
            return
        self.outputs_bytes += size
        step.state = StepState.SUCCEEDED
        step.output = output
        step.error = None
        step.finished_at = self.now
        self.emit(EventType.STEP_SUCCEEDED, step=step.id, attempt=attempt or step.attempts,
                  data={"output": output})
        self.after_step_ended(step)

    def after_step_ended(self, step: StepStatus) -> None:
        if self.status.state == WorkflowState.STOPPING:
            self.maybe_finish_stopping()
        elif self.status.state == WorkflowState.COMPENSATING and step.compensates:
            self.next_compensation()

    def on_failure(self, cfg: StepConfig, step: StepStatus, error: ErrorInfo) -> None:
        step = self.own(step)
        if self.status.state == WorkflowState.STOPPING:
            step.state = StepState.CANCELLED
            step.error = error
            step.finished_at = self.now
            step.waiting_for_worker = None
            self.emit(EventType.STEP_CANCELLED, step=step.id, attempt=step.attempts,
                      data={"error": error.model_dump(exclude_none=True)})
            self.maybe_finish_stopping()
            return
        error = error.model_copy(update={"step": step.id})
        final = (not error.retryable or error.code in cfg.retry.non_retryable_codes
                 or step.attempts - step.attempt_base >= cfg.retry.max_attempts)
        self.fail_step(cfg, step, error, final=final)

    def fail_step(self, cfg: StepConfig, step: StepStatus, error: ErrorInfo, *,
                  final: bool) -> None:
        step = self.own(step)
        step.error = error
        step.waiting_for_worker = None
        err_data = error.model_dump(exclude_none=True)
        if not final:
            delay = cfg.retry.delay_before(step.attempts - step.attempt_base + 1,
                                           seed=f"{self.status.id}:{step.id}")
            step.state = StepState.RETRYING
            step.next_attempt_at = self.now + timedelta(seconds=delay)
            self.emit(EventType.STEP_RETRYING, step=step.id, attempt=step.attempts,
                      data={"error": err_data, "next_attempt": step.attempts + 1,
                            "delay": delay})
            if delay <= 0 and self.status.state != WorkflowState.PAUSED:
                self.begin(cfg, step)
            else:  # a paused workflow starts nothing: the timer waits for the resume
                self.timer("retry", step.next_attempt_at, step=step.id,
                           attempt=step.attempts + 1)
            return
        step.state = StepState.FAILED
        step.finished_at = self.now
        step.next_attempt_at = None
        self.emit(EventType.STEP_FAILED, step=step.id, attempt=step.attempts,
                  data={"error": err_data})
        if step.compensates:
            self.after_step_ended(step)
        elif self.running and self.config.on_failure == "fail-fast":
            self.cancel_all("another step failed")
            self.conclude(WorkflowState.FAILED, ErrorInfo(
                code=error.code, message=f"step {step.id!r} failed: {error.message}",
                step=step.id, retryable=False))

    def cancel_step(self, step: StepStatus, reason: str) -> None:
        """Cancel an active step now (its worker or child is told to stop)."""
        step = self.own(step)
        self.notify_cancel(step)
        if step.child_id is not None and step.state == StepState.WAITING:
            self.effects.append(WorkflowCommandEffect(
                workflow_id=step.child_id, command=StopWorkflow(reason=f"parent: {reason}")))
        step.state = StepState.CANCELLED
        step.finished_at = self.now
        step.next_attempt_at = None
        step.waiting_for_worker = None
        self.emit(EventType.STEP_CANCELLED, step=step.id, attempt=step.attempts,
                  data={"reason": reason})

    def notify_cancel(self, step: StepStatus) -> None:
        """Tell whoever runs the step's current attempt (or its items) to stop."""
        if step.map is not None:
            fanout.cancel_items(self, step)
        elif step.state in STEP_IN_FLIGHT:
            self.effects.append(CancelEffect(notice=CancelNotice(
                workflow_id=self.status.id, step_id=step.id, attempt=step.attempts)))

    def cancel_all(self, reason: str) -> None:
        """Fail fast: cancel what runs, drop what has not started."""
        for other in list(self.status.steps):
            if other.compensates:
                continue
            if other.state in STEP_ACTIVE:
                self.cancel_step(other, reason)
            elif other.state in (StepState.PENDING, StepState.RETRYING):
                other = self.own(other)
                other.state = StepState.CANCELLED
                other.next_attempt_at = None

    # -- inputs -------------------------------------------------------------------
    def on_signal(self, sig: SignalWorkflow) -> ErrorInfo | None:
        st = self.status
        for cfg in self.config.steps:
            step = self.steps[cfg.id]
            if (isinstance(cfg, WaitStep) and cfg.signal == sig.name
                    and step.state == StepState.WAITING):
                self.emit(EventType.SIGNAL_RECEIVED, step=cfg.id, data={"name": sig.name})
                self.succeed(cfg, step, sig.payload)
                return None
        if len(st.signals) >= MAX_PENDING_SIGNALS:
            return TooManySignals(f"{MAX_PENDING_SIGNALS} signals are already waiting",
                                  field="name").info()
        st.signals.append(PendingSignal(name=sig.name, payload=sig.payload,
                                        received_at=self.now))
        self.emit(EventType.SIGNAL_RECEIVED, data={"name": sig.name, "kept": True})
        return None

    def take_signal(self, name: str) -> PendingSignal | None:
        """The oldest kept signal of that name, removed (a wait step starting)."""
        for i, sig in enumerate(self.status.signals):
            if sig.name == name:
                return self.status.signals.pop(i)
        return None

    def on_joined(self, inp: MapJoined) -> None:
        step = self.steps.get(inp.step_id)
        if step is not None and self.status.state in WORKFLOW_ACTIVE:
            cfg = self.cfgs[step.id]
            if isinstance(cfg, MapStep):
                fanout.on_joined(self, cfg, self.own(step), inp)

    def on_result(self, inp: ResultInput) -> None:
        res = inp.result
        item = fanout.parse_item(res.step_id)
        if item is not None:
            mapped = self.steps.get(item[0])
            cfg = self.cfgs.get(item[0])
            if (mapped is not None and isinstance(cfg, MapStep)
                    and mapped.state == StepState.RUNNING and mapped.attempts >= 1
                    and self.status.state in WORKFLOW_ACTIVE):
                fanout.on_item_result(self, cfg, self.own(mapped), item[1], inp)
            return
        step = self.steps.get(res.step_id)
        if (step is not None and step.attempts < res.attempt
                and self.status.state not in WORKFLOW_TERMINAL):
            # An attempt this record has not dispatched yet: its task left while the
            # dispatch was being saved, and this copy is older than that save.
            self.early = True
            return
        if (step is None or step.attempts != res.attempt or step.state not in STEP_ACTIVE
                or self.status.state in WORKFLOW_TERMINAL):
            return  # stale or duplicate: that attempt is no longer running
        cfg = self.cfgs[res.step_id]
        if cfg.task_type is None and not isinstance(cfg, WorkflowStep):
            return  # the engine runs this kind itself; nobody reports on it
        step = self.own(step)
        if step.state == StepState.DISPATCHED:
            step.state = StepState.RUNNING
            step.waiting_for_worker = None
            step.started_at = res.started_at or self.now
            step.heartbeat_at = step.started_at
            self.emit(EventType.STEP_STARTED, step=step.id, attempt=res.attempt,
                      time=step.started_at)
        if isinstance(res, TaskProgress):
            step.heartbeat_at = self.now
            self.dirty = True
            if res.progress is not None:
                step.progress = res.progress
                self.emit(EventType.STEP_PROGRESS, step=step.id, attempt=res.attempt,
                          data={"progress": res.progress})
        elif isinstance(res, TaskSucceeded):
            self.succeed(cfg, step, res.output, attempt=res.attempt)
        else:
            self.on_failure(cfg, step, res.error)

    def on_timer(self, timer: TimerFired) -> None:
        st = self.status
        if st.state in WORKFLOW_TERMINAL:
            return
        if st.state == WorkflowState.PAUSED:
            # Held until the resume, which fires it (its guards are checked then).
            st.deferred_timers.append(timer.model_dump(mode="json"))
            self.dirty = True
            return
        if timer.purpose == "stop-grace":
            if st.state != WorkflowState.STOPPING:
                return
            for s in list(st.steps):
                if s.state in STEP_IN_FLIGHT:
                    s = self.own(s)
                    s.state = StepState.CANCELLED
                    s.finished_at = self.now
                    s.waiting_for_worker = None
                    self.emit(EventType.STEP_CANCELLED, step=s.id, attempt=s.attempts,
                              data={"reason": "no answer within the stop grace period"})
            self.conclude(WorkflowState.STOPPED, None)
            return
        if timer.purpose == "workflow-timeout":
            if self.running and timer.attempt in (0, st.runs):
                self.cancel_all("the workflow timed out")
                self.conclude(WorkflowState.FAILED, ErrorInfo(
                    code="workflow-timeout", retryable=False,
                    message=f"the workflow did not finish within {self.config.timeout}s"))
            return
        if timer.purpose == "worker-grace":
            self.check_workers(timer)
            return
        item = fanout.parse_item(timer.step_id or "")
        if item is not None:
            mapped = self.steps.get(item[0])
            cfg_ = self.cfgs.get(item[0])
            if (mapped is not None and isinstance(cfg_, MapStep)
                    and mapped.state == StepState.RUNNING and st.state in WORKFLOW_ACTIVE):
                fanout.on_item_timer(self, cfg_, self.own(mapped), item[1], timer)
            return
        step = self.steps.get(timer.step_id or "")
        if step is None or st.state not in (WorkflowState.RUNNING, WorkflowState.COMPENSATING):
            return
        cfg = self.cfgs[step.id]
        if timer.purpose == "retry":
            if step.state == StepState.RETRYING and step.attempts + 1 == timer.attempt:
                self.begin(cfg, step)
        elif timer.purpose == "total-timeout":
            if (step.state in STEP_ACTIVE | {StepState.RETRYING}
                    and timer.attempt == step.attempt_base + 1):
                self.time_out(cfg, step, ErrorInfo(
                    code="step-total-timeout", retryable=False, step=step.id,
                    message=f"the step did not finish within {cfg.total_timeout}s"))
        elif step.attempts != timer.attempt or step.state not in STEP_ACTIVE:
            return  # that attempt is over
        elif timer.purpose == "sleep":
            if step.state == StepState.WAITING and step.wake_at is not None:
                self.succeed(cfg, step, {"slept_until": step.wake_at.isoformat()})
        elif timer.purpose == "heartbeat":
            self.check_heartbeat(cfg, step, due=timer.due)
        elif timer.purpose == "schedule-to-start":
            if step.state == StepState.DISPATCHED:
                limit = kinds.schedule_to_start(cfg)
                self.time_out(cfg, step, ErrorInfo(
                    code="schedule-to-start-timeout", retryable=True, step=step.id,
                    message=f"no worker started task {step.task!r} (attempt "
                            f"{timer.attempt}) within {limit}s",
                    details={"task": step.task}))
        else:
            self.time_out(cfg, step, ErrorInfo(
                code="step-timeout", retryable=True, step=step.id,
                message=f"attempt {timer.attempt} timed out after {cfg.timeout}s"))

    def time_out(self, cfg: StepConfig, step: StepStatus, error: ErrorInfo) -> None:
        """An attempt ran out of time: tell whoever runs it, then fail the attempt."""
        step = self.own(step)
        if step.state in STEP_IN_FLIGHT:
            self.notify_cancel(step)
        elif step.child_id is not None and step.state == StepState.WAITING:
            self.effects.append(WorkflowCommandEffect(
                workflow_id=step.child_id, command=StopWorkflow(reason="step timed out")))
        if step.state == StepState.RETRYING:
            step.next_attempt_at = None
            self.fail_step(cfg, step, error, final=True)
        else:
            self.on_failure(cfg, step, error)

    def check_workers(self, timer: TimerFired) -> None:
        """The worker-grace look: mark attempts queued for the grace period, and arm the
        next look for those dispatched since."""
        st = self.status
        if st.worker_check_at is None or timer.due != st.worker_check_at:
            return  # a look of an earlier run, or one this record already took
        st.worker_check_at = None
        self.dirty = True
        grace = self.settings.worker_grace
        if not grace or st.state not in (WorkflowState.RUNNING, WorkflowState.COMPENSATING):
            return
        window = timedelta(seconds=grace)
        later: datetime | None = None
        for step in list(st.steps):
            if (step.state != StepState.DISPATCHED or step.waiting_for_worker is not None
                    or step.dispatched_at is None or step.task is None):
                continue
            due = step.dispatched_at + window
            if due <= max(self.now, timer.due):
                reason = (WorkerWaitReason.UNKNOWN if timer.consumers is None else
                          worker_presence(timer.consumers,
                                          self.settings.subjects.task(step.task)))
                self.wait_for_worker(step, reason)
            else:
                later = due if later is None else min(later, due)
        if later is not None:
            self.arm_worker_check(later)

    def wait_for_worker(self, step: StepStatus, reason: WorkerWaitReason) -> None:
        """The grace period ended with the attempt still queued: say so, and why."""
        step = self.own(step)
        step.waiting_for_worker = reason
        waited = (self.now - step.dispatched_at).total_seconds() if step.dispatched_at else 0
        self.emit(EventType.STEP_WAITING_FOR_WORKER, step=step.id, attempt=step.attempts,
                  data={"task": step.task, "reason": reason.value,
                        "waited": round(max(waited, 0.0), 3),
                        "message": f"no worker has started task {step.task!r}: "
                                   f"{_WAIT_REASON[reason]}"})

    def check_heartbeat(self, cfg: StepConfig, step: StepStatus, *, due: datetime) -> None:
        limit = kinds.heartbeat_timeout(cfg)
        if limit is None:
            return
        window = timedelta(seconds=limit)
        last = step.heartbeat_at if step.state == StepState.RUNNING else None
        # Judged at the timer's due time: a timer handled a moment early would otherwise
        # re-arm itself at that same due time, which JetStream drops as a duplicate.
        if last is None or last + window > max(self.now, due):
            # Not started yet (queued), or alive: look again one window after the last sign.
            base = last or self.now
            self.timer("heartbeat", base + window, step=step.id, attempt=step.attempts)
            self.dirty = True
            return
        self.time_out(cfg, step, ErrorInfo(
            code="heartbeat-timeout", retryable=True, step=step.id,
            message=f"no heartbeat from the worker for {limit}s"))
