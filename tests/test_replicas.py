"""Several orchestrator replicas sharing one deployment on a real nats-server.

Each replica has its own NATS connection; they share the durable engine and timer
consumers, the KV buckets and the API's queue group. Whatever the interleaving, every
workflow must complete with each attempt dispatched once and a gap-free history.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from helpers import (
    Probe,
    assert_history,
    by_workflow,
    counted,
    read_events,
    running_demo_worker,
    terminal_of,
    wait_for,
)
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.messages import TaskSucceeded
from contracts.models import Event, EventType, StepState, WorkflowConfig, WorkflowState
from contracts.subjects import Subjects
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from orchestrator.records import (
    CreateWorkflow,
    EventEffect,
    ResultInput,
    StartWorkflow,
    StopWorkflow,
    WorkflowRecord,
)
from orchestrator.runtime import Item, Processor, fingerprint
from orchestrator.store import KvRecordStore
from transport.connect import NatsSettings
from transport.streams import Topology, declare_stream


@pytest.fixture
async def replicas(settings: NatsSettings) -> AsyncIterator[list[Orchestrator]]:
    """Two orchestrators with the same settings, each on its own connection."""
    orchs = [Orchestrator(settings, stop_grace=2.0) for _ in range(2)]
    for orch in orchs:
        await orch.start()
    try:
        yield orchs
    finally:
        for orch in orchs:
            if not orch._stopping.is_set():
                await orch.stop()


def fan_in(i: int, *, nap: float = 0.0) -> dict[str, Any]:
    """Three steps: two in parallel (their results race to the replicas), then a join."""
    join = ({"id": "three", "task": "demo.sleep", "depends_on": ["one", "two"],
             "input": {"seconds": nap}} if nap else
            {"id": "three", "task": "demo.add", "depends_on": ["one", "two"],
             "input": {"a": "${steps.one.output.sum}", "b": "${steps.two.output.sum}"}})
    return {"name": "fan-in", "id": f"wf-{i}", "input": {"n": i}, "steps": [
        {"id": "one", "task": "demo.add", "input": {"a": "${input.n}", "b": 1}},
        {"id": "two", "task": "demo.add", "input": {"a": "${input.n}", "b": 2}},
        join]}


async def submit_all(client: NatsflowClient, n: int, *, nap: float = 0.0) -> None:
    """Half through the API (answered by either replica), half fire-and-forget."""
    limit = asyncio.Semaphore(32)

    async def create(i: int) -> None:
        async with limit:
            reply = await client.create(fan_in(i, nap=nap))
            assert reply.created and reply.id == f"wf-{i}"

    await asyncio.gather(*(create(i) for i in range(0, n, 2)))
    for i in range(1, n, 2):
        await client.submit(fan_in(i, nap=nap))


def assert_all_done_once(events: Sequence[Event], n: int, probe: Probe, *,
                         nap: float = 0.0) -> None:
    """Every workflow completed correctly; every attempt dispatched and run exactly once."""
    flows = by_workflow(events)
    assert sorted(flows) == sorted(f"wf-{i}" for i in range(n))
    for wid, evs in flows.items():
        assert_history(evs, terminal=EventType.WORKFLOW_COMPLETED)
        i = int(wid.split("-")[1])
        want = {"slept": nap} if nap else {"sum": 2 * i + 3}
        assert terminal_of(evs).data["output"] == {"three": want}, wid
    dispatched = Counter((e.workflow_id, e.step_id, e.attempt) for e in events
                         if e.type == EventType.STEP_DISPATCHED)
    assert len(dispatched) == 3 * n
    assert set(dispatched.values()) == {1}, dispatched.most_common(3)
    assert set(dispatched) == set(probe.runs)
    assert set(probe.runs.values()) == {1}, probe.runs.most_common(3)


async def test_two_replicas_complete_200_workflows_dispatching_each_attempt_once(
        replicas: list[Orchestrator], nc: Client, settings: NatsSettings) -> None:
    n = 200
    client = NatsflowClient(nc, settings.subjects)
    async with running_demo_worker(settings) as probe:
        await submit_all(client, n)
        events = await read_events(nc, settings.subjects, terminals=n, timeout=90, linger=0.5)
    assert_all_done_once(events, n, probe)
    for orch in replicas:  # both replicas took part
        assert orch.processor is not None
        registry = orch.processor.metrics.registry
        assert counted(registry, "natsflow_inbox_processed_total") > 0
        assert counted(registry, "natsflow_dead_letters_total") == 0


async def test_the_other_replica_finishes_everything_when_one_stops_mid_run(
        replicas: list[Orchestrator], nc: Client, settings: NatsSettings) -> None:
    n = 100
    s = settings.subjects
    client = NatsflowClient(nc, s)
    completed: list[str] = []

    async def on_completed(msg: Msg) -> None:
        completed.append(Event.model_validate_json(msg.data).workflow_id)

    watch = await nc.subscribe(s.events_of("*", EventType.WORKFLOW_COMPLETED.value),
                               cb=on_completed)
    loop = asyncio.get_running_loop()
    async with running_demo_worker(settings, concurrency=16) as probe:
        await submit_all(client, n, nap=0.2)
        await wait_for(lambda: len(completed) >= n // 5, timeout=30)
        await replicas[0].stop()
        at_stop = len(completed)
        began = loop.time()
        events = await read_events(nc, s, terminals=n, timeout=90, linger=0.5)
        # Nothing waited for a redelivery after the ack wait of the stopped replica.
        assert loop.time() - began < 20
    await watch.unsubscribe()
    assert at_stop < n, "the replica stopped after the work was done: nothing proven"
    assert_all_done_once(events, n, probe, nap=0.2)
    assert await client.ping()


async def _deployment(nc: Client, s: Subjects) -> tuple[KvRecordStore, KvRecordStore]:
    """Streams and buckets a bare Processor needs; its workflow and batch stores."""
    js = nc.jetstream()
    topology = Topology(s)
    for stream in (topology.inbox(), topology.tasks(), topology.events(), topology.dlq()):
        await declare_stream(js, stream)
    await js.create_key_value(topology.summaries_kv())  # the outbox writes list lines
    return (KvRecordStore(await js.create_key_value(topology.workflows_kv())),
            KvRecordStore(await js.create_key_value(topology.batches_kv())))


async def test_a_replica_deciding_on_a_stale_cached_record_does_not_drop_a_result(
        nc: Client, settings: NatsSettings) -> None:
    """Regression: a result that looked stale to a replica's outdated cache was acked unseen.

    Replica ``a`` created the workflow (and cached it); replica ``b`` took the result of
    step one and dispatched step two. The result of step two then reaches ``a``: by its
    cached copy step two was never dispatched, so the result looked stale and, with no
    write to lose a compare-and-set, was acked and dropped; the workflow hung forever.
    """
    s = settings.subjects
    workflows, batches = await _deployment(nc, s)
    a, b = (Processor(nc, s, workflows=workflows, batches=batches) for _ in range(2))

    config = WorkflowConfig.model_validate({"name": "pair", "id": "wf", "steps": [
        {"id": "one", "task": "demo.noop"},
        {"id": "two", "task": "demo.noop", "depends_on": ["one"]}]})

    def item(inp: Any) -> Item:
        return Item("wf", "wf", inp, None, None)

    def done(step: str) -> Item:
        return item(ResultInput(result=TaskSucceeded(workflow_id="wf", step_id=step,
                                                     attempt=1, output={"step": step})))

    await a.process([item(CreateWorkflow(config=config, fingerprint=fingerprint(config)))])
    await b.process([done("one")])
    await a.process([done("two")])

    raw, _ = await workflows.load("wf")
    assert raw is not None
    status = WorkflowRecord.model_validate_json(raw).status
    assert [(st.id, st.state) for st in status.steps] == [("one", StepState.SUCCEEDED),
                                                          ("two", StepState.SUCCEEDED)]
    assert status.state == WorkflowState.COMPLETED


def gate_event_acks(proc: Processor, gate: Callable[[str], asyncio.Event]) -> None:
    """Sent events are stored as usual, but their acks reach ``proc`` only once
    ``gate(subject)`` is set."""
    real = proc.outbox.publisher.publish

    async def gated(subject: str, payload: bytes, headers: dict[str, str] | None = None,
                    *, timeout: float | None = None) -> asyncio.Future[int]:
        ack = await real(subject, payload, headers, timeout=timeout)
        if ".events." not in subject:
            return ack

        async def later() -> int:
            await gate(subject).wait()
            return await ack
        return asyncio.ensure_future(later())

    proc.outbox.publisher.publish = gated  # type: ignore[method-assign]


async def test_a_transition_saved_before_the_last_outbox_is_acked_carries_it(
        nc: Client, settings: NatsSettings) -> None:
    """One record's transitions wait for each other's write, not for each other's acks.

    While the create's outbox is still unacknowledged, the next transition of the same
    workflow is decided and saved; its stored outbox must hold the create's effects as
    well as its own, or a crash at that moment would lose the create's events.
    """
    s = settings.subjects
    workflows, batches = await _deployment(nc, s)
    proc = Processor(nc, s, workflows=workflows, batches=batches)
    held = asyncio.Event()
    gate_event_acks(proc, lambda subject: held)
    config = WorkflowConfig.model_validate({"name": "carry", "id": "wc", "start": False,
                                            "steps": [{"id": "one", "task": "demo.noop"}]})
    create = asyncio.create_task(proc.process([Item(
        "wf", "wc", CreateWorkflow(config=config, fingerprint=fingerprint(config)), None,
        None)]))
    await asyncio.sleep(0.3)
    assert not create.done()  # its events are not acknowledged
    start = asyncio.create_task(proc.process([Item("wf", "wc", StartWorkflow(), None, None)]))
    for _ in range(100):  # the start is decided and saved meanwhile
        raw, revision = await workflows.load("wc")
        if raw is not None and revision > 1:
            break
        await asyncio.sleep(0.05)
    assert raw is not None
    stored = WorkflowRecord.model_validate_json(raw)
    assert stored.status.state == WorkflowState.RUNNING
    seqs = [e.event.seq for e in stored.outbox if isinstance(e, EventEffect)]
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1))  # the create's too
    assert not start.done()
    held.set()
    await asyncio.wait_for(asyncio.gather(create, start), 10)
    assert proc.wf.sent == {}


async def test_a_transition_carries_only_the_effects_not_yet_stored(
        nc: Client, settings: NatsSettings) -> None:
    """What an earlier transition sent and JetStream stored is not carried further, even
    while a later one still waits for its acks: a record that changes faster than acks
    come back (a map's results) would otherwise carry ever more of them, and write and
    serialize them all again on every transition."""
    s = settings.subjects
    workflows, batches = await _deployment(nc, s)
    proc = Processor(nc, s, workflows=workflows, batches=batches)
    created_acked, rest_acked = asyncio.Event(), asyncio.Event()
    gate_event_acks(proc, lambda subject: created_acked
                    if subject.endswith(".workflow.created") else rest_acked)
    config = WorkflowConfig.model_validate({"name": "carry", "id": "wd", "start": False,
                                            "steps": [{"id": "one", "task": "demo.noop"}]})

    async def stored_after(revision: int) -> WorkflowRecord:
        for _ in range(100):
            raw, rev = await workflows.load("wd")
            if raw is not None and rev > revision:
                return WorkflowRecord.model_validate_json(raw)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no write after revision {revision}")

    def event_seqs(record: WorkflowRecord) -> list[int]:
        return [e.event.seq for e in record.outbox if isinstance(e, EventEffect)]

    inputs = [CreateWorkflow(config=config, fingerprint=fingerprint(config)),
              StartWorkflow(), StopWorkflow()]
    tasks = [asyncio.create_task(proc.process([Item("wf", "wd", inputs[0], None, None)]))]
    created = await stored_after(0)
    tasks.append(asyncio.create_task(proc.process([Item("wf", "wd", inputs[1], None, None)])))
    started = await stored_after(1)
    assert event_seqs(started)[0] == 1  # the create's event is not stored yet: carried
    first_of_start = event_seqs(started)[len(event_seqs(created)):][0]
    created_acked.set()  # now it is; the start's events are still waiting
    await asyncio.sleep(0.2)
    tasks.append(asyncio.create_task(proc.process([Item("wf", "wd", inputs[2], None, None)])))
    stopping = await stored_after(2)
    seqs = event_seqs(stopping)
    assert seqs[0] == first_of_start, seqs  # the start's carried, the create's not
    assert seqs == list(range(first_of_start, len(seqs) + first_of_start))
    rest_acked.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert proc.wf.sent == {}
