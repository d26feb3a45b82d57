"""The workflow engine: a pure state machine.

``decide(record, input, now)`` returns the next record, the effects to publish and the
reply for the requester. No I/O, no clock, never raises for anything an input can
contain: a failed workflow is a value. Every input is idempotent — a duplicate or stale
input (a result for an attempt that is no longer running, a second start, a redelivered
create) changes nothing — which is what makes at-least-once delivery safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from contracts.errors import AlreadyFinished, ErrorInfo, IdConflict, WorkflowNotFound
from contracts.messages import CancelNotice, TaskFailed, TaskMessage, TaskProgress, TaskSucceeded
from contracts.models import (
    MAX_OUTPUTS_BYTES,
    MAX_STEP_OUTPUT_BYTES,
    STEP_IN_FLIGHT,
    WORKFLOW_TERMINAL,
    Event,
    EventType,
    StepConfig,
    StepState,
    StepStatus,
    WorkflowConfig,
    WorkflowState,
    WorkflowStatus,
)
from contracts.refs import RefError, render
from contracts.streams import TASK_HEARTBEAT
from contracts.subjects import Subjects

from .records import (
    CancelEffect,
    CreateWorkflow,
    Effect,
    EventEffect,
    NotifyBatchEffect,
    Reply,
    ResultInput,
    StartWorkflow,
    StopWorkflow,
    TaskEffect,
    TimerEffect,
    TimerFired,
    WorkflowDecision,
    WorkflowInput,
    WorkflowRecord,
)

__all__ = ["EngineSettings", "decide", "new_record"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Knobs of the engine that are not part of a workflow's config.

    Args:
        subjects: Names of the deployment (where workers send results).
        stop_grace: Seconds a stopping workflow waits for running steps to report.
        heartbeat: Seconds between a worker's in-progress acks.
    """

    subjects: Subjects = field(default_factory=Subjects)
    stop_grace: float = 10.0
    heartbeat: float = TASK_HEARTBEAT


def new_record(inp: CreateWorkflow, now: datetime) -> WorkflowRecord:
    """The record of a workflow just created (state ``created``, no events yet)."""
    cfg = inp.config
    assert cfg.id is not None, "the API assigns an id before creating"
    status = WorkflowStatus(
        id=cfg.id, name=cfg.name, state=WorkflowState.CREATED, input=cfg.input,
        labels=cfg.labels, batch_id=inp.batch_id, created_at=now,
        steps=[StepStatus(id=s.id, task=s.task) for s in cfg.steps],
    )
    # Built from validated parts; model_construct skips re-running the graph check.
    return WorkflowRecord.model_construct(config=cfg, fingerprint=inp.fingerprint,
                                          status=status, outputs_bytes=0, outbox=[],
                                          outbox_at=None)


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
        tx.emit(EventType.WORKFLOW_CREATED, data={"name": inp.config.name})
        if inp.config.start:
            tx.start()
        return tx.decision(Reply(created=True))

    if record is None:
        if isinstance(inp, StartWorkflow | StopWorkflow):
            return WorkflowDecision(record=None, reply=Reply(
                error=WorkflowNotFound("no such workflow").info()))
        return WorkflowDecision(record=None)

    tx = _Tx(record, now, settings)
    if isinstance(inp, StartWorkflow):
        if tx.status.state == WorkflowState.CREATED:
            tx.start()
    elif isinstance(inp, StopWorkflow):
        if tx.status.state in WORKFLOW_TERMINAL:
            done = AlreadyFinished(f"workflow {tx.status.id} is already {tx.status.state}")
            return WorkflowDecision(record=None, reply=Reply(error=done.info()))
        tx.stop(inp.reason)
    elif isinstance(inp, ResultInput):
        tx.on_result(inp)
    else:
        tx.on_timer(inp)
    return tx.decision(Reply())


class _Tx:
    """One transition: a working copy of the record plus the effects so far."""

    def __init__(self, record: WorkflowRecord, now: datetime, settings: EngineSettings) -> None:
        # Copy on write: the status and its step list are copied here, a step only when
        # it changes (see own()); outputs are shared, never mutated.
        self.status = record.status.model_copy(update={"steps": list(record.status.steps)})
        self._index = {s.id: i for i, s in enumerate(self.status.steps)}
        self._owned: set[int] = set()
        self.config: WorkflowConfig = record.config
        self.fingerprint = record.fingerprint
        self.outputs_bytes = record.outputs_bytes
        self.now = now
        self.settings = settings
        self.effects: list[Effect] = []
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
        # Every change of state emits an event, so no effects means nothing changed.
        if not self.effects:
            return WorkflowDecision(record=None, reply=reply)
        record = WorkflowRecord.model_construct(
            config=self.config, fingerprint=self.fingerprint, status=self.status,
            outputs_bytes=self.outputs_bytes, outbox=list(self.effects), outbox_at=self.now)
        return WorkflowDecision(record=record, effects=list(self.effects), reply=reply)

    def emit(self, type_: EventType, *, step: str | None = None, attempt: int | None = None,
             data: dict[str, object] | None = None, time: datetime | None = None) -> None:
        self.status.last_seq += 1
        event = Event(workflow_id=self.status.id, seq=self.status.last_seq, type=type_,
                      time=time or self.now, step_id=step, attempt=attempt, data=data or {})
        self.effects.append(EventEffect(event=event))

    @property
    def active(self) -> bool:
        return self.status.state == WorkflowState.RUNNING

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self.status.state = WorkflowState.RUNNING
        self.status.started_at = self.now
        self.emit(EventType.WORKFLOW_STARTED)
        self.dispatch_ready_steps()

    def stop(self, reason: str | None) -> None:
        st = self.status
        if st.state == WorkflowState.STOPPING:
            return
        in_flight = [s for s in st.steps if s.state in STEP_IN_FLIGHT]
        for s in list(st.steps):
            if s.state in (StepState.PENDING, StepState.RETRYING):
                s = self.own(s)
                s.state = StepState.CANCELLED
                s.next_attempt_at = None
        for s in in_flight:
            self.effects.append(CancelEffect(notice=CancelNotice(
                workflow_id=st.id, step_id=s.id, attempt=s.attempts)))
        if not in_flight:
            self.finish(WorkflowState.STOPPED, None)
            return
        st.state = WorkflowState.STOPPING
        self.emit(EventType.WORKFLOW_STOPPING, data={"reason": reason} if reason else {})
        self.effects.append(TimerEffect(timer=TimerFired(
            workflow_id=st.id, purpose="stop-grace",
            due=self.now + timedelta(seconds=self.settings.stop_grace))))

    def finish(self, state: WorkflowState, error: ErrorInfo | None) -> None:
        st = self.status
        st.state = state
        st.finished_at = self.now
        st.error = error
        data: dict[str, object] = {}
        if state == WorkflowState.COMPLETED:
            self.emit(EventType.WORKFLOW_COMPLETED, data={"output": st.output})
        elif state == WorkflowState.FAILED:
            assert error is not None
            data = {"error": error.model_dump(exclude_none=True)}
            self.emit(EventType.WORKFLOW_FAILED, data=data)
        else:
            self.emit(EventType.WORKFLOW_STOPPED)
        if st.batch_id is not None:
            self.effects.append(NotifyBatchEffect(batch_id=st.batch_id, workflow_id=st.id,
                                                  state=state.value))

    def maybe_finish_stopping(self) -> None:
        if self.status.state == WorkflowState.STOPPING and not any(
                s.state in STEP_IN_FLIGHT for s in self.status.steps):
            self.finish(WorkflowState.STOPPED, None)

    # -- dispatch -----------------------------------------------------------------
    def outputs(self) -> dict[str, object]:
        return {s.id: s.output for s in self.status.steps if s.state == StepState.SUCCEEDED}

    def dispatch_ready_steps(self) -> None:
        """Dispatch every pending step whose dependencies all succeeded."""
        for cfg in self.config.steps:
            step = self.steps[cfg.id]
            if step.state != StepState.PENDING or not self.active:
                continue
            if all(self.steps[d].state == StepState.SUCCEEDED for d in cfg.depends_on):
                self.dispatch(cfg, step)
        self.maybe_complete()

    def dispatch(self, cfg: StepConfig, step: StepStatus) -> None:
        step = self.own(step)
        try:
            task_input = render(cfg.input, workflow_input=self.status.input,
                                outputs=self.outputs())
        except RefError as exc:
            step.attempts += 1
            self.fail_step(cfg, step, ErrorInfo(code="input-error", message=str(exc),
                                                step=cfg.id), final=True)
            return
        step.attempts += 1
        step.state = StepState.DISPATCHED
        step.dispatched_at = self.now
        step.next_attempt_at = None
        attempt = step.attempts
        deadline = self.now + timedelta(seconds=cfg.timeout) if cfg.timeout else None
        wid = self.status.id
        self.effects.append(TaskEffect(task=TaskMessage(
            workflow_id=wid, step_id=cfg.id, attempt=attempt, task=cfg.task,
            input=task_input,  # a dict rendered stays a dict
            idempotency_key=f"{wid}:{cfg.id}:{attempt}",
            reply_to=self.settings.subjects.result(wid), deadline=deadline,
            heartbeat_interval=self.settings.heartbeat)))
        self.emit(EventType.STEP_DISPATCHED, step=cfg.id, attempt=attempt,
                  data={"task": cfg.task})
        if deadline is not None:
            self.effects.append(TimerEffect(timer=TimerFired(
                workflow_id=wid, step_id=cfg.id, attempt=attempt, purpose="timeout",
                due=deadline)))

    def maybe_complete(self) -> None:
        st = self.status
        if not self.active or not all(s.state == StepState.SUCCEEDED for s in st.steps):
            return
        try:
            st.output = self.workflow_output()
        except RefError as exc:
            self.finish(WorkflowState.FAILED, ErrorInfo(code="output-error", message=str(exc),
                                                        field="output"))
            return
        self.finish(WorkflowState.COMPLETED, None)

    def workflow_output(self) -> object:
        outputs = self.outputs()
        if self.config.output is not None:
            return render(self.config.output, workflow_input=self.status.input, outputs=outputs)
        needed = {d for s in self.config.steps for d in s.depends_on}
        return {sid: out for sid, out in outputs.items() if sid not in needed}

    # -- results and timers -------------------------------------------------------
    def on_result(self, inp: ResultInput) -> None:
        res = inp.result
        step = self.steps.get(res.step_id)
        if (step is None or step.attempts != res.attempt or step.state not in STEP_IN_FLIGHT
                or self.status.state in WORKFLOW_TERMINAL):
            return  # stale or duplicate: that attempt is no longer running
        cfg = self.config.step(res.step_id)
        step = self.own(step)
        if step.state == StepState.DISPATCHED:
            step.state = StepState.RUNNING
            step.started_at = res.started_at or self.now
            self.emit(EventType.STEP_STARTED, step=step.id, attempt=res.attempt,
                      time=step.started_at)
        if isinstance(res, TaskProgress):
            step.progress = res.progress
            self.emit(EventType.STEP_PROGRESS, step=step.id, attempt=res.attempt,
                      data={"progress": res.progress})
        elif isinstance(res, TaskSucceeded):
            size = len(json.dumps(res.output, separators=(",", ":")))
            if size > MAX_STEP_OUTPUT_BYTES or self.outputs_bytes + size > MAX_OUTPUTS_BYTES:
                limit = (MAX_STEP_OUTPUT_BYTES if size > MAX_STEP_OUTPUT_BYTES
                         else MAX_OUTPUTS_BYTES - self.outputs_bytes)
                self.fail_step(cfg, step, ErrorInfo(
                    code="output-too-large", step=step.id,
                    message=f"output of {size} bytes is over the limit of {limit} bytes"),
                    final=True)
                return
            self.outputs_bytes += size
            step.state = StepState.SUCCEEDED
            step.output = res.output
            step.error = None
            step.finished_at = self.now
            self.emit(EventType.STEP_SUCCEEDED, step=step.id, attempt=res.attempt,
                      data={"output": res.output})
            if self.status.state == WorkflowState.STOPPING:
                self.maybe_finish_stopping()
            else:
                self.dispatch_ready_steps()
        else:
            self.on_failure(cfg, step, res)

    def on_failure(self, cfg: StepConfig, step: StepStatus, res: TaskFailed) -> None:
        step = self.own(step)
        if self.status.state == WorkflowState.STOPPING:
            step.state = StepState.CANCELLED
            step.error = res.error
            step.finished_at = self.now
            self.emit(EventType.STEP_CANCELLED, step=step.id, attempt=res.attempt,
                      data={"error": res.error.model_dump(exclude_none=True)})
            self.maybe_finish_stopping()
            return
        error = res.error.model_copy(update={"step": step.id})
        final = (not error.retryable or error.code in cfg.retry.non_retryable_codes
                 or step.attempts >= cfg.retry.max_attempts)
        self.fail_step(cfg, step, error, final=final)

    def fail_step(self, cfg: StepConfig, step: StepStatus, error: ErrorInfo, *,
                  final: bool) -> None:
        step = self.own(step)
        step.error = error
        err_data = error.model_dump(exclude_none=True)
        if not final:
            delay = cfg.retry.delay_before(step.attempts + 1)
            step.state = StepState.RETRYING
            step.next_attempt_at = self.now + timedelta(seconds=delay)
            self.emit(EventType.STEP_RETRYING, step=step.id, attempt=step.attempts,
                      data={"error": err_data, "next_attempt": step.attempts + 1,
                            "delay": delay})
            if delay <= 0:
                self.dispatch(cfg, step)
            else:
                self.effects.append(TimerEffect(timer=TimerFired(
                    workflow_id=self.status.id, step_id=step.id, attempt=step.attempts + 1,
                    purpose="retry", due=step.next_attempt_at)))
            return
        step.state = StepState.FAILED
        step.finished_at = self.now
        self.emit(EventType.STEP_FAILED, step=step.id, attempt=step.attempts,
                  data={"error": err_data})
        # Fail fast: cancel what still runs, drop what has not started.
        for other in list(self.status.steps):
            if other.state in STEP_IN_FLIGHT or other.state in (StepState.PENDING,
                                                                StepState.RETRYING):
                other = self.own(other)
            if other.state in STEP_IN_FLIGHT:
                self.effects.append(CancelEffect(notice=CancelNotice(
                    workflow_id=self.status.id, step_id=other.id, attempt=other.attempts)))
                other.state = StepState.CANCELLED
                other.finished_at = self.now
                self.emit(EventType.STEP_CANCELLED, step=other.id, attempt=other.attempts)
            elif other.state in (StepState.PENDING, StepState.RETRYING):
                other.state = StepState.CANCELLED
                other.next_attempt_at = None
        self.finish(WorkflowState.FAILED, ErrorInfo(
            code=error.code, message=f"step {step.id!r} failed: {error.message}",
            step=step.id, retryable=False))

    def on_timer(self, timer: TimerFired) -> None:
        st = self.status
        if st.state in WORKFLOW_TERMINAL:
            return
        if timer.purpose == "stop-grace":
            if st.state != WorkflowState.STOPPING:
                return
            for s in list(st.steps):
                if s.state in STEP_IN_FLIGHT:
                    s = self.own(s)
                    s.state = StepState.CANCELLED
                    s.finished_at = self.now
                    self.emit(EventType.STEP_CANCELLED, step=s.id, attempt=s.attempts,
                              data={"reason": "no answer within the stop grace period"})
            self.finish(WorkflowState.STOPPED, None)
            return
        step = self.steps.get(timer.step_id or "")
        if step is None or not self.active:
            return
        cfg = self.config.step(step.id)
        if timer.purpose == "retry":
            if step.state == StepState.RETRYING and step.attempts + 1 == timer.attempt:
                self.dispatch(cfg, step)
        elif step.state in STEP_IN_FLIGHT and step.attempts == timer.attempt:
            # The worker may still be running it: ask it to stop.
            self.effects.append(CancelEffect(notice=CancelNotice(
                workflow_id=st.id, step_id=step.id, attempt=timer.attempt)))
            self.on_failure(cfg, step, TaskFailed(
                workflow_id=st.id, step_id=step.id, attempt=timer.attempt,
                error=ErrorInfo(code="step-timeout", retryable=True, step=step.id,
                                message=f"attempt {timer.attempt} timed out after "
                                        f"{cfg.timeout}s")))

