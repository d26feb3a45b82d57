"""The transition: one input's working copy of a workflow record, and how a workflow goes.

:class:`Transition` is the engine's working room. :func:`orchestrator.engine.decide` makes
one per input on an existing record, hands it to the input's handler, and returns
``Transition.decision``. The step kinds (:mod:`orchestrator.kinds`, :mod:`orchestrator.fanout`)
and operator control (:mod:`orchestrator.control`) build on it; this module imports none
of them (what it needs of the kinds comes in as :class:`StepKinds`), so the engine's
modules import one another in one direction only.

Pure like the rest of the engine: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from contracts.errors import ErrorInfo
from contracts.messages import CancelNotice, TaskFailed, TaskSucceeded
from contracts.models import (
    STEP_ACTIVE,
    STEP_IN_FLIGHT,
    STEP_TERMINAL,
    Event,
    EventType,
    PendingSignal,
    StepConfig,
    StepState,
    StepStatus,
    WorkflowConfig,
    WorkflowState,
    WorkflowStep,
    WorkflowSummary,
)
from contracts.subjects import Subjects
from contracts.webhooks import deliveries_for
from transport.streams import TASK_HEARTBEAT

from . import steps
from .records import (
    CancelEffect,
    Effect,
    EventEffect,
    NotifyBatchEffect,
    NotifyParentEffect,
    Reply,
    StopWorkflow,
    SummaryEffect,
    TimerEffect,
    TimerFired,
    WebhookEffect,
    WorkflowCommandEffect,
    WorkflowDecision,
    WorkflowRecord,
)
from .steps import StepInputError
from .tokens import attempt_token

__all__ = ["EngineSettings", "StepKinds", "Transition"]


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


@dataclass(frozen=True, slots=True)
class StepKinds:
    """What a transition asks of the step kinds, which live above it.

    Args:
        begin: Begin attempt ``step.attempts`` of a step by its kind
            (:func:`orchestrator.kinds.begin`); raises ``StepInputError`` when the
            step's expressions fail.
        cancel_items: Tell whoever runs a map step's items to stop
            (:func:`orchestrator.fanout.cancel_items`).
        admit, gate, settle: Flow control (:mod:`orchestrator.limits`).
    """

    begin: Callable[[Transition, StepConfig, StepStatus], None]
    cancel_items: Callable[[Transition, StepStatus], None]
    #: Flow control (:mod:`orchestrator.limits`): hold a run for its permits (True:
    #: held), hold an attempt for its permits, give back what ended (end of a transition).
    admit: Callable[[Transition], bool]
    gate: Callable[[Transition, StepConfig, StepStatus], bool]
    settle: Callable[[Transition], None]


class Transition:
    """One transition: a working copy of a workflow's record plus the effects so far.

    Owns the record's bookkeeping for the length of one input: copy on write of the
    status and its steps (:meth:`own`), events and their webhooks (:meth:`emit`), timers,
    and the decision that ends it (:meth:`decision`). It also owns how a workflow and its
    steps go: start and stop, running, skipping or cancelling ready steps
    (:meth:`advance`), an attempt's begin, success, failure, retry and time-out,
    cancellation, compensation and the end. What each *input* means belongs to
    :mod:`orchestrator.engine` (its dispatch table); how each step *kind* begins to
    :mod:`orchestrator.kinds` and :mod:`orchestrator.fanout`, handed in as ``kinds``
    (they build on this class, so it cannot import them).

    Args:
        record: The stored record (not changed: the transition works on a copy).
        now: The time of the decision.
        settings: Engine knobs.
        kinds: How a step begins by its kind, and how a map step's items are stopped.
    """

    def __init__(self, record: WorkflowRecord, now: datetime, settings: EngineSettings,
                 kinds: StepKinds) -> None:
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
        self.early = False  # a result for a dispatch not saved yet (engine._apply_result)
        self.state_before: WorkflowState | None = (
            None if record.status.last_seq == 0 else record.status.state)
        self.steps = {s.id: s for s in self.status.steps}
        self.kinds = kinds

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

    def end_input(self) -> None:
        """Close one input's part of the transition (the engine's ``decide_all`` applies
        several inputs to one transition): the permits of what ended go back, and a
        change of state is written to the list, as a decision of that input alone would.
        """
        self.kinds.settle(self)
        # Every change of state emits an event, so no effects means nothing changed
        # (but a heartbeat, which only moves a time).
        if (self.effects or self.dirty) and self.status.state != self.state_before:
            # The list index follows the state (and nothing else: steps churn too much).
            self.effects.append(SummaryEffect(summary=WorkflowSummary.of(self.status),
                                              seq=self.status.last_seq))
            self.state_before = self.status.state

    def decision(self, reply: Reply) -> WorkflowDecision:
        self.end_input()
        if not self.effects and not self.dirty:
            return WorkflowDecision(record=None, reply=reply)
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
        if self.kinds.admit(self):
            return  # queued for its permits; started when it has them
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
            if s.state in (StepState.PENDING, StepState.RETRYING, StepState.THROTTLED):
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
        resumed = step.state == StepState.THROTTLED  # got its permits: checked already
        if cfg.when is not None and first and not resumed:
            try:
                go = steps.condition(cfg, self.context())
            except StepInputError as exc:
                step.attempts += 1
                self.fail_step(cfg, step, exc.error, final=True)
                return
            if not go:
                self.skip(step, "condition is false")
                return
        if first and cfg.total_timeout and not resumed:
            self.timer("total-timeout", self.now + timedelta(seconds=cfg.total_timeout),
                       step=cfg.id, attempt=step.attempt_base + 1)
        if self.kinds.gate(self, cfg, step):
            return  # throttled for its permits; begun again when it has them
        step.attempts += 1
        step.next_attempt_at = None
        step.waiting_for_worker = None
        step.dispatched_at = self.now
        # Kept for the kinds whose attempts someone reports on: the token they must echo.
        step.token = (self.settings.token(self.status.id, step.id, step.attempts)
                      if cfg.task_type is not None or isinstance(cfg, WorkflowStep) else None)
        try:
            self.kinds.begin(self, cfg, step)
        except StepInputError as exc:
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
            st.output = steps.workflow_output(self.config, self.context(), st.steps)
        except StepInputError as exc:
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
            size = steps.check_output(cfg, output, self.outputs_bytes)
        except StepInputError as exc:
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
            self.kinds.cancel_items(self, step)
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
            elif other.state in (StepState.PENDING, StepState.RETRYING, StepState.THROTTLED):
                other = self.own(other)
                other.state = StepState.CANCELLED
                other.next_attempt_at = None

    def time_out(self, cfg: StepConfig, step: StepStatus, error: ErrorInfo) -> None:
        """An attempt ran out of time: tell whoever runs it, then fail the attempt."""
        step = self.own(step)
        if step.state in STEP_IN_FLIGHT:
            self.notify_cancel(step)
        elif step.child_id is not None and step.state == StepState.WAITING:
            self.effects.append(WorkflowCommandEffect(
                workflow_id=step.child_id, command=StopWorkflow(reason="step timed out")))
        if step.state in (StepState.RETRYING, StepState.THROTTLED):
            if step.state == StepState.THROTTLED:
                step.attempts += 1  # the attempt that never began fails
            step.next_attempt_at = None
            self.fail_step(cfg, step, error, final=True)
        else:
            self.on_failure(cfg, step, error)

    # -- kept signals -------------------------------------------------------------
    def take_signal(self, name: str) -> PendingSignal | None:
        """The oldest kept signal of that name, removed (a wait step starting)."""
        for i, sig in enumerate(self.status.signals):
            if sig.name == name:
                return self.status.signals.pop(i)
        return None
