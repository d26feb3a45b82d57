"""The realistic examples in examples/ run end to end on a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import Probe, example_workflow, load_example, read_events, wait_for
from nats.aio.client import Client

from contracts.models import EventType, StepState, WorkflowState
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings


async def test_order_saga_ships_through_plain_nats_services(
        engine: object, client: NatsflowClient, nc: Client, settings: NatsSettings) -> None:
    shop_mod = load_example("shop.py")
    shop = shop_mod.Shop()
    service = await shop_mod.serve_shop(nc, shop)
    try:
        await client.create(example_workflow("order-saga.yaml", "order-ok"))
        status = (await client.wait("order-ok", timeout=60)).status
        assert status is not None and status.state == WorkflowState.COMPLETED, status.error
        assert status.output == {"payment": "p-A-1001", "tracking": "t-A-1001"}
        assert shop.shipped == ["A-1001"] and shop.refunded == [] and shop.released == []
        assert status.step("refund").state == StepState.SKIPPED
    finally:
        await service.stop()


async def test_order_saga_compensates_newest_first_when_shipping_fails(
        engine: object, client: NatsflowClient, nc: Client, settings: NatsSettings) -> None:
    shop_mod = load_example("shop.py")
    shop = shop_mod.Shop()
    service = await shop_mod.serve_shop(nc, shop)
    try:
        await client.create(example_workflow("order-saga.yaml", "order-bad", address=""))
        status = (await client.wait("order-bad", timeout=60)).status
        assert status is not None and status.state == WorkflowState.FAILED
        assert status.error is not None and status.error.step == "ship"
        assert shop.refunded == ["p-A-1001"] and shop.released == ["r-A-1001"]
        events = await read_events(nc, settings.subjects, "order-bad", terminals=1)
        order = [(e.type, e.step_id) for e in sorted(events, key=lambda e: e.seq)
                 if e.type in (EventType.STEP_SUCCEEDED, EventType.WORKFLOW_COMPENSATING,
                               EventType.WORKFLOW_FAILED)]
        assert order[-4:] == [(EventType.WORKFLOW_COMPENSATING, None),
                              (EventType.STEP_SUCCEEDED, "refund"),
                              (EventType.STEP_SUCCEEDED, "release"),
                              (EventType.WORKFLOW_FAILED, None)]
    finally:
        await service.stop()


async def test_document_pipeline_maps_pages_waits_for_approval_and_publishes(
        demo_worker: Probe, client: NatsflowClient, nc: Client) -> None:
    published: list[bytes] = []

    async def on_published(msg: Any) -> None:
        published.append(msg.data)

    sub = await nc.subscribe("docs.published.contract-42", cb=on_published)
    try:
        await client.create(example_workflow("document-pipeline.yaml", "doc-1"))

        async def waiting() -> bool:
            status = (await client.get("doc-1")).status
            return status is not None and status.step("approval").state == StepState.WAITING

        for _ in range(200):
            if await waiting():
                break
            await asyncio.sleep(0.1)
        await client.signal("doc-1", "approval", {"decision": "approved", "by": "ada"})
        status = (await client.wait("doc-1", timeout=60)).status
        assert status is not None and status.state == WorkflowState.COMPLETED, status.error
        assert status.output == {"decision": "approved", "pages": 3}
        assert status.step("pages").output[2] == {"page": 3, "text": "Signatures", "chars": 10}
        assert status.step("archive").state == StepState.SKIPPED
        await wait_for(lambda: bool(published), timeout=10)
    finally:
        await sub.unsubscribe()
