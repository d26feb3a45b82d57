"""The batch engine: a pure state machine over one batch.

A batch runs one workflow template once per input, at most ``max_concurrency`` at a
time. Members are started lazily (``pending`` until then) with deterministic ids
``<batch id>-<index>``; a member reports back when it reaches a terminal state.
"""

from __future__ import annotations

from datetime import datetime

from contracts.errors import AlreadyFinished, BatchNotFound, IdConflict
from contracts.messages import BATCH_TERMINAL, BatchMember, BatchState, BatchStatus
from contracts.models import WORKFLOW_TERMINAL, WorkflowState
from contracts.namespaces import visible

from .records import (
    BatchDecision,
    BatchInput,
    BatchRecord,
    CreateBatch,
    CreateWorkflow,
    Effect,
    MemberFinished,
    Reply,
    StopBatch,
    StopWorkflow,
    WorkflowCommandEffect,
)

__all__ = ["decide_batch", "member_id", "workflow_fingerprint"]

_TERMINAL_VALUES = frozenset(s.value for s in WORKFLOW_TERMINAL)


def member_id(batch_id: str, index: int) -> str:
    """The workflow id of member ``index`` of a batch."""
    return f"{batch_id}-{index}"


def workflow_fingerprint(batch_fingerprint: str, index: int) -> str:
    """The fingerprint of one member's create command."""
    return f"{batch_fingerprint}:{index}"


def decide_batch(record: BatchRecord | None, inp: BatchInput, now: datetime, *,
                 batch_id: str) -> BatchDecision:
    """Apply one input to one batch; see :func:`orchestrator.engine.decide`."""
    if isinstance(inp, CreateBatch):
        if record is not None:
            if record.fingerprint == inp.fingerprint:
                return BatchDecision(record=None, reply=Reply(created=False))
            err = IdConflict(f"batch {batch_id} exists with a different config", field="id")
            return BatchDecision(record=None, reply=Reply(error=err.info()))
        cfg = inp.config
        status = BatchStatus(
            id=batch_id, name=cfg.workflow.name, namespace=cfg.namespace,
            state=BatchState.RUNNING,
            max_concurrency=cfg.max_concurrency, counts={},
            members=[BatchMember(index=i, workflow_id=member_id(batch_id, i))
                     for i in range(len(cfg.inputs))],
            created_at=now)
        rec = BatchRecord.model_construct(config=cfg, fingerprint=inp.fingerprint,
                                          status=status, outbox=[], outbox_at=None)
        return _decision(rec, _start_members(rec), now, Reply(created=True))
    if isinstance(inp, StopBatch) and (
            record is None or not visible(record.status.namespace, inp.namespaces)):
        # Outside the caller's namespaces, a batch answers as one that does not exist.
        return BatchDecision(record=None, reply=Reply(error=BatchNotFound("no such batch").info()))
    if record is None:
        return BatchDecision(record=None)  # a member's end after its batch was removed

    rec = record.model_copy(update={"status": record.status.model_copy(
        update={"members": [m.model_copy() for m in record.status.members]})})
    st = rec.status
    effects: list[Effect] = []
    if isinstance(inp, MemberFinished):
        member = next((m for m in st.members if m.workflow_id == inp.workflow_id), None)
        if member is None or member.state in _TERMINAL_VALUES:
            return BatchDecision(record=None)
        member.state = inp.state
        if st.state == BatchState.RUNNING:
            effects = _start_members(rec)
        _maybe_finish(rec, now)
        return _decision(rec, effects, now, Reply())
    # stop
    if st.state in BATCH_TERMINAL:
        done = AlreadyFinished(f"batch {batch_id} is already {st.state}")
        return BatchDecision(record=None, reply=Reply(error=done.info()))
    if st.state == BatchState.STOPPING:
        return BatchDecision(record=None)
    st.state = BatchState.STOPPING
    for m in st.members:
        if m.state == "pending":
            m.state = WorkflowState.STOPPED.value
        elif m.state not in _TERMINAL_VALUES:
            effects.append(WorkflowCommandEffect(workflow_id=m.workflow_id,
                                                 command=StopWorkflow(reason="batch stopped")))
    _maybe_finish(rec, now)
    return _decision(rec, effects, now, Reply())


def _start_members(rec: BatchRecord) -> list[Effect]:
    st = rec.status
    running = sum(1 for m in st.members if m.state not in _TERMINAL_VALUES
                  and m.state != "pending")
    limit = rec.config.max_concurrency or len(st.members)
    effects: list[Effect] = []
    for m in st.members:
        if running >= limit:
            break
        if m.state != "pending":
            continue
        config = rec.config.workflow.config_for(workflow_id=m.workflow_id,
                                                input=rec.config.inputs[m.index],
                                                batch_id=st.id, namespace=st.namespace)
        effects.append(WorkflowCommandEffect(workflow_id=m.workflow_id, command=CreateWorkflow(
            config=config, fingerprint=workflow_fingerprint(rec.fingerprint, m.index),
            batch_id=st.id)))
        m.state = WorkflowState.RUNNING.value
        running += 1
    return effects


def _maybe_finish(rec: BatchRecord, now: datetime) -> None:
    st = rec.status
    if st.state in BATCH_TERMINAL or any(m.state not in _TERMINAL_VALUES for m in st.members):
        return
    states = {m.state for m in st.members}
    if st.state == BatchState.STOPPING or WorkflowState.STOPPED.value in states:
        st.state = BatchState.STOPPED
    elif WorkflowState.FAILED.value in states:
        st.state = BatchState.FAILED
    else:
        st.state = BatchState.COMPLETED
    st.finished_at = now


def _decision(rec: BatchRecord, effects: list[Effect], now: datetime,
              reply: Reply) -> BatchDecision:
    counts: dict[str, int] = {}
    for m in rec.status.members:
        counts[m.state] = counts.get(m.state, 0) + 1
    rec.status.counts = counts
    rec.outbox = effects
    rec.outbox_at = now if effects else None
    return BatchDecision(record=rec, effects=effects, reply=reply)
