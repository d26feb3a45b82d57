"""The promise checker: it passes real histories and catches every kind of broken one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.models import Event, StepStatus, WorkflowStatus
from natsflow.client import NatsflowClient
from natsflow.promises import check_all, check_workflow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ev(seq: int, type_: str, step: str | None = None, attempt: int | None = None) -> Event:
    return Event(workflow_id="wf", seq=seq, type=type_, time=T0 + timedelta(seconds=seq),
                 step_id=step, attempt=attempt)


def _good() -> list[Event]:
    return [_ev(1, "workflow.created"), _ev(2, "workflow.started"),
            _ev(3, "step.dispatched", "a", 1), _ev(4, "step.started", "a", 1),
            _ev(5, "step.succeeded", "a", 1), _ev(6, "step.dispatched", "b", 1),
            _ev(7, "step.retrying", "b", 1), _ev(8, "step.dispatched", "b", 2),
            _ev(9, "step.succeeded", "b", 2), _ev(10, "workflow.completed")]


def _status(**changes: Any) -> WorkflowStatus:
    base: dict[str, Any] = {
        "id": "wf", "name": "n", "state": "completed", "input": {}, "created_at": T0,
        "last_seq": 10, "steps": [StepStatus(id="a", state="succeeded", attempts=1),
                                  StepStatus(id="b", state="succeeded", attempts=2,
                                             depends_on=["a"])]}
    base.update(changes)
    return WorkflowStatus(**base)


def test_a_sound_history_keeps_every_promise() -> None:
    assert check_workflow("wf", _status(), _good()) == []
    # Read back in any order: the checker orders by seq.
    assert check_workflow("wf", _status(), list(reversed(_good()))) == []


def _broken(events: list[Event], status: WorkflowStatus | None = None) -> set[tuple[int, str]]:
    found = check_workflow("wf", _status() if status is None else status, events)
    return {(v.promise, v.message.split(":")[0]) for v in found}


@pytest.mark.parametrize(("mutate", "status", "expected"), [
    (lambda e: e, None, set()),
    (lambda e: e[:4] + e[5:], None, (3, "seq has gaps")),
    (lambda e: [*e, e[4]], None, (3, "seq stored more than once")),
    (lambda e: [*e[:9], _ev(10, "workflow.failed")], None,
     (3, "last event workflow.failed but stored state completed")),
    (lambda e: [*e, _ev(11, "workflow.completed")], _status(last_seq=11),
     (3, "2 terminal events for 1 run(s)")),
    (lambda e: e[:9], _status(last_seq=9), (3, "0 terminal events for 1 run(s)")),
    (lambda e: e, _status(state="running"), (1, "not terminal")),
    (lambda e: e[1:], None, (3, "first event is workflow.started")),
    (lambda e: e, _status(last_seq=12), (3, "stored last_seq 12, events end at 10")),
])
def test_each_broken_promise_is_named(mutate: Any, status: WorkflowStatus | None,
                                      expected: Any) -> None:
    found = _broken(mutate(_good()), status)
    assert found == (set() if expected == set() else {expected}) or expected in found, found


def test_a_step_that_begins_before_its_dependency_succeeded_breaks_promise_2() -> None:
    early = [*_good()[:2], _ev(3, "step.dispatched", "a", 1), _ev(4, "step.dispatched", "b", 1),
             _ev(5, "step.succeeded", "a", 1), _ev(6, "step.succeeded", "b", 1),
             _ev(7, "workflow.completed")]
    status = _status(last_seq=7, steps=[
        StepStatus(id="a", state="succeeded", attempts=1),
        StepStatus(id="b", state="succeeded", attempts=1, depends_on=["a"])])
    (violation,) = check_workflow("wf", status, early)
    assert violation.promise == 2
    assert "b began (seq 4, step.dispatched) before its dependencies" in violation.message


def test_an_attempt_dispatched_twice_breaks_promise_2() -> None:
    twice = [*_good()[:3], _ev(4, "step.dispatched", "a", 1), _ev(5, "step.succeeded", "a", 1),
             _ev(6, "workflow.completed")]
    status = _status(last_seq=6, steps=[StepStatus(id="a", state="succeeded", attempts=1)])
    (violation,) = check_workflow("wf", status, twice)
    assert (violation.promise, violation.message) == (
        2, "attempts dispatched more than once: ['a#1']")


def test_a_stored_step_state_that_the_events_contradict_breaks_promise_3() -> None:
    status = _status(steps=[StepStatus(id="a", state="succeeded", attempts=1),
                            StepStatus(id="b", state="failed", attempts=2, depends_on=["a"])])
    (violation,) = check_workflow("wf", status, _good())
    assert violation.message == "step b stored failed, events say succeeded"


def test_an_unknown_workflow_breaks_promise_1() -> None:
    found = check_workflow("wf", None, [])
    assert [(v.promise, v.message) for v in found] == [(1, "accepted but not stored"),
                                                        (3, "no events")]


async def test_real_runs_keep_every_promise(client: NatsflowClient, demo_worker: object) -> None:
    ids = []
    for i in range(6):
        reply = await client.create({"name": "p", "id": f"prom-{i}", "input": {"n": i},
                                     "steps": [
            {"id": "one", "task": "demo.add", "input": {"a": "${input.n}", "b": 1}},
            {"id": "two", "task": "demo.flaky", "input": {"fail_times": 1},
             "retry": {"max_attempts": 3, "initial_interval": 0.01}},
            {"id": "three", "task": "demo.add", "depends_on": ["one", "two"],
             "input": {"a": 1, "b": 2}}]})
        ids.append(reply.id)
    for wid in ids:
        await client.wait(wid, timeout=30)
    checked, violations = await check_all(client, [*ids, "never-submitted"])
    assert checked == 7
    assert [str(v) for v in violations] == [
        "never-submitted: promise 1: accepted but not stored",
        "never-submitted: promise 3: no events"]
