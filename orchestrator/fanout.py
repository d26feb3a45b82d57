"""Map steps: one step fanned out over a list, pure (part of the engine).

Items are dispatched in index order, at most ``max_concurrency`` at a time, as task
messages whose step id is ``<map>[<index>]`` (a worker echoes it back as usual). The
record keeps only counters and the items at work (:class:`MapProgress`); each item's
output goes to the outputs bucket under :func:`output_key`, so a map of 10,000 items
with 1 KB outputs never makes the record large. When every item is done the shell
collects the outputs in order (``JoinMapEffect``) and answers with ``MapJoined``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from contracts.errors import ErrorInfo
from contracts.language.expr import evaluate, render
from contracts.messages import CancelNotice, TaskFailed, TaskMessage, TaskProgress
from contracts.models import (
    MAX_MAP_ITEMS,
    MAX_STEP_OUTPUT_BYTES,
    EventType,
    MapProgress,
    MapStep,
    ParentRef,
    StepState,
    StepStatus,
    TransformStep,
    WorkflowState,
    WorkflowStep,
)

from . import steps
from .records import (
    CancelEffect,
    JoinMapEffect,
    MapJoined,
    PutOutputEffect,
    ResultInput,
    StartChildEffect,
    StopWorkflow,
    TaskEffect,
    TimerFired,
    WorkflowCommandEffect,
)
from .transition import Transition

__all__ = ["begin_map", "cancel_items", "resume", "item_step_id", "on_item_result", "on_item_timer",
           "on_joined", "output_key", "output_prefix", "parse_item"]

_ITEM_RE = re.compile(r"^(?P<step>[A-Za-z0-9_-]+)\[(?P<index>\d+)\]$")
#: First item errors kept in the status (all failed indexes are kept).
_KEPT_ERRORS = 10
#: Progress events per map: one each time another 5% of the items is done.
_PROGRESS_STEPS = 20


def item_step_id(step_id: str, index: int) -> str:
    """The step id of one item's task messages."""
    return f"{step_id}[{index}]"


def parse_item(step_id: str) -> tuple[str, int] | None:
    """(map step id, index) of an item's step id; None for a plain step id."""
    m = _ITEM_RE.match(step_id)
    return (m["step"], int(m["index"])) if m else None


def output_prefix(workflow_id: str, step_id: str, attempt: int) -> str:
    """Key prefix (outputs bucket) of one attempt of a map step's item outputs."""
    return f"{workflow_id}.{step_id}.{attempt}"


def output_key(workflow_id: str, step_id: str, attempt: int, index: int) -> str:
    """Key of one item's output in the outputs bucket."""
    return f"{output_prefix(workflow_id, step_id, attempt)}.{index}"


# The item list is a pure function of the workflow's input and of upstream outputs that
# no longer change, so it is computed once per attempt, not per transition. An entry is
# only trusted for the very config object it was computed for (records in the cache keep
# theirs), so equal ids in two deployments, or a record read afresh, never share one.
_items_memo: OrderedDict[tuple[str, str, int], tuple[object, list[Any]]] = OrderedDict()


def _items(tx: Transition, cfg: MapStep, attempt: int) -> list[Any]:
    key = (tx.status.id, cfg.id, attempt)
    hit = _items_memo.get(key)
    if hit is not None and hit[0] is tx.config:
        _items_memo.move_to_end(key)
        return hit[1]
    value = steps.evaluate_for(cfg.id, "items", evaluate, cfg.items, tx.context())
    if not isinstance(value, list):
        raise steps.StepInputError(ErrorInfo(
            code="expression-error", step=cfg.id, field="items",
            message=f"items {cfg.items!r} gave {type(value).__name__}, not a list"))
    if len(value) > MAX_MAP_ITEMS:
        raise steps.StepInputError(ErrorInfo(
            code="input-error", step=cfg.id, field="items",
            message=f"{len(value)} items is over the limit of {MAX_MAP_ITEMS}"))
    _items_memo[key] = (tx.config, value)
    while len(_items_memo) > 16:
        _items_memo.popitem(last=False)
    return value


def _own(tx: Transition, step: StepStatus) -> MapProgress:
    """This transition's own copy of the step's map progress."""
    assert step.map is not None
    tx.dirty = True  # item bookkeeping changes the record even when no event says so
    if id(step.map) not in tx.owned_maps:
        m = step.map
        step.map = m.model_copy(update={"running": dict(m.running),
                                        "retrying": dict(m.retrying),
                                        "failed": list(m.failed), "errors": list(m.errors)})
        tx.owned_maps.add(id(step.map))
    return step.map


def begin_map(tx: Transition, cfg: MapStep, step: StepStatus) -> None:
    """Begin an attempt of a map step: compute its items and dispatch the first ones."""
    items = _items(tx, cfg, step.attempts)
    step.map = MapProgress(total=len(items))
    tx.owned_maps.add(id(step.map))
    if not items:
        tx.succeed(cfg, step, [])
        return
    step.state = StepState.RUNNING
    step.started_at = tx.now
    tx.emit(EventType.STEP_STARTED, step=cfg.id, attempt=step.attempts,
            data={"items": len(items)})
    _advance(tx, cfg, step)


def _fill(tx: Transition, cfg: MapStep, step: StepStatus) -> None:
    m = _own(tx, step)
    if m.next >= m.total or len(m.running) + len(m.retrying) >= cfg.max_concurrency:
        return
    items = _items(tx, cfg, step.attempts)
    base = tx.context()
    while m.next < m.total and len(m.running) + len(m.retrying) < cfg.max_concurrency:
        i = m.next
        m.next += 1
        _dispatch(tx, cfg, step, i, 1, {**base, "item": items[i], "index": i})


def _dispatch(tx: Transition, cfg: MapStep, step: StepStatus, i: int, attempt: int,
              ctx: dict[str, Any]) -> None:
    m = _own(tx, step)
    body = cfg.step
    wid = tx.status.id
    sid = item_step_id(cfg.id, i)
    try:
        if isinstance(body, TransformStep):
            out = steps.evaluate_for(cfg.id, f"step.output (item {i})", render, body.output,
                                     ctx)
            _item_succeeded(tx, cfg, step, i, out)
            return
        if isinstance(body, WorkflowStep):
            child_input = steps.evaluate_for(cfg.id, "step.input", render, body.input, ctx)
            m.running[str(i)] = attempt
            tx.effects.append(StartChildEffect(
                child_id=_child_id(wid, cfg.id, i, attempt), definition=body.definition,
                version=body.version, input=child_input,
                parent=ParentRef(workflow_id=wid, step_id=sid, attempt=attempt),
                namespace=tx.status.namespace, priority=tx.config.priority))
            return
        inp = steps.task_input(body, ctx)
    except steps.StepInputError as exc:
        _item_failed(tx, cfg, step, i, attempt, exc.error, running=False)
        return
    assert body.task_type is not None
    m.running[str(i)] = attempt
    deadline = tx.now + timedelta(seconds=body.timeout) if body.timeout else None
    tx.effects.append(TaskEffect(task=TaskMessage(
        workflow_id=wid, step_id=sid, attempt=attempt, task=body.task_type, input=inp,
        idempotency_key=f"{wid}:{sid}:{attempt}", reply_to=tx.settings.subjects.result(wid),
        deadline=deadline, heartbeat_interval=tx.settings.heartbeat,
        token=tx.settings.token(wid, sid, attempt)), priority=tx.config.priority))
    if deadline is not None:
        tx.timer("timeout", deadline, step=sid, attempt=attempt)


def _item_succeeded(tx: Transition, cfg: MapStep, step: StepStatus, i: int, output: Any) -> None:
    m = _own(tx, step)
    body = steps.compact_json(output)  # measured here, stored as it is (PutOutputEffect)
    size = len(body)
    if size > MAX_STEP_OUTPUT_BYTES:
        _item_failed(tx, cfg, step, i, cfg.step.retry.max_attempts, ErrorInfo(
            code="output-too-large", step=cfg.id, retryable=False,
            message=f"item {i}: output of {size} bytes is over the limit of "
                    f"{MAX_STEP_OUTPUT_BYTES} bytes"), running=False)
        return
    m.succeeded += 1
    tx.effects.append(PutOutputEffect.of(
        output_key(tx.status.id, cfg.id, step.attempts, i), output, body))
    done = m.succeeded + len(m.failed)
    every = max(1, m.total // _PROGRESS_STEPS)
    if done % every == 0 and done < m.total:
        step.progress = {"done": done, "failed": len(m.failed), "total": m.total}
        tx.emit(EventType.STEP_PROGRESS, step=cfg.id, attempt=step.attempts,
                data={"progress": step.progress})


def _item_failed(tx: Transition, cfg: MapStep, step: StepStatus, i: int, attempt: int,
                 error: ErrorInfo, *, running: bool = True) -> None:
    m = _own(tx, step)
    if running:
        m.running.pop(str(i), None)
    retry = cfg.step.retry
    final = (not error.retryable or error.code in retry.non_retryable_codes
             or attempt >= retry.max_attempts or tx.status.state != WorkflowState.RUNNING)
    data: dict[str, object] = {"item": i, "error": error.model_dump(exclude_none=True)}
    if not final:
        delay = retry.delay_before(attempt + 1, seed=f"{tx.status.id}:{cfg.id}[{i}]")
        tx.emit(EventType.STEP_RETRYING, step=cfg.id, attempt=step.attempts,
                data={**data, "next_attempt": attempt + 1, "delay": delay})
        if delay <= 0:
            items = _items(tx, cfg, step.attempts)
            _dispatch(tx, cfg, step, i, attempt + 1,
                      {**tx.context(), "item": items[i], "index": i})
        else:
            m.retrying[str(i)] = attempt + 1
            tx.timer("retry", tx.now + timedelta(seconds=delay),
                     step=item_step_id(cfg.id, i), attempt=attempt + 1)
        return
    m.failed.append(i)
    if len(m.errors) < _KEPT_ERRORS:
        m.errors.append(error.model_copy(update={"step": item_step_id(cfg.id, i)}))
    if tx.status.state == WorkflowState.RUNNING:
        tx.emit(EventType.STEP_PROGRESS, step=cfg.id, attempt=step.attempts,
                data={"item_failed": data})
    if tx.status.state == WorkflowState.RUNNING and tx.config.on_failure == "fail-fast":
        cancel_items(tx, step)
        m.running.clear()
        m.retrying.clear()
        m.next = m.total  # nothing more starts
        tx.fail_step(cfg, step, error.model_copy(update={
            "step": cfg.id, "message": f"item {i} failed: {error.message}"}), final=True)


def _advance(tx: Transition, cfg: MapStep, step: StepStatus) -> None:
    """Start more items, or finish the map when every item is done."""
    if step.state != StepState.RUNNING:
        return
    m = _own(tx, step)
    if tx.status.state == WorkflowState.STOPPING:
        if not m.running:
            m.retrying.clear()
            step.state = StepState.CANCELLED
            step.finished_at = tx.now
            tx.emit(EventType.STEP_CANCELLED, step=cfg.id, attempt=step.attempts)
            tx.maybe_finish_stopping()
        return
    if tx.status.state != WorkflowState.RUNNING:
        return  # paused: nothing new starts; the resume carries on from here
    _fill(tx, cfg, step)
    if step.state != StepState.RUNNING or m.next < m.total or m.running or m.retrying:
        return
    if m.failed:
        first = m.errors[0] if m.errors else ErrorInfo(code="item-failed", message="")
        tx.fail_step(cfg, step, ErrorInfo(
            code="items-failed", step=cfg.id, retryable=False,
            message=f"{len(m.failed)} of {m.total} items failed; first: {first.message}",
            details={"failed": m.failed[:100]}), final=True)
        return
    if not m.joining:
        m.joining = True
        tx.effects.append(JoinMapEffect(workflow_id=tx.status.id, step_id=cfg.id,
                                        attempt=step.attempts, total=m.total))


def resume(tx: Transition, cfg: MapStep, step: StepStatus) -> None:
    """After a pause: start the items held back, or join."""
    _advance(tx, cfg, step)


def on_item_result(tx: Transition, cfg: MapStep, step: StepStatus, i: int,
                   inp: ResultInput) -> None:
    """A worker's report about one item's attempt."""
    res = inp.result
    if step.map is None or step.map.running.get(str(i)) != res.attempt:
        return  # stale or duplicate
    if isinstance(res, TaskProgress):
        return  # items report no progress of their own; the map does
    m = _own(tx, step)
    if isinstance(res, TaskFailed):
        _item_failed(tx, cfg, step, i, res.attempt, res.error)
    else:
        m.running.pop(str(i))
        _item_succeeded(tx, cfg, step, i, res.output)
    _advance(tx, cfg, step)


def on_item_timer(tx: Transition, cfg: MapStep, step: StepStatus, i: int,
                  timer: TimerFired) -> None:
    """An item's retry backoff ended, or its attempt timed out."""
    m = step.map
    if m is None:
        return
    if timer.purpose == "retry" and m.retrying.get(str(i)) == timer.attempt:
        _own(tx, step).retrying.pop(str(i))
        items = _items(tx, cfg, step.attempts)
        _dispatch(tx, cfg, step, i, timer.attempt,
                  {**tx.context(), "item": items[i], "index": i})
    elif timer.purpose == "timeout" and m.running.get(str(i)) == timer.attempt:
        tx.effects.append(CancelEffect(notice=CancelNotice(
            workflow_id=tx.status.id, step_id=item_step_id(cfg.id, i), attempt=timer.attempt)))
        _item_failed(tx, cfg, step, i, timer.attempt, ErrorInfo(
            code="step-timeout", retryable=True, step=cfg.id,
            message=f"item {i} attempt {timer.attempt} timed out after {cfg.step.timeout}s"))
    else:
        return
    _advance(tx, cfg, step)


def on_joined(tx: Transition, cfg: MapStep, step: StepStatus, inp: MapJoined) -> None:
    """The item outputs were collected: the map step succeeds with them."""
    if (step.state != StepState.RUNNING or step.map is None or not step.map.joining
            or step.attempts != inp.attempt):
        return
    _own(tx, step)
    if inp.error is not None:
        tx.fail_step(cfg, step, inp.error.model_copy(update={"step": cfg.id}), final=True)
    else:
        tx.succeed(cfg, step, inp.output)


def _child_id(workflow_id: str, step_id: str, index: int, attempt: int) -> str:
    return f"{workflow_id}-{step_id}-{index}-{attempt}"[:128]


def cancel_items(tx: Transition, step: StepStatus) -> None:
    """Tell the workers (or child workflows) of every running item to stop."""
    if step.map is None:
        return
    cfg = tx.cfgs[step.id]
    children = isinstance(cfg, MapStep) and isinstance(cfg.step, WorkflowStep)
    for key, attempt in step.map.running.items():
        if children:
            tx.effects.append(WorkflowCommandEffect(
                workflow_id=_child_id(tx.status.id, step.id, int(key), attempt),
                command=StopWorkflow(reason="the map step was cancelled")))
        else:
            tx.effects.append(CancelEffect(notice=CancelNotice(
                workflow_id=tx.status.id, step_id=item_step_id(step.id, int(key)),
                attempt=attempt)))
