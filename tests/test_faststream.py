"""natsflow task handlers in a FastStream app: the example app end to end, its AsyncAPI
document, and what TaskRouter refuses.

The behaviours both worker flavours share are in test_worker_flavours.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faststream import FastStream
from faststream.nats import NatsBroker, NatsRouter, TestNatsBroker
from helpers import example_workflow, load_example, wait_for
from nats.aio.client import Client

from contracts.models import WorkflowState
from natsflow.client import NatsflowClient
from natsflow.faststream import TaskRouter
from natsflow.worker import TaskContext
from transport.connect import NatsSettings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORKERS_DOC = ROOT / "docs" / "workers.md"


async def test_the_example_app_serves_a_workflow_beside_its_own_subscriber(
        engine: object, client: NatsflowClient, nc: Client, settings: NatsSettings) -> None:
    example = load_example("faststream_app.py")
    house = example.Warehouse()
    async with example.make_app(settings, house):
        # The app's own FastStream subscriber, fed by a plain publish.
        await nc.publish("warehouse.restock", json.dumps({"sku": "mug", "quantity": 3}).encode())
        await wait_for(lambda: house.stock == {"mug": 3}, what="the restock")
        await client.create(example_workflow("warehouse.yaml", "wh-ok"))
        await client.create(example_workflow("warehouse.yaml", "wh-short", order="A-1002"))
        ok = (await client.wait("wh-ok", timeout=60)).status
        short = (await client.wait("wh-short", timeout=60)).status
    assert ok is not None and ok.state == WorkflowState.COMPLETED, ok
    assert ok.output == {"parcel": "p-r-A-1001", "left": 1}
    assert ok.step("reserve").progress == {"reserved": 2}
    assert short is not None and short.state == WorkflowState.FAILED
    error = short.step("reserve").error
    assert error is not None and (error.code, error.retryable) == ("out-of-stock", False)
    assert error.details == {"sku": "mug", "in_stock": 1}
    assert house.packed == ["r-A-1001"] and house.stock == {"mug": 1}


async def test_the_workers_doc_example_serves_a_step(
        engine: object, client: NatsflowClient, nc: Client, settings: NatsSettings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    section = WORKERS_DOC.read_text().split("## In a FastStream app\n", 1)[1]
    (block,) = re.findall(r"^```python\n(.*?)^```", section.split("\n## ", 1)[0],
                          re.S | re.M)
    monkeypatch.setenv("NATS_URL", settings.servers[0])
    monkeypatch.setenv("NATSFLOW_PREFIX", settings.prefix)
    namespace: dict[str, Any] = {"__name__": "workers_doc_faststream"}
    exec(compile(block, str(WORKERS_DOC), "exec"), namespace)
    step = {"id": "reserve", "task": "warehouse.reserve",
            "input": {"order": "A-1", "sku": "cup", "quantity": 2}}
    async with namespace["app"]:
        await nc.publish("warehouse.restock", json.dumps({"sku": "cup", "quantity": 3}).encode())
        await wait_for(lambda: namespace["stock"] == {"cup": 3}, what="the restock")
        await client.create({"name": "doc", "id": "doc-ok", "steps": [step]})
        ok = (await client.wait("doc-ok", timeout=60)).status
        await client.create({"name": "doc", "id": "doc-short", "steps": [step]})
        short = (await client.wait("doc-short", timeout=60)).status
    assert ok is not None and ok.state == WorkflowState.COMPLETED, ok
    assert ok.step("reserve").output == {"left": 1}
    assert ok.step("reserve").progress == {"reserved": 2}
    assert short is not None and short.state == WorkflowState.FAILED
    error = short.step("reserve").error
    assert error is not None and (error.code, error.retryable) == ("out-of-stock", False)


async def test_the_apps_own_subscriber_has_an_in_memory_unit_test() -> None:
    # FastStream's TestNatsBroker is fine for a handler's unit test (never as the proof
    # that the system works: that is the test above); the TaskRouter does not get in
    # its way.
    example = load_example("faststream_app.py")
    house = example.Warehouse()
    app = example.make_app(NatsSettings(), house)
    async with TestNatsBroker(app.broker) as broker:
        await broker.publish({"sku": "mug", "quantity": 3}, "warehouse.restock")
    assert house.stock == {"mug": 3}


def test_the_documented_command_writes_an_asyncapi_document_with_the_task_subjects(
        tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    done = subprocess.run(
        [sys.executable, "-m", "faststream", "docs", "gen", "examples.faststream_app:app",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "NATSFLOW_PREFIX": "acme"})
    assert done.returncode == 0, done.stderr + done.stdout
    doc = json.loads(out.read_text())
    channels = {c["address"]: c for c in doc["channels"].values()}
    assert set(channels) == {"warehouse.restock", "acme.task.warehouse.reserve",
                             "acme.task.warehouse.pack", "acme.cancel.>"}
    reserve = channels["acme.task.warehouse.reserve"]
    assert reserve["description"].startswith("Reserve stock for an order")
    # The payload is a TaskMessage whose input is the handler's model.
    (message,) = reserve["messages"].values()
    name = message["$ref"].rsplit("/", 1)[-1]
    payload_ref = doc["components"]["messages"][name]["payload"]["$ref"]
    payload = doc["components"]["schemas"][payload_ref.rsplit("/", 1)[-1]]
    assert {"workflow_id", "idempotency_key", "reply_to", "input"} <= set(payload["required"])
    input_ref = payload["properties"]["input"]["$ref"]
    assert doc["components"]["schemas"][input_ref.rsplit("/", 1)[-1]]["required"] == [
        "order", "sku", "quantity"]


async def _noop(ctx: TaskContext, data: dict[str, Any]) -> None:
    return None


async def test_declare_needs_a_broker_and_no_subject_prefix(settings: NatsSettings) -> None:
    alone = TaskRouter(prefix=settings.prefix)
    alone.task("t.one")(_noop)
    with pytest.raises(RuntimeError, match="NatsBroker"):
        await alone.declare()
    prefixed = TaskRouter(prefix=settings.prefix)
    prefixed.task("t.one")(_noop)
    outer = NatsRouter()
    outer.include_router(prefixed, prefix="svc.")
    NatsBroker(settings.servers).include_router(outer)
    with pytest.raises(ValueError, match="without a prefix"):
        await prefixed.declare()


async def test_a_task_router_in_a_nested_router_serves(
        settings: NatsSettings, nc: Client) -> None:
    from helpers import run_one

    tasks = TaskRouter(prefix=settings.prefix)

    @tasks.task("t.echo")
    async def echo(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        return data

    outer = NatsRouter()
    outer.include_router(tasks)
    broker = NatsBroker(settings.servers)
    broker.include_router(outer)
    js = nc.jetstream()
    async with FastStream(broker, on_startup=[tasks.declare]):
        # Declared by the router, before any orchestrator exists: the tasks stream
        # and the consumer with natsflow's config.
        info = await js.consumer_info(settings.subjects.tasks_stream,
                                      settings.subjects.worker_consumer("t.echo"))
        assert info.config.ack_wait == 30.0 and info.config.max_deliver == -1
        await js.add_stream(name=settings.subjects.inbox_stream,
                            subjects=[settings.subjects.result("*", "*")])
        result = await asyncio.wait_for(run_one(js, settings.subjects, "t.echo", {"x": 1}), 20)
    assert result.kind == "succeeded" and result.output == {"x": 1}
