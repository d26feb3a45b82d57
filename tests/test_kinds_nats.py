"""Step kinds, signals, timers, failure policies and sagas on a real nats-server.

The engine's rules are proven in tests/test_engine.py without NATS; here they are driven
end to end: through the NATS API (and the gateway for signals), with the demo worker or
a raw nats-py consumer playing the worker, events read from the events stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats.errors
import pytest
from helpers import Probe, assert_history, read_events, wait_for
from nats.aio.client import Client

from contracts.errors import AlreadyFinished, WorkflowNotFound
from contracts.messages import CancelNotice, TaskMessage, TaskProgress, TaskSucceeded
from contracts.models import (
    Event,
    EventType,
    StepKind,
    StepState,
    WorkflowState,
    WorkflowStatus,
)
from gateway import create_app
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from transport.connect import NatsSettings
from transport.streams import Topology, ensure_consumer

E = EventType


def retry(max_attempts: int, **more: Any) -> dict[str, Any]:
    """A retry policy with a short, flat backoff."""
    return {"max_attempts": max_attempts, "initial_interval": 0.2,
            "backoff_coefficient": 1.0, **more}


def kinds_of(events: list[Event]) -> list[tuple[EventType, str | None]]:
    """(type, step) of each event, in seq order."""
    return [(e.type, e.step_id) for e in sorted(events, key=lambda e: e.seq)]


def seq_of(events: list[Event], type_: EventType, step: str | None = None) -> int:
    """The seq of the only event of that type (and step)."""
    found = [e.seq for e in events if e.type == type_ and e.step_id == step]
    assert len(found) == 1, (type_, step, kinds_of(events))
    return found[0]


async def until_event(nc: Client, settings: NatsSettings, wid: str, type_: EventType,
                      count: int = 1) -> list[Event]:
    """Wait until the workflow has emitted ``count`` events of this type."""
    return await read_events(nc, settings.subjects, wid, type_.value, terminals=None,
                             count=count, linger=0)


def status_of(reply: Any) -> WorkflowStatus:
    assert reply.status is not None, reply
    status: WorkflowStatus = reply.status
    return status


@pytest.fixture
async def http(settings: NatsSettings, nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on this test's deployment, in-process, on the test's connection."""
    app = create_app(settings, auth=None, nc=nc, request_timeout=5.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as client:
        yield client


# -- wait steps and signals -----------------------------------------------------------


APPROVAL: dict[str, Any] = {
    "name": "approval",
    "steps": [
        {"kind": "wait", "id": "approve", "signal": "approved"},
        {"id": "after", "task": "demo.echo", "depends_on": ["approve"],
         "input": {"by": "${steps.approve.output.by}"}},
    ],
}


async def test_a_signal_over_the_nats_api_ends_the_wait_with_its_payload(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create(APPROVAL)
    (waiting,) = await until_event(nc, settings, reply.id, E.STEP_WAITING)
    assert (waiting.step_id, waiting.data) == ("approve", {"signal": "approved"})
    st = status_of(await client.get(reply.id))
    step = st.step("approve")
    assert (step.kind, step.task, step.state) == (StepKind.WAIT, None, StepState.WAITING)
    assert st.step("after").state == StepState.PENDING

    signalled = status_of(await client.signal(reply.id, "approved", {"by": "ana"}))
    assert signalled.step("approve").state == StepState.SUCCEEDED
    assert signalled.step("approve").output == {"by": "ana"}

    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    received = next(e for e in events if e.type == E.SIGNAL_RECEIVED)
    assert (received.step_id, received.data) == ("approve", {"name": "approved"})
    assert (seq_of(events, E.STEP_WAITING, "approve") < received.seq
            < seq_of(events, E.STEP_SUCCEEDED, "approve")
            < seq_of(events, E.STEP_DISPATCHED, "after"))
    final = status_of(await client.get(reply.id))
    assert final.step("after").output == {"by": "ana"}
    assert final.signals == []

    # A finished workflow takes no more signals, and nothing is emitted for one.
    with pytest.raises(AlreadyFinished):
        await client.signal(reply.id, "approved", {"by": "late"})
    with pytest.raises(WorkflowNotFound):
        await client.signal("no-such-workflow", "approved")
    again = await read_events(nc, settings.subjects, reply.id)
    assert len(again) == len(events)


async def test_signals_through_the_gateway_with_and_without_a_body(
        engine: Orchestrator, client: NatsflowClient, http: httpx.AsyncClient,
        nc: Client, settings: NatsSettings) -> None:
    reply = await client.create({"name": "two-gates", "steps": [
        {"kind": "wait", "id": "one", "signal": "first"},
        {"kind": "wait", "id": "two", "signal": "second"}]})
    await until_event(nc, settings, reply.id, E.STEP_WAITING, count=2)

    resp = await http.post(f"/workflows/{reply.id}/signals/first", json={"ok": [1, 2]})
    assert resp.status_code == 202, resp.text
    body = WorkflowStatus.model_validate(resp.json())
    assert body.step("one").state == StepState.SUCCEEDED
    assert body.step("one").output == {"ok": [1, 2]}
    assert body.state == WorkflowState.RUNNING

    resp = await http.post(f"/workflows/{reply.id}/signals/second")  # no body: null
    assert resp.status_code == 202, resp.text
    assert WorkflowStatus.model_validate(resp.json()).state == WorkflowState.COMPLETED

    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    assert events[-1].data["output"] == {"one": {"ok": [1, 2]}, "two": None}

    late = await http.post(f"/workflows/{reply.id}/signals/first", json=1)
    assert late.status_code == 409
    assert late.headers["content-type"] == "application/problem+json"
    assert late.json()["code"] == "already-finished"
    missing = await http.post("/workflows/no-such-workflow/signals/first")
    assert missing.status_code == 404
    assert missing.json()["code"] == "workflow-not-found"
    bad_name = await http.post(f"/workflows/{reply.id}/signals/not.a.name")
    assert bad_name.status_code == 400


async def test_a_signal_sent_before_its_wait_step_starts_is_kept_and_taken_later(
        engine: Orchestrator, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "early-bird", "steps": [
        {"kind": "wait", "id": "first", "signal": "one"},
        {"kind": "wait", "id": "second", "signal": "two", "depends_on": ["first"]}]})
    await until_event(nc, settings, reply.id, E.STEP_WAITING)

    # `second` has not started: both signals are kept, oldest first.
    for n in (1, 2):
        st = status_of(await client.signal(reply.id, "two", {"n": n}))
        assert st.step("second").state == StepState.PENDING
    assert [(s.name, s.payload) for s in st.signals] == [("two", {"n": 1}), ("two", {"n": 2})]

    done = status_of(await client.signal(reply.id, "one", "go"))
    assert done.state == WorkflowState.COMPLETED
    assert done.step("first").output == "go"
    assert done.step("second").output == {"n": 1}  # the oldest kept signal
    assert [(s.name, s.payload) for s in done.signals] == [("two", {"n": 2})]

    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    kept = [e for e in events if e.type == E.SIGNAL_RECEIVED and e.step_id is None]
    assert [e.data for e in kept] == [{"name": "two", "kept": True}] * 2
    # A kept signal is taken as the step begins: it never waits.
    assert [e.step_id for e in events if e.type == E.STEP_WAITING] == ["first"]
    assert seq_of(events, E.STEP_SUCCEEDED, "first") < seq_of(events, E.STEP_SUCCEEDED,
                                                               "second")


# -- sleep steps ----------------------------------------------------------------------


async def test_a_one_second_sleep_completes_not_early(
        engine: Orchestrator, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "nap", "steps": [
        {"kind": "sleep", "id": "nap", "duration": "1s"}]})
    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    assert kinds_of(events) == [
        (E.WORKFLOW_CREATED, None), (E.WORKFLOW_STARTED, None), (E.STEP_WAITING, "nap"),
        (E.STEP_SUCCEEDED, "nap"), (E.WORKFLOW_COMPLETED, None)]
    waiting, succeeded = events[2], events[3]
    assert succeeded.data["output"] == {"slept_until": waiting.data["until"]}
    assert (succeeded.time - waiting.time).total_seconds() >= 0.99
    st = status_of(await client.get(reply.id))
    assert st.step("nap").kind == StepKind.SLEEP and st.step("nap").wake_at is not None


async def test_a_sleep_survives_an_orchestrator_restart_and_ends_once(
        settings: NatsSettings, nc: Client) -> None:
    s = settings.subjects
    client = NatsflowClient(nc, s)
    first = Orchestrator(settings, stop_grace=2.0)
    await first.start()
    try:
        reply = await client.create({"name": "long-nap", "steps": [
            {"kind": "sleep", "id": "nap", "duration": 2},
            {"kind": "transform", "id": "after", "depends_on": ["nap"],
             "output": "${steps.nap.output.slept_until}"}]})
        await until_event(nc, settings, reply.id, E.STEP_WAITING)
    finally:
        await first.stop()
    # Nobody runs the engine now; the timer waits in the inbox stream.
    await asyncio.sleep(0.5)
    parked = await status_in_kv(nc, settings, reply.id)
    assert (parked.state, parked.step("nap").state) == (WorkflowState.RUNNING,
                                                        StepState.WAITING)

    async with Orchestrator(settings, stop_grace=2.0):
        events = await read_events(nc, s, reply.id, timeout=15, linger=1.0)
        final = status_of(await client.get(reply.id))
    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    assert [e.step_id for e in events if e.type == E.STEP_SUCCEEDED] == ["nap", "after"]
    waiting = next(e for e in events if e.type == E.STEP_WAITING)
    woke = next(e for e in events if e.type == E.STEP_SUCCEEDED)
    assert (woke.time - waiting.time).total_seconds() >= 1.99
    assert final.state == WorkflowState.COMPLETED
    assert final.step("after").output == waiting.data["until"]


async def status_in_kv(nc: Client, settings: NatsSettings, wid: str) -> WorkflowStatus:
    """A workflow's status read straight from its KV bucket (no orchestrator needed)."""
    kv = await nc.jetstream().key_value(settings.subjects.workflows_bucket)
    entry = await kv.get(wid)
    assert entry.value is not None
    return WorkflowStatus.model_validate(json.loads(entry.value)["status"])


# -- transform, switch, when, join -----------------------------------------------------


BRANCHES: dict[str, Any] = {
    "name": "branches",
    "steps": [
        {"kind": "transform", "id": "prep",
         "output": {"tier": "${input.tier}", "amount": "${input.amount * 2}"}},
        {"kind": "switch", "id": "route", "depends_on": ["prep"],
         "value": "steps.prep.output.tier",
         "cases": {"gold": ["vip"], "silver": ["std"]}, "default": ["basic"]},
        {"id": "vip", "task": "demo.echo", "depends_on": ["route"],
         "input": {"lane": "vip", "amount": "${steps.prep.output.amount}"}},
        {"id": "std", "task": "demo.echo", "depends_on": ["route"], "input": {"lane": "std"}},
        {"kind": "transform", "id": "basic", "depends_on": ["route"],
         "output": {"lane": "basic"}},
        {"id": "big", "task": "demo.echo", "depends_on": ["prep"],
         "when": "steps.prep.output.amount > 100", "input": {"size": "big"}},
        {"id": "after_big", "task": "demo.noop", "depends_on": ["big"]},
        {"id": "small", "task": "demo.echo", "depends_on": ["prep"],
         "when": "steps.prep.output.amount <= 100", "input": {"size": "small"}},
        {"kind": "transform", "id": "done", "join": "any",
         "depends_on": ["vip", "std", "basic"],
         "output": {"case": "${steps.route.output.case}"}},
    ],
    "output": {"case": "${steps.done.output.case}", "small": "${steps.small.output}"},
}


@pytest.mark.parametrize(("tier", "chosen", "case"), [("gold", "vip", "gold"),
                                                       ("bronze", "basic", "default")])
async def test_switch_runs_one_branch_skips_the_rest_and_a_join_any_step_follows(
        demo_worker: Probe, client: NatsflowClient, nc: Client, settings: NatsSettings,
        tier: str, chosen: str, case: str) -> None:
    reply = await client.create({**BRANCHES, "input": {"tier": tier, "amount": 21}})
    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    st = status_of(await client.get(reply.id))

    branches = {"vip", "std", "basic"}
    states = {s.id: s.state for s in st.steps}
    assert states == {
        "prep": StepState.SUCCEEDED, "route": StepState.SUCCEEDED,
        **{b: StepState.SUCCEEDED if b == chosen else StepState.SKIPPED for b in branches},
        "big": StepState.SKIPPED, "after_big": StepState.SKIPPED,
        "small": StepState.SUCCEEDED, "done": StepState.SUCCEEDED}
    assert st.step("prep").output == {"tier": tier, "amount": 42}
    assert st.step("route").output == {"case": case, "value": tier}
    assert st.output == {"case": case, "small": {"size": "small"}}
    if chosen == "vip":
        assert st.step("vip").output == {"lane": "vip", "amount": 42}

    skipped = {e.step_id: e.data["reason"] for e in events if e.type == E.STEP_SKIPPED}
    assert set(skipped) == (branches - {chosen}) | {"big", "after_big"}
    for branch in branches - {chosen}:
        assert skipped[branch] == f"switch 'route' chose {case!r}"
    assert skipped["big"] == "condition is false"
    assert skipped["after_big"] == "a dependency was skipped"
    # Skipped steps never reach a worker; the join step ran after its branch.
    dispatched = {e.step_id for e in events if e.type == E.STEP_DISPATCHED}
    assert dispatched == {"small"} | ({"vip"} if chosen == "vip" else set())
    assert seq_of(events, E.STEP_SUCCEEDED, chosen) < seq_of(events, E.STEP_SUCCEEDED, "done")


# -- heartbeats -------------------------------------------------------------------------


async def test_a_long_task_that_heartbeats_outlives_its_heartbeat_timeout(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    # The handler reports progress only after 2 s and ends after 4 s; its worker's
    # liveness reports keep the 1 s heartbeat timeout from firing in between.
    reply = await client.create({"name": "patient", "steps": [
        {"id": "long", "task": "demo.sleep", "input": {"seconds": 4, "steps": 2},
         "heartbeat_timeout": 1, "retry": retry(3)}]})
    events = await read_events(nc, settings.subjects, reply.id, timeout=30)
    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    assert [(e.type, e.attempt) for e in events if e.step_id == "long"] == [
        (E.STEP_DISPATCHED, 1), (E.STEP_STARTED, 1), (E.STEP_PROGRESS, 1),
        (E.STEP_PROGRESS, 1), (E.STEP_SUCCEEDED, 1)]
    # Only the handler's own reports are progress events; liveness reports are not.
    assert [e.data["progress"] for e in events if e.type == E.STEP_PROGRESS] == [
        {"done": 1, "of": 2}, {"done": 2, "of": 2}]
    assert demo_worker.runs == {(reply.id, "long", 1): 1}


async def test_a_worker_gone_silent_fails_the_attempt_with_heartbeat_timeout_and_it_is_retried(
        engine: Orchestrator, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    s = settings.subjects
    js = nc.jetstream()
    await ensure_consumer(js, s.tasks_stream, Topology(s).worker_consumer("ghost.silent"))
    tasks = await js.pull_subscribe_bind(s.worker_consumer("ghost.silent"), s.tasks_stream)
    notices: list[CancelNotice] = []

    async def on_cancel(msg: Any) -> None:
        notices.append(CancelNotice.model_validate_json(msg.data))

    cancels = await nc.subscribe(s.all_cancels, cb=on_cancel)

    async def take() -> tuple[TaskMessage, Any]:
        for _ in range(20):
            try:
                (msg,) = await tasks.fetch(1, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            await msg.ack()
            return TaskMessage.model_validate_json(msg.data), msg
        raise AssertionError("no task arrived")

    try:
        reply = await client.create({"name": "silent", "steps": [
            {"id": "job", "task": "ghost.silent", "heartbeat_timeout": 1,
             "retry": retry(2)}]})
        first, _ = await take()
        assert (first.attempt, first.heartbeat_timeout) == (1, 1.0)
        # One sign of life (the attempt started), then silence.
        await js.publish(first.reply_to, TaskProgress(
            workflow_id=reply.id, step_id="job", attempt=1,
            token=first.token).model_dump_json().encode())

        second, _ = await take()
        assert second.attempt == 2
        # A late answer for the abandoned attempt changes nothing.
        await js.publish(first.reply_to, TaskSucceeded(
            workflow_id=reply.id, step_id="job", attempt=1, token=first.token,
            output="from attempt 1").model_dump_json().encode())
        await js.publish(second.reply_to, TaskSucceeded(
            workflow_id=reply.id, step_id="job", attempt=2, token=second.token,
            output="from attempt 2").model_dump_json().encode())
        events = await read_events(nc, s, reply.id)
        await wait_for(lambda: bool(notices), timeout=5, what="a cancel notice")
    finally:
        await cancels.unsubscribe()
        await tasks.unsubscribe()

    assert_history(events, terminal=E.WORKFLOW_COMPLETED)
    assert [(e.type, e.attempt) for e in events if e.step_id == "job"] == [
        (E.STEP_DISPATCHED, 1), (E.STEP_STARTED, 1), (E.STEP_RETRYING, 1),
        (E.STEP_DISPATCHED, 2), (E.STEP_STARTED, 2), (E.STEP_SUCCEEDED, 2)]
    retrying = next(e for e in events if e.type == E.STEP_RETRYING)
    assert retrying.data["error"]["code"] == "heartbeat-timeout"
    assert retrying.data["error"]["retryable"] is True
    assert notices == [CancelNotice(workflow_id=reply.id, step_id="job", attempt=1)]
    final = status_of(await client.get(reply.id))
    assert final.step("job").output == "from attempt 2"
    assert final.step("job").attempts == 2


# -- failure policy, compensation, timeouts ---------------------------------------------


async def test_on_failure_continue_finishes_independent_branches_then_fails(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "carry-on", "on_failure": "continue", "steps": [
        {"id": "bad", "task": "demo.fail"},
        {"id": "after_bad", "task": "demo.echo", "depends_on": ["bad"]},
        {"kind": "wait", "id": "gate", "signal": "go"},
        {"id": "after_gate", "task": "demo.echo", "depends_on": ["gate"],
         "input": {"got": "${steps.gate.output}"}}]})
    (failed,) = await until_event(nc, settings, reply.id, E.STEP_FAILED)
    assert failed.step_id == "bad"
    st = status_of(await client.get(reply.id))
    assert st.state == WorkflowState.RUNNING
    assert st.step("after_bad").state == StepState.CANCELLED
    assert st.step("gate").state == StepState.WAITING

    await client.signal(reply.id, "go", "yes")
    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_FAILED)
    cancelled = [e for e in events if e.type == E.STEP_CANCELLED]
    assert [(e.step_id, e.data["reason"]) for e in cancelled] == [
        ("after_bad", "a dependency failed")]
    assert seq_of(events, E.STEP_FAILED, "bad") < seq_of(events, E.STEP_SUCCEEDED,
                                                         "after_gate")
    assert events[-1].data["error"]["code"] == "demo-failure"
    assert events[-1].data["error"]["step"] == "bad"
    final = status_of(await client.get(reply.id))
    assert {s.id: s.state for s in final.steps} == {
        "bad": StepState.FAILED, "after_bad": StepState.CANCELLED,
        "gate": StepState.SUCCEEDED, "after_gate": StepState.SUCCEEDED}
    assert final.step("after_gate").output == {"got": "yes"}
    assert ("after_bad" not in {k[1] for k in demo_worker.runs})


SAGA: dict[str, Any] = {
    "name": "saga",
    "steps": [
        {"id": "a", "task": "demo.echo", "input": {"booked": "a"}, "compensate": "undo_a"},
        {"id": "b", "task": "demo.echo", "depends_on": ["a"], "input": {"booked": "b"},
         "compensate": "undo_b"},
        {"id": "c", "task": "demo.fail", "depends_on": ["b"]},
        {"id": "undo_a", "task": "demo.echo", "input": {"undo": "${steps.a.output.booked}"}},
        {"id": "undo_b", "task": "demo.echo", "input": {"undo": "${steps.b.output.booked}"}},
    ],
}


async def test_a_failed_saga_compensates_newest_first_then_fails(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create(SAGA)
    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_FAILED)
    compensating = next(e for e in events if e.type == E.WORKFLOW_COMPENSATING)
    assert compensating.data == {"steps": ["undo_b", "undo_a"], "outcome": "failed"}
    order = [seq_of(events, E.STEP_FAILED, "c"), compensating.seq,
             seq_of(events, E.STEP_DISPATCHED, "undo_b"),
             seq_of(events, E.STEP_SUCCEEDED, "undo_b"),
             seq_of(events, E.STEP_DISPATCHED, "undo_a"),
             seq_of(events, E.STEP_SUCCEEDED, "undo_a"),
             seq_of(events, E.WORKFLOW_FAILED)]
    assert order == sorted(order), kinds_of(events)
    assert events[-1].data["error"]["code"] == "demo-failure"

    final = status_of(await client.get(reply.id))
    assert final.state == WorkflowState.FAILED
    assert final.error is not None and final.error.step == "c"
    assert final.step("undo_b").output == {"undo": "b"}
    assert final.step("undo_a").output == {"undo": "a"}
    assert (final.step("undo_a").compensates, final.step("undo_b").compensates) == ("a", "b")
    assert final.compensation == [] and final.outcome is None


async def test_stop_compensates_what_succeeded_and_a_stop_during_the_saga_changes_nothing(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "stopped-saga", "steps": [
        {"id": "a", "task": "demo.echo", "input": {"booked": "a"}, "compensate": "undo_a"},
        {"kind": "wait", "id": "b", "signal": "never", "depends_on": ["a"]},
        # A compensation that waits for a human: the saga stays open until it is signalled.
        {"kind": "wait", "id": "undo_a", "signal": "undone"}]})
    await until_event(nc, settings, reply.id, E.STEP_WAITING)

    stopping = status_of(await client.stop(reply.id))
    assert stopping.state == WorkflowState.COMPENSATING
    assert stopping.outcome == WorkflowState.STOPPED
    assert stopping.step("b").state == StepState.CANCELLED
    assert stopping.step("undo_a").state == StepState.WAITING
    # Stopping again does not interrupt the compensation.
    again = status_of(await client.stop(reply.id))
    assert again.state == WorkflowState.COMPENSATING
    assert again.step("undo_a").state == StepState.WAITING

    ended = status_of(await client.signal(reply.id, "undone", {"by": "ops"}))
    assert ended.state == WorkflowState.STOPPED
    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=E.WORKFLOW_STOPPED)
    assert kinds_of(events)[-6:] == [
        (E.STEP_CANCELLED, "b"), (E.WORKFLOW_COMPENSATING, None), (E.STEP_WAITING, "undo_a"),
        (E.SIGNAL_RECEIVED, "undo_a"), (E.STEP_SUCCEEDED, "undo_a"),
        (E.WORKFLOW_STOPPED, None)]
    assert ended.step("undo_a").output == {"by": "ops"}


async def test_a_workflow_timeout_cancels_the_running_step_and_fails(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "slow", "timeout": 1, "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 30, "steps": 30}},
        {"id": "later", "task": "demo.noop", "depends_on": ["nap"]}]})
    events = await read_events(nc, settings.subjects, reply.id, timeout=20)
    assert_history(events, terminal=E.WORKFLOW_FAILED)
    assert events[-1].data["error"]["code"] == "workflow-timeout"
    cancelled = [e for e in events if e.type == E.STEP_CANCELLED]
    assert [(e.step_id, e.data["reason"]) for e in cancelled] == [
        ("nap", "the workflow timed out")]
    await wait_for(lambda: demo_worker.running == 0, timeout=5, what="the handler to stop")
    assert demo_worker.cancelled == [(reply.id, "nap", 1)]
    final = status_of(await client.get(reply.id))
    assert (final.step("nap").state, final.step("later").state) == (
        StepState.CANCELLED, StepState.CANCELLED)


async def test_a_step_total_timeout_ends_its_retries(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "give-up", "steps": [
        {"id": "shaky", "task": "demo.flaky", "input": {"fail_times": 100},
         "total_timeout": 1.5,
         "retry": {"max_attempts": 20, "initial_interval": 1.0, "backoff_coefficient": 1}}]})
    events = await read_events(nc, settings.subjects, reply.id, timeout=20)
    assert_history(events, terminal=E.WORKFLOW_FAILED)
    failed = next(e for e in events if e.type == E.STEP_FAILED)
    assert failed.data["error"]["code"] == "step-total-timeout"
    assert events[-1].data["error"]["code"] == "step-total-timeout"
    final = status_of(await client.get(reply.id))
    # 1 s between attempts: far fewer than max_attempts ran in 1.5 s.
    assert 1 <= final.step("shaky").attempts < 20
    assert final.step("shaky").next_attempt_at is None
