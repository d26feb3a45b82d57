"""The forgeries of issue 15, on a server without permissions: a result only counts if it
answers a task that was really sent (its token), whoever managed to publish it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from helpers import Probe, read_dead_letters, send
from nats.aio.client import Client

from contracts.errors import RecordUnreadable
from contracts.messages import TaskMessage, TaskSucceeded
from contracts.models import WorkflowState
from gateway import create_app
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from transport.connect import NatsSettings


async def test_a_fake_success_while_the_real_task_runs_is_refused(
        engine: Orchestrator, demo_worker: Probe, nc: Client, client: NatsflowClient,
        settings: NatsSettings) -> None:
    s = settings.subjects
    await client.create({"name": "slow", "id": "real1", "steps": [
        {"id": "a", "task": "demo.sleep", "input": {"seconds": 1.0}}]})
    await asyncio.wait_for(demo_worker.started.wait(), 10)
    fake = TaskSucceeded(workflow_id="real1", step_id="a", attempt=1, output="forged")
    # Under the id a worker used to give its result, and under a guessed token's.
    for msg_id in ("real1:a:1:result", "real1:a:1:result:"):
        await nc.jetstream().publish(s.result("real1"), fake.model_dump_json().encode(),
                                     headers={"Nats-Msg-Id": msg_id})
    final = await client.wait("real1", timeout=30)
    assert final.status is not None and final.status.state == WorkflowState.COMPLETED
    assert final.status.step("a").output == {"slept": 1.0}
    letters = await read_dead_letters(nc, s, count=2)
    assert [(subj, letter.reason.code, letter.subject) for subj, letter in letters] == [
        (s.dlq("forged-result"), "forged-result", s.result("real1"))] * 2
    assert engine.metrics.forged_results._value.get() == 2


async def test_a_fake_task_naming_another_workflows_step_changes_nothing(
        engine: Orchestrator, demo_worker: Probe, nc: Client, client: NatsflowClient,
        settings: NatsSettings) -> None:
    """The demo worker runs a task that names another workflow's step (anyone can publish
    tasks here); it echoes that task's token, which is not the attempt's: refused."""
    s = settings.subjects
    await client.create({"name": "victim", "id": "victim1", "steps": [
        {"id": "a", "task": "demo.sleep", "input": {"seconds": 1.0}},
        {"id": "b", "task": "demo.echo", "input": {"real": True}, "depends_on": ["a"]}]})
    await asyncio.wait_for(demo_worker.started.wait(), 10)
    for step, token in (("a", None), ("b", "guessed-token-guessed-x")):
        fake = TaskMessage(workflow_id="victim1", step_id=step, attempt=1, task="demo.echo",
                           input={"forged": True}, idempotency_key=f"victim1:{step}:1",
                           reply_to=s.result("victim1"), heartbeat_interval=10, token=token)
        await send(nc.jetstream(), s, fake)
    final = await client.wait("victim1", timeout=30)
    assert final.status is not None and final.status.state == WorkflowState.COMPLETED
    assert final.status.step("a").output == {"slept": 1.0}
    assert final.status.step("b").output == {"real": True}
    assert ("victim1", "a", 1) in demo_worker.runs  # the fake ones ran, for nothing
    letters = await read_dead_letters(nc, s, count=2)
    assert {letter.reason.code for _, letter in letters} == {"forged-result"}


async def test_garbage_in_a_workflows_record_is_said_to_be_so(
        engine: Orchestrator, demo_worker: Probe, nc: Client, client: NatsflowClient,
        settings: NatsSettings) -> None:
    """Forgery 3 without permissions: anyone can overwrite a record. What reads it says
    the record is unreadable (not that the request was wrong), and a command for it is
    answered at once instead of timing out."""
    s = settings.subjects
    await client.create({"name": "t", "id": "junk1", "steps": [
        {"id": "a", "task": "demo.echo", "input": {}}]})
    await client.wait("junk1", timeout=30)
    await nc.jetstream().publish(s.kv_put(s.workflows_bucket, "junk1"), b'{"not": "a record"}')
    with pytest.raises(RecordUnreadable) as got:
        await client.get("junk1")
    assert "junk1" in got.value.message and "overwritten" in got.value.message
    with pytest.raises(RecordUnreadable):
        await client.stop("junk1")
    app = create_app(settings, nc=nc, auth=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as http:
        resp = await http.get("/workflows/junk1")
    assert resp.status_code == 500
    assert resp.json()["code"] == "record-unreadable"
    # Other workflows are untouched.
    await client.create({"name": "t", "id": "fine1", "steps": [
        {"id": "a", "task": "demo.echo", "input": {}}]})
    final = await client.wait("fine1", timeout=30)
    assert final.status is not None and final.status.state == WorkflowState.COMPLETED


async def test_no_answer_of_the_api_carries_a_token(
        engine: object, nc: Client, settings: NatsSettings) -> None:
    # The engine's own answers (create, signal, stop...) are passed on as the engine
    # wrote them; each must leave the tokens out as a read of the record does.
    s = settings.subjects
    secret = "a-webhook-secret-nobody-sees"
    config = {"name": "tok", "id": "tok1", "steps": [
        {"id": "a", "task": "nobody.serves.this"},
        {"id": "w", "kind": "wait", "signal": "go"}],
        "webhooks": [{"url": "http://127.0.0.1:9/hook", "secret": secret}]}
    answers = [await nc.request(s.api("workflow.create"), json.dumps(
        {"config": config}).encode(), timeout=10)]
    for op, body in (("workflow.get", {"id": "tok1"}),
                     ("workflow.signal", {"id": "tok1", "name": "go", "payload": {}}),
                     ("workflow.stop", {"id": "tok1"})):
        answers.append(await nc.request(s.api(op), json.dumps(body).encode(), timeout=10))
    for answer in answers:
        status = json.loads(answer.data)["status"]
        assert status is not None, answer.data
        assert [st["id"] for st in status["steps"] if st.get("state") == "dispatched"] or \
            status["state"] in ("stopping", "stopped"), status
        assert b'"token"' not in answer.data, answer.data
        assert secret.encode() not in answer.data, answer.data
