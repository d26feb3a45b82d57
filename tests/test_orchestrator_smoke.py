"""The orchestrator on a real nats-server, driven by a raw nats-py worker."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client

from natsflow.client import NatsflowClient
from transport.connect import NatsSettings
from transport.streams import Topology, ensure_consumer


async def raw_worker(nc: Client, settings: NatsSettings, task_type: str, stop: asyncio.Event,
                     fn=lambda inp: inp) -> None:  # type: ignore[no-untyped-def]
    """A worker written with nothing but nats-py and the documented JSON contract."""
    js = nc.jetstream()
    s = settings.subjects
    await ensure_consumer(js, s.tasks_stream, Topology(s).worker_consumer(task_type))
    sub = await js.pull_subscribe_bind(s.worker_consumer(task_type), stream=s.tasks_stream)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(10, timeout=0.5)
        except Exception:
            continue
        for msg in msgs:
            task = json.loads(msg.data)
            result = {"kind": "succeeded", "workflow_id": task["workflow_id"],
                      "step_id": task["step_id"], "attempt": task["attempt"],
                      "token": task.get("token"), "output": fn(task["input"])}
            await js.publish(task["reply_to"], json.dumps(result).encode(),
                             headers={"Nats-Msg-Id": (f"{task['idempotency_key']}:result:"
                                                     f"{task.get('token')}")})
            await msg.ack()


async def test_two_step_workflow_completes(engine: object, nc: Client,
                                           settings: NatsSettings) -> None:
    client = NatsflowClient(nc, settings.subjects)
    stop = asyncio.Event()
    worker = asyncio.create_task(raw_worker(nc, settings, "echo", stop))
    try:
        reply = await client.create({
            "name": "two", "input": {"x": 3},
            "steps": [{"id": "a", "task": "echo", "input": {"v": "${input.x}"}},
                      {"id": "b", "task": "echo", "depends_on": ["a"],
                       "input": {"w": "${steps.a.output.v}"}}]})
        assert reply.created and reply.status is not None
        final = await client.wait(reply.id, timeout=20)
        assert final.status is not None
        assert final.status.state == "completed"
        assert final.status.output == {"b": {"w": 3}}
        events = [e async for e in client.events(reply.id, follow=False)]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.type.value for e in events] == [
            "workflow.created", "workflow.started", "step.dispatched", "step.started",
            "step.succeeded", "step.dispatched", "step.started", "step.succeeded",
            "workflow.completed"]
    finally:
        stop.set()
        await worker
