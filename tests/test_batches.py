"""Batches on a real nats-server: bounded concurrency, completion, stop, not found."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from helpers import (
    Probe,
    assert_history,
    by_workflow,
    read_events,
    terminal_of,
    wait_for,
)
from nats.aio.client import Client

from contracts.errors import AlreadyFinished, BatchNotFound, WorkflowNotFound
from contracts.messages import BATCH_TERMINAL, BatchReply, BatchState
from contracts.models import EVENT_TERMINAL, EventType, WorkflowState
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from transport.connect import NatsSettings


def template(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "member", "steps": list(steps)}


NAP_THEN_ADD = template(
    {"id": "nap", "task": "demo.sleep", "input": {"seconds": "${input.nap}"}},
    {"id": "sum", "task": "demo.add", "depends_on": ["nap"],
     "input": {"a": "${input.i}", "b": 100}})


async def wait_batch(client: NatsflowClient, batch_id: str, *, timeout: float = 20.0
                     ) -> BatchReply:
    """Poll the batch until it is terminal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await client.get_batch(batch_id)
        assert reply.status is not None
        if reply.status.state in BATCH_TERMINAL:
            return reply
        assert loop.time() < deadline, reply.status
        await asyncio.sleep(0.05)


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """Most intervals open at one instant (an end before a start at the same instant)."""
    marks = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    open_now = peak = 0
    for _, delta in marks:
        open_now += delta
        peak = max(peak, open_now)
    return peak


async def test_batch_of_ten_runs_at_most_three_members_at_once_and_completes(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create_batch({
        "id": "tenfold", "workflow": NAP_THEN_ADD, "max_concurrency": 3,
        "inputs": [{"i": i, "nap": 0.3} for i in range(10)]})
    assert reply.created and reply.id == "tenfold"
    assert reply.status is not None
    assert reply.status.counts == {"running": 3, "pending": 7}

    events = await read_events(nc, settings.subjects, terminals=10)
    done = await wait_batch(client, "tenfold")
    st = done.status
    assert st is not None
    assert st.state == BatchState.COMPLETED
    assert st.counts == {"completed": 10}
    assert [(m.index, m.workflow_id, m.state) for m in st.members] == [
        (i, f"tenfold-{i}", "completed") for i in range(10)]
    assert st.finished_at is not None

    # Never more than three members at once: seen by the worker ...
    assert demo_worker.max_running <= 3
    # ... and in the members' lifetimes, from started to terminal event.
    members = by_workflow(events)
    assert sorted(members) == sorted(f"tenfold-{i}" for i in range(10))
    lifetimes = []
    for wid, evs in members.items():
        assert_history(evs, terminal=EventType.WORKFLOW_COMPLETED)
        started = next(e.time for e in evs if e.type == EventType.WORKFLOW_STARTED)
        ended = next(e.time for e in evs if e.type in EVENT_TERMINAL)
        lifetimes.append((started, ended))
        index = int(wid.rsplit("-", 1)[1])
        assert terminal_of(evs).data["output"] == {"sum": {"sum": index + 100}}
    assert max_overlap(lifetimes) == 3

    member = await client.get("tenfold-4")
    assert member.status is not None
    assert member.status.batch_id == "tenfold"
    assert member.status.labels["batch"] == "tenfold"
    again = await client.create_batch({
        "id": "tenfold", "workflow": NAP_THEN_ADD, "max_concurrency": 3,
        "inputs": [{"i": i, "nap": 0.3} for i in range(10)]})
    assert not again.created


async def test_batch_with_a_failed_member_ends_failed(
        demo_worker: Probe, client: NatsflowClient) -> None:
    reply = await client.create_batch({
        "workflow": template({"id": "try", "task": "demo.flaky",
                              "input": {"fail_times": "${input.f}"}}),
        "inputs": [{"f": 0}, {"f": 1}, {"f": 0}]})
    done = await wait_batch(client, reply.id)
    st = done.status
    assert st is not None
    assert st.state == BatchState.FAILED
    assert st.counts == {"completed": 2, "failed": 1}
    assert [m.state for m in st.members] == ["completed", "failed", "completed"]


async def test_stopping_a_batch_stops_running_members_and_never_starts_the_rest(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    reply = await client.create_batch({
        "id": "halted", "max_concurrency": 2,
        "workflow": template({"id": "nap", "task": "demo.sleep",
                              "input": {"seconds": 20, "steps": 200}}),
        "inputs": [{} for _ in range(6)]})
    assert reply.created
    await wait_for(lambda: demo_worker.running == 2, what="two members running")

    stopping = await client.stop_batch("halted")
    assert stopping.status is not None
    assert stopping.status.state in (BatchState.STOPPING, BatchState.STOPPED)

    done = await wait_batch(client, "halted", timeout=10)
    st = done.status
    assert st is not None
    assert st.state == BatchState.STOPPED
    assert st.counts == {"stopped": 6}
    await wait_for(lambda: demo_worker.running == 0, timeout=5)
    assert sorted(demo_worker.cancelled) == [("halted-0", "nap", 1), ("halted-1", "nap", 1)]
    for i in (0, 1):
        member = await client.get(f"halted-{i}")
        assert member.status is not None and member.status.state == WorkflowState.STOPPED
        events = await read_events(nc, settings.subjects, f"halted-{i}")
        assert_history(events, terminal=EventType.WORKFLOW_STOPPED)
    for i in range(2, 6):  # never created
        with pytest.raises(WorkflowNotFound):
            await client.get(f"halted-{i}")
    with pytest.raises(AlreadyFinished):
        await client.stop_batch("halted")


async def test_unknown_batch_is_not_found(engine: Orchestrator, client: NatsflowClient) -> None:
    for call in (client.get_batch, client.stop_batch):
        with pytest.raises(BatchNotFound) as caught:
            await call("nope")
        assert caught.value.code == "batch-not-found"
