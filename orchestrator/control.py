"""Operator control of a workflow, pure (part of the engine): pause, resume, retry, rerun.

A paused workflow dispatches nothing new and holds the timers that come due (they fire
on resume); results of steps already running are kept. A retry runs a failed or stopped
workflow again from its unfinished steps: their attempts are numbered on from the last
run (``attempt_base``), so every attempt id stays unique and no timer of an earlier run
can touch the new one. A rerun is a new workflow whose reused steps succeed at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from contracts.errors import ErrorInfo, InvalidState
from contracts.models import EventType, MapStep, StepState, WorkflowState

from . import fanout, limits, steps
from .records import CreateWorkflow, PauseWorkflow, ResumeWorkflow, RetryWorkflow, TimerFired
from .transition import Transition

__all__ = ["after_resume", "control", "retry", "reuse"]


def reuse(tx: Transition, inp: CreateWorkflow) -> None:
    """A rerun: the steps it reuses succeed at once with the earlier outputs."""
    tx.status.rerun_of = inp.rerun_of
    for sid, output in inp.reuse.items():
        step = tx.steps.get(sid)
        if step is None:
            continue
        step = tx.own(step)
        step.state = StepState.SUCCEEDED
        step.output = output
        step.reused_from = inp.rerun_of
        step.finished_at = tx.now
        tx.outputs_bytes += steps.json_size(output)
        tx.emit(EventType.STEP_SUCCEEDED, step=sid,
                  data={"output": output, "reused_from": inp.rerun_of})

def control(tx: Transition, inp: PauseWorkflow | ResumeWorkflow | RetryWorkflow, *,
            fire: Callable[[Transition, TimerFired], None]) -> ErrorInfo | None:
    """Pause, resume or retry; an error when the state does not allow it.

    Args:
        tx: The transition.
        inp: The command.
        fire: How the engine handles a timer that came due: a resume fires the timers
            the pause held (:mod:`orchestrator.engine` owns timers, and builds on this
            module, so it is handed in).
    """
    st = tx.status
    state = st.state
    if isinstance(inp, PauseWorkflow):
        if state == WorkflowState.PAUSED:
            return None
        if state != WorkflowState.RUNNING:
            return InvalidState(f"only a running workflow can be paused; "
                                f"{st.id} is {state.value}").info()
        st.state = WorkflowState.PAUSED
        tx.emit(EventType.WORKFLOW_PAUSED)
        return None
    if isinstance(inp, ResumeWorkflow):
        if state == WorkflowState.RUNNING:
            return None
        if state != WorkflowState.PAUSED:
            return InvalidState(f"only a paused workflow can be resumed; "
                                f"{st.id} is {state.value}").info()
        st.state = WorkflowState.RUNNING
        tx.emit(EventType.WORKFLOW_RESUMED,
                  data={"timers": len(st.deferred_timers)})
        deferred, st.deferred_timers = st.deferred_timers, []
        for raw in deferred:
            fire(tx, TimerFired.model_validate(raw))
        after_resume(tx)
        return None
    return retry(tx, inp)

def after_resume(tx: Transition) -> None:
    """What a pause held back: a fail-fast failure, map items, then the next steps."""
    if not tx.running:
        return
    failed = [s for s in tx.status.steps
              if s.state == StepState.FAILED and not s.compensates]
    if failed and tx.config.on_failure == "fail-fast":
        tx.cancel_all("another step failed")
        err = failed[0].error or ErrorInfo(code="step-failed", message="")
        tx.conclude(WorkflowState.FAILED, ErrorInfo(
            code=err.code, message=f"step {failed[0].id!r} failed: {err.message}",
            step=failed[0].id, retryable=False))
        return
    for s in list(tx.status.steps):
        cfg = tx.cfgs[s.id]
        if isinstance(cfg, MapStep) and s.state == StepState.RUNNING:
            fanout.resume(tx, cfg, tx.own(s))
    limits.after_resume(tx)

def retry(tx: Transition, inp: RetryWorkflow) -> ErrorInfo | None:
    """A failed or stopped workflow runs again from its unfinished steps."""
    st = tx.status
    if st.state not in (WorkflowState.FAILED, WorkflowState.STOPPED):
        return InvalidState(f"only a failed or stopped workflow can be retried; "
                            f"{st.id} is {st.state.value}").info()
    if any(s.compensates and s.state in (StepState.SUCCEEDED, StepState.FAILED)
           for s in st.steps):
        return InvalidState(f"workflow {st.id} was compensated; rerun it instead").info()
    unknown = sorted(set(inp.inputs) - set(tx.cfgs))
    if unknown:
        return ErrorInfo(code="validation-failed", field=f"inputs.{unknown[0]}",
                         message=f"no step {unknown[0]!r} in workflow {st.id}")
    again = []
    for s in list(st.steps):
        if s.state == StepState.SUCCEEDED:
            continue
        s = tx.own(s)
        again.append(s.id)
        s.attempt_base = s.attempts
        s.state = StepState.PENDING
        s.input_override = inp.inputs.get(s.id, s.input_override)
        for name in ("output", "error", "progress", "dispatched_at", "started_at",
                     "finished_at", "next_attempt_at", "heartbeat_at", "wake_at",
                     "child_id", "map", "waiting_for_worker"):
            setattr(s, name, None)
    st.runs += 1
    st.worker_check_at = None  # the last run's look, if still to come, is for nothing
    st.state = WorkflowState.RUNNING
    st.error = None
    st.output = None
    st.finished_at = None
    st.outcome = None
    tx.emit(EventType.WORKFLOW_RETRIED, data={"run": st.runs, "steps": again})
    if tx.config.timeout:
        tx.timer("workflow-timeout", tx.now + timedelta(seconds=tx.config.timeout),
                   attempt=st.runs)
    limits.admit(tx)  # a run with concurrency limits queues for them again
    return None
