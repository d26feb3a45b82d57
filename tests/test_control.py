"""Pause, resume, retry and rerun on a real nats-server: NATS API, gateway and CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from helpers import Probe, read_events
from nats.aio.client import Client

from contracts.errors import InvalidState, ValidationFailed, WorkflowNotFound
from contracts.models import EventType, StepState, WorkflowState, WorkflowStatus
from gateway import create_app
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings


async def _until(client: NatsflowClient, wid: str, check: Any, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = (await client.get(wid)).status
        if status is not None and check(status):
            return status
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.05)


SLOW_CHAIN: dict[str, Any] = {
    "name": "chain", "steps": [
        {"id": "a", "task": "demo.sleep", "input": {"seconds": 0.5}},
        {"id": "b", "task": "demo.echo", "depends_on": ["a"], "input": {"n": 1}},
    ]}


async def test_pause_holds_the_next_step_and_resume_releases_it(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    await client.create({**SLOW_CHAIN, "id": "p1"})
    paused = (await client.pause("p1")).status
    assert paused is not None and paused.state == WorkflowState.PAUSED
    # a finishes while paused; its result is kept, b does not start.
    status = await _until(client, "p1", lambda s: s.step("a").state == StepState.SUCCEEDED)
    await asyncio.sleep(0.5)
    status = (await client.get("p1")).status
    assert status is not None and status.step("b").state == StepState.PENDING
    with pytest.raises(InvalidState):
        await client.retry("p1")
    resumed = (await client.resume("p1")).status
    assert resumed is not None and resumed.state in (WorkflowState.RUNNING,
                                                     WorkflowState.COMPLETED)
    done = (await client.wait("p1", timeout=30)).status
    assert done is not None and done.state == WorkflowState.COMPLETED
    with pytest.raises(InvalidState) as refused:
        await client.pause("p1")
    assert "completed" in refused.value.message
    types = [e.type for e in await read_events(nc, settings.subjects, "p1", terminals=1)]
    assert types.index(EventType.WORKFLOW_PAUSED) < types.index(EventType.WORKFLOW_RESUMED)
    with pytest.raises(WorkflowNotFound):
        await client.pause("nope")


async def test_retry_resumes_from_the_failed_step_with_a_new_input(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    await client.create({"name": "flaky", "id": "r1", "steps": [
        {"id": "a", "task": "demo.echo", "input": {"v": 1}},
        {"id": "b", "task": "demo.flaky", "depends_on": ["a"], "input": {"fail_times": 5}},
        {"id": "c", "task": "demo.echo", "depends_on": ["b"],
         "input": {"from_b": "${steps.b.output}"}},
    ]})
    failed = (await client.wait("r1", timeout=30)).status
    assert failed is not None and failed.state == WorkflowState.FAILED
    with pytest.raises(ValidationFailed):
        await client.retry("r1", inputs={"ghost": {}})
    await client.retry("r1", inputs={"b": {"fail_times": 0}})
    done = (await client.wait("r1", timeout=30)).status
    assert done is not None and done.state == WorkflowState.COMPLETED, done.error
    assert done.runs == 2 and done.step("a").attempts == 1  # a kept its output
    assert done.step("b").attempts == 2 and done.step("b").attempt_base == 1
    assert done.step("c").output == {"from_b": {"attempt": 2}}
    events = await read_events(nc, settings.subjects, "r1", terminals=2)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e.type for e in events if e.type.value.startswith("workflow.")][-3:] == [
        EventType.WORKFLOW_FAILED, EventType.WORKFLOW_RETRIED, EventType.WORKFLOW_COMPLETED]


async def test_rerun_from_a_step_reuses_the_earlier_outputs(
        demo_worker: Probe, client: NatsflowClient) -> None:
    await client.create({"name": "chain", "id": "old", "input": {"n": 1}, "steps": [
        {"id": "a", "task": "demo.echo", "input": {"n": "${input.n}"}},
        {"id": "b", "task": "demo.echo", "depends_on": ["a"],
         "input": {"a": "${steps.a.output.n}", "n": "${input.n}"}}]})
    await client.wait("old", timeout=30)
    reply = await client.rerun("old", input={"n": 2}, from_step="b", new_id="new")
    assert reply.id == "new"
    new = (await client.wait("new", timeout=30)).status
    assert new is not None and new.state == WorkflowState.COMPLETED
    assert new.rerun_of == "old" and new.step("a").reused_from == "old"
    assert new.step("b").output == {"a": 1, "n": 2}  # a reused, b ran with the new input
    whole = (await client.rerun("old")).id
    again = (await client.wait(whole, timeout=30)).status
    assert again is not None and again.step("a").reused_from is None
    with pytest.raises(ValidationFailed) as bad:
        await client.rerun("old", from_step="ghost")
    assert bad.value.field == "from_step"


@pytest.fixture
async def http(demo_worker: Probe, settings: NatsSettings,
               nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def test_the_gateway_answers_control_operations_and_refuses_with_409(
        http: httpx.AsyncClient, client: NatsflowClient) -> None:
    created = await http.post("/workflows", json={**SLOW_CHAIN, "id": "g1"})
    assert created.status_code == 202
    paused = await http.post("/workflows/g1/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    refused = await http.post("/workflows/g1/retry")
    assert refused.status_code == 409 and refused.json()["code"] == "invalid-state"
    resumed = await http.post("/workflows/g1/resume")
    assert resumed.status_code == 200
    status = WorkflowStatus.model_validate((await client.wait("g1", timeout=30)).status)
    assert status.state == WorkflowState.COMPLETED
    again = await http.post("/workflows/g1/rerun", json={"new_id": "g2"})
    assert again.status_code == 202 and again.headers["location"] == "/workflows/g2"
    bad = await http.post("/workflows/g1/retry", json={"inputs": "nope"})
    assert bad.status_code == 400
    missing = await http.post("/workflows/nope/resume")
    assert missing.status_code == 404
