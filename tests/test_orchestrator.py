"""The orchestrator on a real nats-server, driven through its NATS API and the demo worker.

Each test names what it proves. Events are read with plain nats-py JetStream consumers on
the events stream, exactly as any other service would read them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from helpers import (
    Probe,
    assert_history,
    counted,
    read_dead_letters,
    read_events,
    running_demo_worker,
    terminal_of,
    wait_for,
)
from nats.aio.client import Client

from contracts.errors import (
    AlreadyFinished,
    ErrorInfo,
    IdConflict,
    Unavailable,
    WorkflowNotFound,
)
from contracts.headers import ERROR_CODE_HEADER
from contracts.models import MAX_CONFIG_BYTES, EventType, StepState, WorkflowState
from contracts.operations import SCHEDULE_OPERATIONS, TRIGGER_OPERATIONS
from contracts.subjects import partition_of
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from orchestrator.api import Api
from orchestrator.store import KvRecordStore
from transport.connect import NatsSettings
from transport.publish import AsyncPublisher
from transport.streams import Topology, declare_stream


def retry(max_attempts: int, **more: Any) -> dict[str, Any]:
    """A retry policy with a short, flat backoff."""
    return {"max_attempts": max_attempts, "initial_interval": 0.2,
            "backoff_coefficient": 1.0, **more}


ARITHMETIC: dict[str, Any] = {
    "name": "arithmetic",
    "input": {"a": 2, "b": 3},
    "steps": [
        {"id": "add", "task": "demo.add", "input": {"a": "${input.a}", "b": "${input.b}"}},
        {"id": "double", "task": "demo.add", "depends_on": ["add"],
         "input": {"a": "${steps.add.output.sum}", "b": "${steps.add.output.sum}"}},
        {"id": "say", "task": "demo.echo", "depends_on": ["double"],
         "input": {"text": "sum=${steps.add.output.sum}", "total": "${steps.double.output}"}},
    ],
}


async def _settled(nc: Client, stream: str, consumer: str) -> Any:
    """The consumer's info once nothing it delivered awaits an ack (or after 10 s)."""
    js = nc.jetstream()
    for _ in range(500):
        info = await js.consumer_info(stream, consumer)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    return info


async def js_info(nc: Client, stream: str, consumer: str) -> Any:
    return await nc.jetstream().consumer_info(stream, consumer)


def assert_arithmetic_done(status: Any) -> None:
    assert status.state == WorkflowState.COMPLETED
    assert status.step("add").output == {"sum": 5}
    assert status.step("double").output == {"sum": 10}
    assert status.step("say").output == {"text": "sum=5", "total": {"sum": 10}}


async def api_error(nc: Client, settings: NatsSettings, operation: str,
                    body: bytes) -> ErrorInfo:
    """Send a raw request to the API; the answer must be an error reply."""
    msg = await nc.request(settings.subjects.api(operation), body, timeout=10)
    assert msg.headers and msg.headers.get(ERROR_CODE_HEADER), msg.data
    info = ErrorInfo.model_validate_json(msg.data)
    assert msg.headers[ERROR_CODE_HEADER] == info.code
    return info


# -- happy paths --------------------------------------------------------------------


async def test_create_over_api_completes_and_outputs_flow_through_references(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    s = settings.subjects
    reply = await client.create(ARITHMETIC)
    assert reply.created
    assert reply.status is not None and reply.status.state == WorkflowState.RUNNING

    events = await read_events(nc, s, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)
    assert [e.type for e in events].count(EventType.STEP_DISPATCHED) == 3
    # No step is dispatched before the one it depends on succeeded.
    order = [(e.type, e.step_id) for e in events]
    assert order.index((EventType.STEP_SUCCEEDED, "add")) < order.index(
        (EventType.STEP_DISPATCHED, "double"))
    assert order.index((EventType.STEP_SUCCEEDED, "double")) < order.index(
        (EventType.STEP_DISPATCHED, "say"))
    assert terminal_of(events).data["output"] == {"say": {"text": "sum=5", "total": {"sum": 10}}}

    final = await client.get(reply.id)
    assert final.status is not None
    assert_arithmetic_done(final.status)
    assert final.status.output == {"say": {"text": "sum=5", "total": {"sum": 10}}}
    assert final.status.last_seq == len(events)

    completed = await read_events(nc, s, "*", EventType.WORKFLOW_COMPLETED.value)
    assert [(e.workflow_id, e.type) for e in completed] == [
        (reply.id, EventType.WORKFLOW_COMPLETED)]

    # Every inbox message (the create, three results) was acked, none redelivered, all
    # on the workflow's partition. (Counted by the consumer: worker-grace timers share
    # the inbox stream's sequence.)
    home = s.engine_partition_consumer(partition_of(reply.id))
    engine = await _settled(nc, s.inbox_stream, home)
    assert (engine.num_ack_pending, engine.num_redelivered, engine.delivered.consumer_seq) == (
        0, 0, 4)
    for other in s.engine_consumers:
        if other != home:
            assert (await js_info(nc, s.inbox_stream, other)).delivered.consumer_seq == 0


async def test_submit_with_an_id_completes_with_the_declared_output(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    config = {**ARITHMETIC, "id": "order-42",
              "output": {"total": "${steps.double.output.sum}", "in": "${input}"}}
    seq = await client.submit(config)
    assert seq >= 1

    events = await read_events(nc, settings.subjects, "order-42")
    assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)
    final = await client.get("order-42")
    assert final.status is not None
    assert_arithmetic_done(final.status)
    assert final.status.output == {"total": 10, "in": {"a": 2, "b": 3}}


async def test_submit_without_an_id_is_found_through_the_events_stream(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    s = settings.subjects
    await client.submit(ARITHMETIC)

    created = await read_events(nc, s, "*", EventType.WORKFLOW_CREATED.value,
                                terminals=None, count=1)
    assert len(created) == 1
    wid = created[0].workflow_id

    events = await read_events(nc, s, wid)
    assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)
    final = await client.get(wid)
    assert final.status is not None
    assert_arithmetic_done(final.status)


# -- retries, failures, timeouts ----------------------------------------------------


async def test_flaky_step_succeeds_on_its_third_attempt_after_two_retries(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "flaky", "steps": [
        {"id": "shaky", "task": "demo.flaky", "input": {"fail_times": 2},
         "retry": retry(3)}]})

    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)
    retrying = [e for e in events if e.type == EventType.STEP_RETRYING]
    assert [(e.attempt, e.data["next_attempt"], e.data["error"]["code"])
            for e in retrying] == [(1, 2, "flaky"), (2, 3, "flaky")]
    dispatched = [e.attempt for e in events if e.type == EventType.STEP_DISPATCHED]
    assert dispatched == [1, 2, 3]

    final = await client.get(reply.id)
    assert final.status is not None
    step = final.status.step("shaky")
    assert (step.state, step.attempts, step.output) == (StepState.SUCCEEDED, 3, {"attempt": 3})
    assert demo_worker.runs == {(reply.id, "shaky", n): 1 for n in (1, 2, 3)}


async def test_flaky_step_fails_the_workflow_when_attempts_run_out(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "flaky", "steps": [
        {"id": "shaky", "task": "demo.flaky", "input": {"fail_times": 2},
         "retry": retry(2)},
        {"id": "after", "task": "demo.noop", "depends_on": ["shaky"]}]})

    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_FAILED)
    assert [e.attempt for e in events if e.type == EventType.STEP_RETRYING] == [1]

    final = await client.get(reply.id)
    st = final.status
    assert st is not None and st.state == WorkflowState.FAILED
    assert st.error is not None
    assert (st.error.code, st.error.step) == ("flaky", "shaky")
    assert "shaky" in st.error.message
    assert (st.step("shaky").state, st.step("shaky").attempts) == (StepState.FAILED, 2)
    # The dependent step never ran.
    assert (st.step("after").state, st.step("after").attempts) == (StepState.CANCELLED, 0)
    assert terminal_of(events).data["error"]["step"] == "shaky"


async def test_non_retryable_error_fails_after_one_attempt(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "doomed", "steps": [
        {"id": "boom", "task": "demo.fail", "retry": retry(5)}]})

    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_FAILED)
    assert not [e for e in events if e.type == EventType.STEP_RETRYING]
    final = await client.get(reply.id)
    st = final.status
    assert st is not None and st.error is not None
    assert (st.error.code, st.error.step) == ("demo-failure", "boom")
    assert st.step("boom").attempts == 1
    assert demo_worker.runs == {(reply.id, "boom", 1): 1}


async def test_non_retryable_codes_end_a_retryable_failure_at_once(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "picky", "steps": [
        {"id": "shaky", "task": "demo.flaky", "input": {"fail_times": 3},
         "retry": retry(5, non_retryable_codes=["flaky"])}]})

    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_FAILED)
    final = await client.get(reply.id)
    st = final.status
    assert st is not None and st.error is not None
    assert (st.error.code, st.error.step) == ("flaky", "shaky")
    assert st.step("shaky").attempts == 1
    assert not [e for e in events if e.type == EventType.STEP_RETRYING]


async def test_step_timeout_fails_the_workflow_long_before_the_task_ends(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    reply = await client.create({"name": "slow", "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 3}, "timeout": 0.5,
         "retry": {"max_attempts": 1}}]})

    events = await read_events(nc, settings.subjects, reply.id, timeout=10)
    assert loop.time() - began < 2.5, "the timeout did not end the attempt"
    assert_history(events, terminal=EventType.WORKFLOW_FAILED)
    final = await client.get(reply.id)
    st = final.status
    assert st is not None and st.error is not None
    assert (st.error.code, st.error.step) == ("step-timeout", "nap")
    assert st.step("nap").state == StepState.FAILED


async def test_step_timeout_cancels_the_attempt_at_the_worker(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "slow", "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 3}, "timeout": 0.5,
         "retry": {"max_attempts": 1}}]})
    await read_events(nc, settings.subjects, reply.id, timeout=10, linger=0)
    await wait_for(lambda: demo_worker.running == 0, timeout=1.5,
                   what="the worker to abandon the timed-out attempt")
    assert demo_worker.cancelled == [(reply.id, "nap", 1)]


async def test_an_output_over_the_limit_fails_the_step(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "big", "input": {"blob": "x" * (130 * 1024)},
                                 "steps": [{"id": "copy", "task": "demo.echo",
                                            "input": {"blob": "${input.blob}"},
                                            "retry": retry(3)}]})
    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_FAILED)
    final = await client.get(reply.id)
    st = final.status
    assert st is not None and st.error is not None
    assert (st.error.code, st.error.step) == ("output-too-large", "copy")
    assert st.step("copy").attempts == 1  # not retried: it would only fail again
    assert st.step("copy").output is None


# -- stop and start -----------------------------------------------------------------


async def test_stop_cancels_the_running_step_at_the_worker(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "long", "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 20, "steps": 200}},
        {"id": "later", "task": "demo.noop", "depends_on": ["nap"]}]})
    await asyncio.wait_for(demo_worker.started.wait(), 10)

    stopped = await client.stop(reply.id)
    assert stopped.status is not None
    assert stopped.status.state in (WorkflowState.STOPPING, WorkflowState.STOPPED)

    events = await read_events(nc, settings.subjects, reply.id, timeout=10)
    assert_history(events, terminal=EventType.WORKFLOW_STOPPED)
    cancelled = [e for e in events if e.type == EventType.STEP_CANCELLED]
    assert [(e.step_id, e.attempt) for e in cancelled] == [("nap", 1)]
    # The cancellation was reported by the worker, not imposed by the grace timer.
    assert cancelled[0].data["error"]["code"] == "cancelled"
    await wait_for(lambda: demo_worker.running == 0, timeout=5)
    assert demo_worker.cancelled == [(reply.id, "nap", 1)]

    final = await client.get(reply.id)
    st = final.status
    assert st is not None and st.state == WorkflowState.STOPPED
    assert [(x.id, x.state) for x in st.steps] == [("nap", StepState.CANCELLED),
                                                   ("later", StepState.CANCELLED)]
    assert st.step("later").attempts == 0


async def test_stop_ends_a_step_nobody_answers_for_after_the_grace_period(
        engine: Orchestrator, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    # No worker serves ghost.task: the dispatched step never reports back.
    reply = await client.create({"name": "orphan", "steps": [
        {"id": "lost", "task": "ghost.task"}]})
    loop = asyncio.get_running_loop()
    stopping = await client.stop(reply.id)
    began = loop.time()
    assert stopping.status is not None
    assert stopping.status.state == WorkflowState.STOPPING

    events = await read_events(nc, settings.subjects, reply.id, timeout=10)
    waited = loop.time() - began
    assert 1.5 < waited < 5, f"stop_grace is 2s, the stop took {waited:.1f}s"
    assert_history(events, terminal=EventType.WORKFLOW_STOPPED)
    assert [e.type for e in events] == [
        EventType.WORKFLOW_CREATED, EventType.WORKFLOW_STARTED, EventType.STEP_DISPATCHED,
        EventType.WORKFLOW_STOPPING, EventType.STEP_CANCELLED, EventType.WORKFLOW_STOPPED]
    assert "grace" in events[4].data["reason"]


async def test_stop_of_a_finished_workflow_is_already_finished(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create({"name": "quick", "steps": [
        {"id": "a", "task": "demo.noop"}]})
    await client.wait(reply.id, timeout=10)
    with pytest.raises(AlreadyFinished) as caught:
        await client.stop(reply.id)
    assert caught.value.code == "already-finished"
    # Nothing was emitted by the refused stop.
    events = await read_events(nc, settings.subjects, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)


@pytest.mark.parametrize("wid", ["no-such-workflow", "not.a.token"])
async def test_unknown_workflow_is_not_found_for_get_start_and_stop(
        engine: Orchestrator, client: NatsflowClient, wid: str) -> None:
    for call in (client.get, client.start, client.stop):
        with pytest.raises(WorkflowNotFound) as caught:
            await call(wid)
        assert caught.value.code == "workflow-not-found"


async def test_created_workflow_waits_for_start_and_start_is_idempotent(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    s = settings.subjects
    reply = await client.create({**ARITHMETIC, "start": False})
    assert reply.created
    assert reply.status is not None and reply.status.state == WorkflowState.CREATED
    early = await read_events(nc, s, reply.id, terminals=None, count=1, linger=0.5)
    assert [e.type for e in early] == [EventType.WORKFLOW_CREATED]
    assert demo_worker.runs == {}

    first = await client.start(reply.id)
    second = await client.start(reply.id)
    for r in (first, second):
        assert r.status is not None
        assert r.status.state in (WorkflowState.RUNNING, WorkflowState.COMPLETED)

    events = await read_events(nc, s, reply.id)
    assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)
    assert [e.type for e in events].count(EventType.WORKFLOW_STARTED) == 1
    assert [e.type for e in events].count(EventType.STEP_DISPATCHED) == 3
    final = await client.get(reply.id)
    assert final.status is not None
    assert_arithmetic_done(final.status)


# -- idempotency --------------------------------------------------------------------


async def test_resubmit_with_the_same_id_is_idempotent_and_a_different_config_conflicts(
        engine: Orchestrator, client: NatsflowClient) -> None:
    config = {**ARITHMETIC, "id": "same-1", "start": False}
    first = await client.create(config)
    again = await client.create(config)
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id == "same-1"
    assert again.status == first.status

    with pytest.raises(IdConflict) as caught:
        await client.create({**config, "input": {"a": 1, "b": 1}})
    assert caught.value.code == "id-conflict"
    # The conflict changed nothing.
    now = await client.get("same-1")
    assert now.status == first.status


async def test_same_idempotency_key_without_an_id_maps_to_the_same_workflow(
        engine: Orchestrator, client: NatsflowClient) -> None:
    config = {**ARITHMETIC, "start": False}
    first = await client.create(config, idempotency_key="checkout-7")
    again = await client.create(config, idempotency_key="checkout-7")
    other = await client.create(config, idempotency_key="checkout-8")
    assert (first.created, again.created, other.created) == (True, False, True)
    assert again.id == first.id
    assert other.id != first.id


# -- invalid input over NATS --------------------------------------------------------


def _steps(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"config": {"name": "bad", "steps": list(steps)}}


INVALID_REQUESTS = {
    "cycle": (_steps({"id": "a", "task": "demo.noop", "depends_on": ["b"]},
                     {"id": "b", "task": "demo.noop", "depends_on": ["a"]}),
              "invalid-graph", "a", "config.steps.0.depends_on"),
    "unknown-dependency": (_steps({"id": "a", "task": "demo.noop", "depends_on": ["ghost"]}),
                           "invalid-graph", "a", "config.steps.0.depends_on"),
    "duplicate-id": (_steps({"id": "a", "task": "demo.noop"}, {"id": "a", "task": "demo.noop"}),
                     "invalid-graph", "a", "config.steps.1.id"),
    "empty-steps": (_steps(), "invalid-graph", None, "config.steps"),
    "ref-to-non-upstream-step": (
        _steps({"id": "a", "task": "demo.noop"},
               {"id": "b", "task": "demo.echo", "input": {"x": "${steps.a.output}"}}),
        "invalid-graph", "b", "config.steps.1.input"),
    "missing-task": (_steps({"id": "a"}), "validation-failed", None, "config.steps.0.task"),
    "bad-step-id": (_steps({"id": "a.b", "task": "demo.noop"}), "validation-failed", None,
                    "config.steps.0.id"),
}


@pytest.mark.parametrize("case", INVALID_REQUESTS)
async def test_invalid_workflow_is_refused_naming_the_step_and_field_and_the_engine_serves_on(
        demo_worker: Probe, client: NatsflowClient, nc: Client, settings: NatsSettings,
        case: str) -> None:
    body, code, step, field = INVALID_REQUESTS[case]
    info = await api_error(nc, settings, "workflow.create", json.dumps(body).encode())
    assert (info.code, info.step, info.field) == (code, step, field), info
    if code == "validation-failed":
        assert info.errors and info.errors[0].loc == field

    ok = await client.create({"name": "fine", "steps": [{"id": "a", "task": "demo.noop"}]})
    done = await client.wait(ok.id, timeout=10)
    assert done.status is not None and done.status.state == WorkflowState.COMPLETED


async def test_oversized_config_is_payload_too_large(
        engine: Orchestrator, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    big = {"config": {"name": "huge", "input": {"blob": "x" * (MAX_CONFIG_BYTES + 4096)},
                      "steps": [{"id": "a", "task": "demo.noop"}]}}
    info = await api_error(nc, settings, "workflow.create", json.dumps(big).encode())
    assert (info.code, info.field) == ("payload-too-large", "config")
    assert await client.ping()


async def test_malformed_request_bodies_are_validation_errors(
        engine: Orchestrator, nc: Client, settings: NatsSettings) -> None:
    info = await api_error(nc, settings, "workflow.create", b"\xff not json")
    assert info.code == "validation-failed"
    info = await api_error(nc, settings, "workflow.get", b'{"id": ""}')
    assert (info.code, info.field) == ("validation-failed", "id")
    # A definition name no KV key can hold (it was an internal error, once).
    info = await api_error(nc, settings, "workflow.create",
                           b'{"definition": "a.>", "version": 1}')
    assert (info.code, info.field) == ("validation-failed", "definition")


# -- poison messages ----------------------------------------------------------------


async def test_poison_messages_are_dead_lettered_and_the_engine_keeps_going(
        demo_worker: Probe, engine: Orchestrator, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    s = settings.subjects
    js = nc.jetstream()
    running = await client.create({"name": "victim", "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 0.5}},
        {"id": "b", "task": "demo.noop", "depends_on": ["nap"]}]})
    wid = running.id
    foreign = {"kind": "succeeded", "workflow_id": "someone-else", "step_id": "nap",
               "attempt": 1, "output": {}}
    poison = [
        (s.submit, b"\xff\xfe\x00 not json at all", "invalid-submit"),
        (s.submit, json.dumps({"name": "x", "stepz": []}).encode(), "invalid-submit"),
        (s.submit, json.dumps({"name": "x", "steps": []}).encode(), "invalid-graph"),
        (s.result(wid), b"\x00\x01garbage", "invalid-result"),
        (s.result(wid), json.dumps({"kind": "exploded", "workflow_id": wid}).encode(),
         "invalid-result"),
        (s.result(wid), json.dumps(foreign).encode(), "invalid-result"),
    ]
    for subject, payload, _ in poison:
        await js.publish(subject, payload)

    letters = await read_dead_letters(nc, s, count=len(poison))
    assert sorted((dlq_subject, letter.subject, letter.reason.code)
                  for dlq_subject, letter in letters) == sorted(
        (s.dlq(code), subject, code) for subject, _, code in poison)
    by_data = {letter.data: letter for _, letter in letters}
    assert by_data[json.dumps(foreign)].reason.field == "workflow_id"
    assert all(letter.stream_seq for _, letter in letters)

    # The workflow whose result subject was poisoned, and a new one, both complete.
    fresh = await client.create({"name": "after", "steps": [{"id": "a", "task": "demo.noop"}]})
    for w in (wid, fresh.id):
        events = await read_events(nc, s, w)
        assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)
    assert engine.processor is not None
    assert counted(engine.processor.metrics.registry, "natsflow_dead_letters_total") == \
        len(poison)


# -- availability -------------------------------------------------------------------


async def test_create_without_an_orchestrator_is_unavailable_at_once(
        client: NatsflowClient) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(Unavailable) as caught:
        await client.create(ARITHMETIC)
    assert caught.value.code == "unavailable"
    assert caught.value.retryable
    assert loop.time() - began < 2.0
    assert not await client.ping(timeout=0.2)


async def test_a_command_the_engine_does_not_answer_in_time_is_still_accepted(
        settings: NatsSettings, nc: Client) -> None:
    """The API persists a command, then waits a while for the engine's outcome; with no
    outcome it answers "accepted": a create as created, anything else with no status."""
    s = settings.subjects
    js = nc.jetstream()
    topology = Topology(s)
    await declare_stream(js, topology.inbox())  # and no engine consumes it
    stores = [KvRecordStore(await js.create_key_value(kv))
              for kv in (topology.workflows_kv(), topology.batches_kv())]
    publisher = await AsyncPublisher(nc).start()
    async def not_here(data: bytes) -> bytes:
        raise Unavailable("not served in this test")

    # The schedules' and triggers' operations have servers of their own in the
    # orchestrator (orchestrator.schedules_api, orchestrator.triggers), not needed here.
    api = Api(nc, s, workflows=stores[0], batches=stores[1], publisher=publisher,
              idempotency=await js.create_key_value(topology.idempotency_kv()),
              command_timeout=0.3,
              more={op: not_here for op in (*SCHEDULE_OPERATIONS, *TRIGGER_OPERATIONS)})
    await api.start()
    client = NatsflowClient(nc, s)
    try:
        created = await client.create({**ARITHMETIC, "id": "late-1"})
        stopped = await client.stop("late-1")
        assert (created.id, created.created, created.status) == ("late-1", True, None)
        assert (stopped.id, stopped.created, stopped.status) == ("late-1", False, None)
        assert (await js.stream_info(s.inbox_stream)).state.messages == 2  # both kept
    finally:
        await api.close()
        await publisher.close()


# -- durable timers -----------------------------------------------------------------


async def test_retry_timer_survives_an_orchestrator_restart(
        settings: NatsSettings, nc: Client) -> None:
    s = settings.subjects
    client = NatsflowClient(nc, s)
    first = Orchestrator(settings, stop_grace=2.0)
    await first.start()
    async with running_demo_worker(settings) as probe:
        try:
            reply = await client.create({"name": "patient", "steps": [
                {"id": "shaky", "task": "demo.flaky", "input": {"fail_times": 1},
                 "retry": {"max_attempts": 2, "initial_interval": 2.0}}]})
            await read_events(nc, s, reply.id, EventType.STEP_RETRYING.value,
                              terminals=None, count=1, linger=0)
        finally:
            await first.stop()
        assert probe.runs == {(reply.id, "shaky", 1): 1}
        # With no orchestrator, nothing moves; the timer waits in the inbox stream.
        await asyncio.sleep(0.3)
        assert await _state_in_kv(nc, settings, reply.id) == WorkflowState.RUNNING
        assert probe.runs == {(reply.id, "shaky", 1): 1}

        async with Orchestrator(settings, stop_grace=2.0):
            events = await read_events(nc, s, reply.id, timeout=15)
            assert_history(events, terminal=EventType.WORKFLOW_COMPLETED)
            final = await client.get(reply.id)
            assert final.status is not None
            assert final.status.step("shaky").output == {"attempt": 2}
        retrying = next(e for e in events if e.type == EventType.STEP_RETRYING)
        second = next(e for e in events
                      if e.type == EventType.STEP_DISPATCHED and e.attempt == 2)
        # The backoff was kept across the restart: not early, not lost.
        assert 1.9 <= (second.time - retrying.time).total_seconds() < 6
        assert probe.runs == {(reply.id, "shaky", 1): 1, (reply.id, "shaky", 2): 1}


async def _state_in_kv(nc: Client, settings: NatsSettings, wid: str) -> str:
    """A workflow's state read straight from its KV bucket (no orchestrator needed)."""
    kv = await nc.jetstream().key_value(settings.subjects.workflows_bucket)
    entry = await kv.get(wid)
    assert entry.value is not None
    return str(json.loads(entry.value)["status"]["state"])
