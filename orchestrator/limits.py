"""Flow control in the engine, pure: concurrency limits and rate limits.

A run whose workflow names ``concurrency`` limits is *queued* until it holds a permit of
each; a step attempt with a ``concurrency`` or ``rate_limit`` is *throttled* until it
holds its permits (a rate limit's permit is a time to begin). The engine never counts
permits itself: it asks for them one claim at a time with a ``LimitEffect`` in its
outbox, and the limiter (:mod:`orchestrator.limiter`, the shell) answers with a
``PermitInput``. Claims are asked for in order — keyed limits before unkeyed ones,
concurrency before rate — so a run waiting on a shared limit holds only the keyed
permits that would keep its key's other runs waiting anyway (which is what hands a
shared limit out round-robin between keys).

Permits are given back by one rule, in :func:`settle` at the end of every transition:
whatever asked for a permit and no longer waits for it or runs under it (the workflow
ended, however; the attempt succeeded, failed, was cancelled, timed out) gives it back.
A transition that retries an attempt at once gives the earlier attempt's permits back
in :func:`gate`. Nothing here runs when a workflow has no limits.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from contracts.errors import ErrorInfo
from contracts.flow import Claim, Throttle
from contracts.language.expr import render
from contracts.models import (
    STEP_ACTIVE,
    WORKFLOW_TERMINAL,
    EventType,
    StepConfig,
    StepState,
    StepStatus,
    WorkflowConfig,
    WorkflowState,
)
from contracts.namespaces import is_default

from .permits import LimitEffect, PermitInput
from .pools import lag_room
from .records import TimerFired
from .steps import StepInputError, evaluate_for
from .transition import Transition

__all__ = ["admit", "after_resume", "gate", "has_limits", "on_permit", "on_rate_timer",
           "settle"]


def has_limits(config: WorkflowConfig) -> bool:
    """Whether any flow control applies to the workflow (else nothing here runs)."""
    return bool(config.concurrency) or any(
        s.concurrency is not None or s.rate_limit is not None for s in config.steps)


def _scoped(config: WorkflowConfig, name: str) -> str:
    # A namespace's limits are its own: a tenant cannot use up another's permits.
    return name if is_default(config.namespace) else f"{config.namespace}/{name}"


def _key_value(template: str | None, ctx: dict[str, Any], *, step: str, where: str) -> str:
    if template is None:
        return ""
    value = evaluate_for(step, where, render, template, ctx)
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _ordered(claims: list[Claim]) -> list[Claim]:
    """Keyed concurrency first, then unkeyed, then rate limits (see the module doc)."""
    return sorted(claims, key=lambda c: (c.is_rate, c.key == ""))


def workflow_claims(tx: Transition) -> list[Claim]:
    """The claims of a run (raises StepInputError when a key cannot be computed)."""
    cfg = tx.config
    ctx = {"input": tx.status.input,
           "workflow": {"id": tx.status.id, "name": tx.status.name,
                        "labels": tx.status.labels}}
    return _ordered([
        Claim(pool="wf:" + _scoped(cfg, spec.name or cfg.definition or cfg.name),
              key=_key_value(spec.key, ctx, step="", where=f"concurrency.{i}.key"),
              limit=spec.limit, policy=spec.policy, namespace=cfg.namespace)
        for i, spec in enumerate(cfg.concurrency)])


def step_claims(tx: Transition, cfg: StepConfig) -> list[Claim]:
    """The claims of a step's attempt (raises StepInputError when a key fails)."""
    default = cfg.task_type or f"{tx.config.name}.{cfg.id}"
    ctx = tx.context()
    claims: list[Claim] = []
    if cfg.concurrency is not None:
        spec = cfg.concurrency
        claims.append(Claim(
            pool="step:" + _scoped(tx.config, spec.name or default),
            key=_key_value(spec.key, ctx, step=cfg.id, where="concurrency.key"),
            limit=spec.limit, namespace=tx.config.namespace))
    if cfg.rate_limit is not None:
        rate = cfg.rate_limit
        claims.append(Claim(
            pool="rate:" + _scoped(tx.config, rate.name or default),
            key=_key_value(rate.key, ctx, step=cfg.id, where="rate_limit.key"),
            limit=rate.limit, per=rate.per, namespace=tx.config.namespace))
    return _ordered(claims)


def _ask(tx: Transition, step_id: str | None, th: Throttle) -> None:
    claim = th.waiting_on
    assert claim is not None
    tx.effects.append(LimitEffect(op="acquire", claim=claim, index=th.granted,
                                  workflow_id=tx.status.id, step_id=step_id,
                                  attempt=th.attempt, again=th.again))


def _give_back(tx: Transition, step_id: str | None, th: Throttle) -> None:
    """Give back every permit asked for (one still waited for leaves its queue)."""
    asked = th.claims[:th.granted + (0 if th.complete else 1)]
    for i, claim in enumerate(asked):
        if not claim.is_rate:  # a rate limit's time is spent, not held
            tx.effects.append(LimitEffect(op="release", claim=claim, index=i,
                                          workflow_id=tx.status.id, step_id=step_id,
                                          attempt=th.attempt))


# -- a run ------------------------------------------------------------------------

def admit(tx: Transition) -> bool:
    """Called as a run starts: True when it is held (queued) for its permits."""
    st = tx.status
    if not tx.config.concurrency:
        return False
    q = st.queue
    if q is not None and q.attempt == st.runs:
        return not q.complete
    try:
        claims = workflow_claims(tx)
    except StepInputError as exc:
        tx.finish(WorkflowState.FAILED, exc.error.model_copy(update={"step": None}))
        return True
    st.queue = Throttle(attempt=st.runs, claims=claims, since=tx.now)
    st.state = WorkflowState.QUEUED
    _ask(tx, None, st.queue)
    return True


def _admitted(tx: Transition, q: Throttle) -> None:
    st = tx.status
    if q.waited:
        tx.emit(EventType.WORKFLOW_DEQUEUED,
                data={"waited": round((tx.now - q.since).total_seconds(), 3)})
    if st.started_at is None:
        tx.start()  # admit() lets it through now
    else:  # a retried run: it was started before
        st.state = WorkflowState.RUNNING


# -- a step -----------------------------------------------------------------------

def gate(tx: Transition, cfg: StepConfig, step: StepStatus) -> bool:
    """Called as an attempt begins (``step`` is the transition's own copy): True when
    it is held (throttled) for its permits."""
    if cfg.concurrency is None and cfg.rate_limit is None:
        return False
    n = step.attempts + 1
    th = step.throttle
    if th is not None and th.attempt == n:
        return not th.complete
    if th is not None:  # an earlier attempt's, ended in this same transition
        _give_back(tx, step.id, th)
        step.throttle = None
    try:
        claims = step_claims(tx, cfg)
    except StepInputError as exc:
        step.attempts += 1
        tx.fail_step(cfg, step, exc.error, final=True)
        return True
    step.throttle = Throttle(attempt=n, claims=claims, since=tx.now)
    step.state = StepState.THROTTLED
    _ask(tx, step.id, step.throttle)
    return True


def _unthrottled(tx: Transition, step: StepStatus, th: Throttle) -> None:
    if th.waited:
        tx.emit(EventType.STEP_UNTHROTTLED, step=step.id, attempt=th.attempt,
                data={"waited": round((tx.now - th.since).total_seconds(), 3)})
    if tx.status.state == WorkflowState.PAUSED:
        return  # begun by the resume (after_resume)
    tx.begin(tx.cfgs[step.id], step)


def after_resume(tx: Transition) -> None:
    """Begin the attempts that got their permits while the workflow was paused."""
    for s in list(tx.status.steps):
        if s.state == StepState.THROTTLED and s.throttle is not None and s.throttle.complete:
            tx.begin(tx.cfgs[s.id], tx.own(s))


# -- the limiter's answers --------------------------------------------------------

def on_permit(tx: Transition, inp: PermitInput) -> ErrorInfo | None:
    """The limiter's answer about one claim; a stale or repeated one changes nothing."""
    st = tx.status
    step: StepStatus | None = None
    if inp.step_id is None:
        th = st.queue if st.state == WorkflowState.QUEUED else None
    else:
        found = tx.steps.get(inp.step_id)
        if found is None or found.state != StepState.THROTTLED:
            return None
        step = tx.own(found)
        th = step.throttle
    if (th is None or th.attempt != inp.attempt or th.granted != inp.index or th.complete
            or inp.again != th.again):
        return None
    claim = th.claims[th.granted]
    if inp.outcome == "refused":
        # Only a workflow's cancel_newest refuses (steps always queue).
        tx.finish(WorkflowState.STOPPED, ErrorInfo(
            code="concurrency-limit", retryable=False, details={"limit": claim.pool,
                                                                 "key": claim.key},
            message=f"refused: the concurrency limit {claim.pool!r}"
                    + (f" for key {claim.key!r}" if claim.key else "")
                    + f" ({claim.limit} at once) is full and its policy is cancel_newest"))
        return None
    if inp.outcome == "queued":
        if th.position != inp.position:
            th = th.model_copy(update={"position": inp.position, "waited": True})
            _emit_waiting(tx, step, th, claim, {"position": inp.position})
            _store(tx, step, th)
        return None
    if inp.outcome == "reserved" and inp.run_at is not None and _late(th, inp.run_at, tx):
        _ask_again(tx, step, th)
        return None
    if inp.outcome == "reserved" and inp.run_at is not None and inp.run_at > tx.now:
        if th.run_at is not None:
            return None  # already waiting for this reservation's timer
        th = th.model_copy(update={"run_at": inp.run_at, "waited": True})
        _store(tx, step, th)
        _emit_waiting(tx, step, th, claim, {"run_at": inp.run_at.isoformat()})
        tx.timer("rate-limit", inp.run_at, step=inp.step_id, attempt=th.attempt)
        return None
    _granted(tx, step, th)
    return None


def on_rate_timer(tx: Transition, timer: TimerFired) -> None:
    """A throttled attempt's time to begin came."""
    step = tx.steps.get(timer.step_id or "")
    if step is None or step.state != StepState.THROTTLED:
        return
    th = step.throttle
    claim = None if th is None else th.waiting_on
    if (th is None or claim is None or not claim.is_rate or th.attempt != timer.attempt
            or th.run_at != timer.due):
        return
    if _late(th, th.run_at, tx):
        _ask_again(tx, tx.own(step), th)
        return
    _granted(tx, tx.own(step), th)


def _late(th: Throttle, run_at: datetime, tx: Transition) -> bool:
    """Too late to begin on this reservation: it would crowd the next ones' window."""
    claim = th.waiting_on
    assert claim is not None and claim.per is not None
    return (tx.now - run_at).total_seconds() > lag_room(claim.per)


def _ask_again(tx: Transition, step: StepStatus | None, th: Throttle) -> None:
    th = th.model_copy(update={"again": th.again + 1, "run_at": None})
    _store(tx, step, th)
    _ask(tx, step.id if step else None, th)


def _granted(tx: Transition, step: StepStatus | None, th: Throttle) -> None:
    th = th.model_copy(update={"granted": th.granted + 1, "position": None, "run_at": None})
    _store(tx, step, th)
    if not th.complete:
        _ask(tx, step.id if step else None, th)
    elif step is None:
        _admitted(tx, th)
    else:
        _unthrottled(tx, step, th)


def _store(tx: Transition, step: StepStatus | None, th: Throttle) -> None:
    if step is None:
        tx.status.queue = th
    else:
        step.throttle = th
    tx.dirty = True


def _emit_waiting(tx: Transition, step: StepStatus | None, th: Throttle, claim: Claim,
                  extra: dict[str, object]) -> None:
    data: dict[str, object] = {"limit": claim.pool, "key": claim.key, "max": claim.limit,
                               **extra}
    if step is None:
        tx.emit(EventType.WORKFLOW_QUEUED, data=data)
    else:
        tx.emit(EventType.STEP_THROTTLED, step=step.id, attempt=th.attempt, data=data)


# -- giving back ------------------------------------------------------------------

def settle(tx: Transition) -> None:
    """At the end of a transition: give back the permits of what no longer needs them."""
    if not has_limits(tx.config):
        return
    st = tx.status
    if st.queue is not None and st.state in WORKFLOW_TERMINAL:
        _give_back(tx, None, st.queue)
        st.queue = None
    for s in list(st.steps):
        th = s.throttle
        if th is None:
            continue
        if s.state == StepState.THROTTLED and th.attempt == s.attempts + 1:
            continue  # still waiting
        if s.state in STEP_ACTIVE and th.attempt == s.attempts:
            continue  # running under its permits
        _give_back(tx, s.id, th)
        tx.own(s).throttle = None
