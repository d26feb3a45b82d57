"""Flow control, pure: the engine's queued and throttled states, and the pools' logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.messages import TaskSucceeded
from contracts.models import StepState, WorkflowConfig, WorkflowState
from orchestrator.engine import decide
from orchestrator.permits import LimitEffect, PermitInput
from orchestrator.pools import Bucket, Pool, apply
from orchestrator.records import (
    CreateWorkflow,
    EventEffect,
    ResultInput,
    RetryWorkflow,
    StopWorkflow,
    TaskEffect,
    TimerEffect,
    TimerFired,
    WorkflowRecord,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def config(steps: list[dict[str, Any]], **kw: Any) -> WorkflowConfig:
    return WorkflowConfig.model_validate({"name": "t", "id": "w", "steps": steps, **kw})


class Run:
    """One workflow driven through the engine, its effects kept in order."""

    def __init__(self, cfg: WorkflowConfig) -> None:
        self.record: WorkflowRecord | None = None
        self.effects: list[Any] = []
        self.now = T0
        self.send(CreateWorkflow(config=cfg, fingerprint="f"))

    def send(self, inp: Any) -> list[Any]:
        self.now += timedelta(seconds=1)
        d = decide(self.record, inp, self.now)
        if d.record is not None:
            self.record = d.record
        self.effects.extend(d.effects)
        return d.effects

    @property
    def state(self) -> WorkflowState:
        assert self.record is not None
        return self.record.status.state

    def step(self, sid: str) -> Any:
        assert self.record is not None
        return self.record.status.step(sid)


def limits(effects: list[Any]) -> list[tuple[str, str, str]]:
    return [(e.op, e.claim.pool, e.claim.key) for e in effects if isinstance(e, LimitEffect)]


def kinds(effects: list[Any]) -> list[str]:
    return [e.event.type.value for e in effects if isinstance(e, EventEffect)]


def ok(step: str, attempt: int = 1) -> ResultInput:
    return ResultInput(result=TaskSucceeded(workflow_id="w", step_id=step, attempt=attempt))


def test_no_limits_no_limit_effects_and_no_new_fields() -> None:
    r = Run(config([{"id": "a", "task": "t"}]))
    r.send(ok("a"))
    assert r.state == WorkflowState.COMPLETED and limits(r.effects) == []
    assert r.record is not None
    stored = r.record.model_dump_json(exclude_none=True)
    assert "queue" not in stored and "throttle" not in stored and "concurrency" not in stored


def test_a_run_waits_queued_and_gives_its_permit_back_when_it_ends() -> None:
    cfg = config([{"id": "a", "task": "t"}], input={"c": "acme"},
                 concurrency={"limit": 1, "key": "${input.c}"})
    r = Run(cfg)
    assert r.state == WorkflowState.QUEUED
    assert limits(r.effects) == [("acquire", "wf:t", "acme")]
    assert not [e for e in r.effects if isinstance(e, TaskEffect)]
    out = r.send(PermitInput(outcome="queued", attempt=1, index=0, position=3))
    assert kinds(out) == ["workflow.queued"]
    assert r.record is not None and r.record.status.queue is not None
    assert r.record.status.queue.position == 3
    assert r.send(PermitInput(outcome="queued", attempt=1, index=0, position=3)) == []
    out = r.send(PermitInput(outcome="granted", attempt=1, index=0))
    assert kinds(out)[:3] == ["workflow.dequeued", "workflow.started", "step.dispatched"]
    assert r.state == WorkflowState.RUNNING
    assert r.send(PermitInput(outcome="granted", attempt=1, index=0)) == []  # a repeat
    out = r.send(ok("a"))
    assert r.state == WorkflowState.COMPLETED
    assert limits(out) == [("release", "wf:t", "acme")]
    assert r.record.status.queue is None


@pytest.mark.parametrize("end", ["stop-queued", "stop-running", "fail"])
def test_every_end_gives_the_permit_back(end: str) -> None:
    r = Run(config([{"id": "a", "task": "t"}], concurrency={"limit": 2}))
    if end == "stop-queued":
        out = r.send(StopWorkflow())
    else:
        r.send(PermitInput(outcome="granted", attempt=1, index=0))
        if end == "stop-running":
            r.send(StopWorkflow())
            out = r.send(TimerFired(workflow_id="w", purpose="stop-grace",
                                    due=r.now + timedelta(seconds=10)))
        else:
            from contracts.errors import ErrorInfo
            from contracts.messages import TaskFailed
            out = r.send(ResultInput(result=TaskFailed(
                workflow_id="w", step_id="a", attempt=1,
                error=ErrorInfo(code="x", message="x", retryable=False))))
    assert limits(out) == [("release", "wf:t", "")]
    assert r.state in (WorkflowState.STOPPED, WorkflowState.FAILED)


def test_several_limits_are_asked_for_keyed_first_one_at_a_time() -> None:
    r = Run(config([{"id": "a", "task": "t"}], input={"c": 7},
                   concurrency=[{"limit": 5, "name": "all"},
                                {"limit": 1, "key": "${input.c}"}]))
    assert limits(r.effects) == [("acquire", "wf:t", "7")]
    out = r.send(PermitInput(outcome="granted", attempt=1, index=0))
    assert limits(out) == [("acquire", "wf:all", "")] and r.state == WorkflowState.QUEUED
    r.send(PermitInput(outcome="granted", attempt=1, index=1))
    assert r.state == WorkflowState.RUNNING
    out = r.send(ok("a"))
    assert sorted(limits(out)) == [("release", "wf:all", ""), ("release", "wf:t", "7")]


def test_cancel_newest_refused_run_ends_stopped() -> None:
    r = Run(config([{"id": "a", "task": "t"}],
                   concurrency={"limit": 1, "policy": "cancel_newest"}))
    out = r.send(PermitInput(outcome="refused", attempt=1, index=0))
    assert r.state == WorkflowState.STOPPED
    assert r.record is not None and r.record.status.error is not None
    assert r.record.status.error.code == "concurrency-limit"
    assert "workflow.stopped" in kinds(out)


def test_a_retried_run_queues_again() -> None:
    r = Run(config([{"id": "a", "task": "t"}], concurrency={"limit": 1}))
    r.send(PermitInput(outcome="granted", attempt=1, index=0))
    r.send(StopWorkflow())
    r.send(TimerFired(workflow_id="w", purpose="stop-grace", due=r.now))
    out = r.send(RetryWorkflow())
    assert r.state == WorkflowState.QUEUED and limits(out) == [("acquire", "wf:t", "")]
    out = r.send(PermitInput(outcome="granted", attempt=2, index=0))
    assert r.state == WorkflowState.RUNNING
    assert [e.task.attempt for e in out if isinstance(e, TaskEffect)] == [2]


def test_a_step_is_throttled_then_runs_and_its_attempts_give_back() -> None:
    r = Run(config([{"id": "a", "task": "billing.charge", "concurrency": {"limit": 5},
                     "retry": {"max_attempts": 2, "initial_interval": 0}}]))
    assert r.step("a").state == StepState.THROTTLED
    assert limits(r.effects) == [("acquire", "step:billing.charge", "")]
    out = r.send(PermitInput(outcome="queued", step_id="a", attempt=1, index=0, position=1))
    assert kinds(out) == ["step.throttled"]
    out = r.send(PermitInput(outcome="granted", step_id="a", attempt=1, index=0))
    assert kinds(out) == ["step.unthrottled", "step.dispatched"]
    from contracts.errors import ErrorInfo
    from contracts.messages import TaskFailed
    out = r.send(ResultInput(result=TaskFailed(workflow_id="w", step_id="a", attempt=1,
                                               error=ErrorInfo(code="x", message="x",
                                                               retryable=True))))
    # attempt 1 gives back, attempt 2 asks (the retry had no delay)
    assert limits(out) == [("release", "step:billing.charge", ""),
                           ("acquire", "step:billing.charge", "")]
    assert r.step("a").state == StepState.THROTTLED
    out = r.send(PermitInput(outcome="granted", step_id="a", attempt=2, index=0))
    assert [e.task.attempt for e in out if isinstance(e, TaskEffect)] == [2]
    out = r.send(ok("a", 2))
    assert limits(out) == [("release", "step:billing.charge", "")]
    assert r.state == WorkflowState.COMPLETED


def test_a_rate_limited_step_waits_for_its_time_on_a_timer() -> None:
    r = Run(config([{"id": "a", "task": "t", "rate_limit": {"limit": 10, "per": "1m"}}]))
    assert limits(r.effects) == [("acquire", "rate:t", "")]
    later = T0 + timedelta(minutes=5)
    out = r.send(PermitInput(outcome="reserved", step_id="a", attempt=1, index=0,
                             run_at=later))
    assert kinds(out) == ["step.throttled"]
    assert [e.timer.purpose for e in out if isinstance(e, TimerEffect)] == ["rate-limit"]
    th = r.step("a").throttle
    assert th is not None and th.run_at == later
    out = r.send(TimerFired(workflow_id="w", step_id="a", attempt=1, purpose="rate-limit",
                            due=later))
    assert [e.task.step_id for e in out if isinstance(e, TaskEffect)] == ["a"]
    out = r.send(ok("a"))
    assert limits(out) == []  # a rate limit holds nothing


def test_a_reservation_missed_by_more_than_its_room_is_asked_for_again() -> None:
    r = Run(config([{"id": "a", "task": "t", "rate_limit": {"limit": 10, "per": "1s"}}]))
    long_ago = r.now - timedelta(seconds=5)
    out = r.send(PermitInput(outcome="reserved", step_id="a", attempt=1, index=0,
                             run_at=long_ago))
    assert not [e for e in out if isinstance(e, TaskEffect)]
    asked = [e for e in out if isinstance(e, LimitEffect)]
    assert [(e.again, e.holder) for e in asked] == [(1, "w/a#1~1")]
    # the first round's answer again changes nothing; the second round's is taken
    assert r.send(PermitInput(outcome="reserved", step_id="a", attempt=1, index=0,
                              run_at=long_ago)) == []
    out = r.send(PermitInput(outcome="reserved", step_id="a", attempt=1, index=0, again=1,
                             run_at=r.now + timedelta(seconds=1)))
    assert [e for e in out if isinstance(e, TaskEffect)]


def test_a_throttled_step_is_cancelled_by_a_stop_and_leaves_its_queue() -> None:
    r = Run(config([{"id": "a", "task": "t", "concurrency": {"limit": 1}}]))
    out = r.send(StopWorkflow())
    assert r.step("a").state == StepState.CANCELLED and r.state == WorkflowState.STOPPED
    assert limits(out) == [("release", "step:t", "")]


def test_a_bad_key_fails_the_step_and_the_workflow() -> None:
    r = Run(config([{"id": "a", "task": "t", "concurrency": {"limit": 1,
                                                            "key": "${input.nope.x}"}}]))
    assert r.step("a").state == StepState.FAILED
    assert r.state == WorkflowState.FAILED and limits(r.effects) == []


def test_bad_flow_fields_name_the_field() -> None:
    from pydantic import ValidationError

    from contracts.errors import InvalidGraph
    with pytest.raises(InvalidGraph, match="policy") as bad:
        config([{"id": "a", "task": "t", "concurrency": {"limit": 1,
                                                        "policy": "cancel_oldest"}}])
    assert bad.value.info().field == "steps.0.concurrency.policy"
    with pytest.raises(ValidationError, match="limit"):
        config([{"id": "a", "task": "t"}], concurrency={"limit": 0})
    with pytest.raises(ValidationError, match="per"):
        config([{"id": "a", "task": "t", "rate_limit": {"limit": 1, "per": "soon"}}])
    # A map's item step is read from the fields (vars), not getattr: still refused.
    with pytest.raises(InvalidGraph, match="item step") as bad:
        config([{"id": "m", "kind": "map", "items": "[1]",
                 "step": {"task": "t", "rate_limit": {"limit": 1, "per": "1s"}}}])
    assert bad.value.info().field == "steps.0.step.concurrency"
    config([{"id": "m", "kind": "map", "items": "[1]", "step": {"task": "t"}}])


# -- the pools ---------------------------------------------------------------------

def req(wf: str, op: str = "acquire", *, limit: int = 1, policy: str = "queue",
        per: float | None = None) -> LimitEffect:
    return LimitEffect.model_validate({
        "op": op, "index": 0, "workflow_id": wf, "attempt": 1,
        "claim": {"pool": "wf:x", "limit": limit, "policy": policy, "per": per}})


def step(state: Any, r: LimitEffect, now: datetime = T0) -> tuple[Any, list[Any]]:
    new, notices = apply(state, r, now)
    return (new if new is not None else state), notices


def outcomes(notices: list[Any]) -> list[tuple[str, str]]:
    return [(n.workflow_id, "stop" if n.stop else n.answer.outcome) for n in notices]


def test_pool_is_fifo_and_idempotent() -> None:
    pool, n = step(None, req("a"))
    assert outcomes(n) == [("a", "granted")]
    pool, n = step(pool, req("b"))
    pool, n2 = step(pool, req("c"))
    assert outcomes(n) == [("b", "queued")] and n2[0].answer.position == 2
    same, n = apply(pool, req("b"), T0)
    assert same is None and n[0].answer.position == 1  # asked again: the same answer
    pool, n = step(pool, req("a", "release"))
    assert outcomes(n) == [("b", "granted")] and list(pool.holders) == ["b#1"]
    again, n = apply(pool, req("a", "release"), T0)
    assert again is None and outcomes(n) == [("b", "granted")]  # the same grants again
    late, n = apply(pool, req("a"), T0)
    assert late is None and n == []  # a late copy of a returned permit's request
    pool, n = step(pool, req("c", "release"))  # leaves the queue
    assert not pool.waiting and n == []


def test_pool_cancel_newest_and_cancel_oldest() -> None:
    pool, _ = step(None, req("a", policy="cancel_newest"))
    pool, n = step(pool, req("b", policy="cancel_newest"))
    assert outcomes(n) == [("b", "refused")]
    late, n = apply(pool, req("b", policy="cancel_newest"), T0)
    assert late is None and n == []  # refused stays refused
    pool, _ = step(None, req("a", policy="cancel_oldest"))
    pool, n = step(pool, req("b", policy="cancel_oldest"))
    assert outcomes(n) == [("b", "queued"), ("a", "stop")]
    pool, n = step(pool, req("a", "release"))
    assert outcomes(n) == [("b", "granted")]


def test_bucket_spaces_begins_and_never_puts_more_than_limit_in_a_window() -> None:
    bucket: Bucket | None = None
    times = []
    for i in range(200):
        bucket, n = step(bucket, req(f"w{i}", per=1.0, limit=50),
                         T0 + timedelta(milliseconds=i))
        assert n[0].answer.outcome == "reserved"
        times.append(n[0].answer.run_at)
    span = [(t - T0) // timedelta(microseconds=1) for t in times]
    assert all(sum(1 for u in span if s <= u < s + 1_000_000) <= 50 for s in span)
    assert span[-1] == 199 * 24_000  # 1/50 s, and room for a begin's lag
    assert bucket is not None
    same, n = apply(bucket, req("w3", per=1.0, limit=50), T0)
    assert same is None and n[0].answer.run_at == times[3]


def test_a_raised_limit_lets_more_in_as_permits_free() -> None:
    pool: Pool | None = None
    pool, _ = step(pool, req("a"))
    pool, _ = step(pool, req("b", limit=2))
    assert pool is not None and list(pool.holders) == ["a#1", "b#1"]


# -- the pools, as a property ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 3),
       ops=st.lists(st.tuples(st.sampled_from(["acquire", "release"]), st.integers(0, 7)),
                    max_size=60))
def test_a_pool_never_grants_more_than_its_limit_and_grants_each_holder_once(
        limit: int, ops: list[tuple[str, int]]) -> None:
    pool: Any = None
    granted: list[str] = []
    released: set[str] = set()
    for op, n in ops:
        new, notices = apply(pool, req(f"w{n}", op, limit=limit), T0)
        pool = new if new is not None else pool
        if op == "release":
            released.add(f"w{n}#1")
        for note in notices:
            if (note.answer is not None and note.answer.outcome == "granted"
                    and note.holder not in granted):
                granted.append(note.holder)
        assert isinstance(pool, Pool) and len(pool.holders) <= limit
        # nobody given back holds or waits; whoever waits does so only when it is full
        assert not (set(pool.holders) | set(pool.waiting)) & released
        assert not pool.waiting or len(pool.holders) == limit
    # the grants went out in the order the holders asked (first come, first served)
    asked = list(dict.fromkeys(f"w{n}#1" for op, n in ops if op == "acquire"))
    assert granted == [h for h in asked if h in granted]
