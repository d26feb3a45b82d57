"""Map steps on a real nats-server: fan-out, item outputs kept outside the record, blobs."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from helpers import Probe, assert_history, read_events
from nats.aio.client import Client

from contracts.blobs import is_blob_ref
from contracts.models import MAX_STEP_OUTPUT_BYTES, WorkflowState
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from orchestrator.fanout import output_key
from orchestrator.records import PutOutputEffect
from transport.connect import NatsSettings


async def test_a_map_over_hundreds_of_items_joins_outputs_in_order_and_a_large_join_is_a_blob(
        demo_worker: Probe, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    n = 300
    pad = "x" * 1000  # 1 KB per item output: 300 KB joined, more than one step output
    config = {
        "name": "fan-out", "id": "fan", "input": {"n": n, "pad": pad},
        "steps": [
            {"id": "ids", "kind": "transform", "output": "${[0, 1, 2].map(x, x)}"},
            {"id": "m", "kind": "map", "depends_on": ["ids"], "max_concurrency": 50,
             "items": "input.pad.size() > 0 ? [" + ", ".join(str(i) for i in range(n)) + "]"
                      " : []",
             "step": {"task": "demo.echo", "input": {"i": "${index}", "v": "${item}",
                                                     "pad": "${input.pad}"}}},
            {"id": "count", "task": "demo.count", "depends_on": ["m"],
             "input": {"items": "${steps.m.output}"}},
        ],
        "output": {"joined": "${steps.m.output}"},
    }
    await client.create(config)
    reply = await client.wait("fan", timeout=90)
    status = reply.status
    assert status is not None and status.state == WorkflowState.COMPLETED, status.error
    m = status.step("m")
    assert m.map is not None and m.map.succeeded == n and m.map.running == {}
    ref = m.output
    assert is_blob_ref(ref) and ref["count"] == n and ref["bytes"] > MAX_STEP_OUTPUT_BYTES
    # The record stays small: item outputs live in their own bucket.
    raw = await (await nc.jetstream().key_value(settings.subjects.workflows_bucket)).get("fan")
    assert raw.value is not None and len(raw.value) < 64 * 1024
    # The worker of the next step got the list itself, in order.
    counted = status.step("count").output
    assert counted["count"] == n and counted["first"]["i"] == 0
    assert counted["last"] == {"i": n - 1, "v": n - 1, "pad": pad}
    # The blob is there for anyone with a NATS client.
    obs = await nc.jetstream().object_store(ref["$blob"]["bucket"])
    stored = json.loads((await obs.get(ref["$blob"]["name"])).data or b"")
    assert [o["i"] for o in stored] == list(range(n)) and stored[7]["pad"] == pad
    events = await read_events(nc, settings.subjects, "fan", terminals=1)
    assert_history(events, terminal=None)
    assert len(events) < 60, "items do not flood the event stream"


async def test_a_small_map_output_stays_inline_and_a_failing_item_fails_the_map(
        demo_worker: Probe, client: NatsflowClient) -> None:
    await client.create({
        "name": "small", "id": "small", "input": {"xs": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]},
        "steps": [{"id": "sums", "kind": "map", "items": "input.xs",
                   "step": {"task": "demo.add", "input": {"a": "${item.a}", "b": "${item.b}"}}}]})
    status = (await client.wait("small", timeout=30)).status
    assert status is not None and status.state == WorkflowState.COMPLETED
    assert status.output == {"sums": [{"sum": 3}, {"sum": 7}]}
    await client.create({
        "name": "bad", "id": "bad", "input": {"xs": [1, 2, 3]},
        "steps": [{"id": "m", "kind": "map", "items": "input.xs",
                   "step": {"task": "demo.fail", "input": {"code": "nope"}}}]})
    failed = (await client.wait("bad", timeout=30)).status
    assert failed is not None and failed.state == WorkflowState.FAILED
    assert failed.error is not None and failed.error.step == "m"


async def test_a_map_of_ten_thousand_items_with_1kb_outputs_completes(
        engine: object, client: NatsflowClient, nc: Client, settings: NatsSettings) -> None:
    # Speed is measured by bench/map.py; here: it finishes, everything is kept, in order.
    from natsflow.worker import TaskContext, Worker

    worker = Worker(concurrency=256, name="kb-worker")
    pad = "k" * 1000

    @worker.task("test.kb")
    async def kb(ctx: TaskContext, data: dict[str, int]) -> dict[str, object]:
        return {"i": data["i"], "pad": pad}

    n = 10_000
    async with worker.running(settings):
        await client.create({
            "name": "big-map", "id": "big", "input": {"xs": list(range(n))},
            "steps": [{"id": "m", "kind": "map", "items": "input.xs", "max_concurrency": 1000,
                       "step": {"task": "test.kb", "input": {"i": "${item}"}}}]})
        status = (await client.wait("big", timeout=110)).status
    assert status is not None and status.state == WorkflowState.COMPLETED, status.error
    ref = status.step("m").output
    assert is_blob_ref(ref) and ref["count"] == n
    obs = await nc.jetstream().object_store(ref["$blob"]["bucket"])
    stored = json.loads((await obs.get(ref["$blob"]["name"])).data or b"")
    assert [o["i"] for o in stored] == list(range(n))
    assert all(o["pad"] == pad for o in stored)


async def test_a_join_waits_for_an_item_output_an_earlier_transition_is_still_storing(
        engine: Orchestrator, demo_worker: Probe, client: NatsflowClient,
        settings: NatsSettings, caplog: pytest.LogCaptureFixture) -> None:
    """The transition that joins a map can come while an earlier transition's item
    output is still on its way to the outputs bucket (a record's transitions wait for
    each other's write, not acks): the join waits for it instead of failing for want of
    it and having its message retried."""
    assert engine.processor is not None
    publisher = engine.processor.outbox.publisher
    real = publisher.publish
    outputs = settings.subjects.kv_put(settings.subjects.outputs_bucket, "")
    held: list[str] = []
    released = asyncio.Event()

    async def first_output_late(subject: str, payload: bytes,
                                headers: dict[str, str] | None = None, *,
                                timeout: float | None = None) -> asyncio.Future[int]:
        if not subject.startswith(outputs) or held:
            return await real(subject, payload, headers, timeout=timeout)
        held.append(subject)  # sent, and so stored, only half a second from now
        asyncio.get_running_loop().call_later(0.5, released.set)

        async def later() -> int:
            await released.wait()
            return await (await real(subject, payload, headers, timeout=timeout))
        return asyncio.ensure_future(later())

    publisher.publish = first_output_late  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="natsflow")
    await client.create({"name": "late", "id": "late", "input": {"xs": list(range(20))},
                         "steps": [{"id": "m", "kind": "map", "items": "input.xs",
                                    "step": {"task": "demo.echo", "input": {"i": "${item}"}}}]})
    status = (await client.wait("late", timeout=30)).status
    assert held
    assert status is not None and status.state == WorkflowState.COMPLETED, status.error
    output: Any = status.step("m").output
    assert [o["i"] for o in output] == list(range(20))
    trouble = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert trouble == []


async def test_a_map_join_goes_through_the_publisher_like_every_other_message(
        engine: Orchestrator, demo_worker: Probe, client: NatsflowClient,
        settings: NatsSettings) -> None:
    assert engine.processor is not None
    publisher = engine.processor.outbox.publisher
    real = publisher.publish
    ids: list[str] = []

    async def noted(subject: str, payload: bytes, headers: dict[str, str] | None = None, *,
                    timeout: float | None = None) -> asyncio.Future[int]:
        ids.append((headers or {}).get("Nats-Msg-Id", ""))
        return await real(subject, payload, headers, timeout=timeout)

    publisher.publish = noted  # type: ignore[method-assign]
    await client.create({"name": "joined", "id": "joined", "input": {"xs": [1, 2, 3]},
                         "steps": [{"id": "m", "kind": "map", "items": "input.xs",
                                    "step": {"task": "demo.echo", "input": {"i": "${item}"}}}]})
    status = (await client.wait("joined", timeout=30)).status
    assert status is not None and status.state == WorkflowState.COMPLETED, status.error
    assert [o["i"] for o in status.step("m").output] == [1, 2, 3]
    assert ids.count("join:joined:m:1") == 1, ids


async def test_a_join_is_the_item_outputs_as_the_outbox_stored_them_byte_for_byte(
        engine: Orchestrator, nc: Client) -> None:
    """The join concatenates the stored outputs rather than decoding and dumping them:
    the same bytes either way, for every kind of JSON value the outbox writes."""
    assert engine.processor is not None and engine.processor.outputs is not None
    outputs, router = engine.processor.outputs, engine.processor.router
    js = nc.jetstream()

    async def store(wf: str, values: list[Any]) -> None:
        acks = []
        for i, value in enumerate(values):
            subject, payload, _ = router.route(wf, PutOutputEffect(
                key=output_key(wf, "m", 1, i), output=value))
            acks.append(js.publish(subject, payload))
        await asyncio.gather(*acks)

    values: list[Any] = [{"s": 'é ✓ "q" \\ \n \u2028', "f": 0.1, "e": 1e300, "z": -0.0,
                          "big": 10**30, "n": None, "b": [True, False]}, [], {}, "x", -3, None]
    await store("small", values)
    joined, size = await outputs.joined("small", "m", 1, len(values))
    expected = json.dumps(values, separators=(",", ":")).encode()
    assert joined == values and size == len(expected)

    large = [{"i": i, "pad": "é" * 200} for i in range(MAX_STEP_OUTPUT_BYTES // 1000 + 10)]
    await store("large", large)
    ref, size = await outputs.joined("large", "m", 1, len(large))
    assert is_blob_ref(ref) and ref["count"] == len(large)
    obs = await js.object_store(ref["$blob"]["bucket"])
    data = (await obs.get(ref["$blob"]["name"])).data
    assert data == json.dumps(large, separators=(",", ":")).encode() and size == len(data)

    # An output someone else wrote, not JSON: the map fails with a reason, not the join.
    await js.publish(outputs.put_subject(output_key("foreign", "m", 1, 0)), b"{not json")
    with pytest.raises(ValueError, match="not JSON"):
        await outputs.joined("foreign", "m", 1, 1)
