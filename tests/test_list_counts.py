"""Counts by state next to a page of the list (``counts``): the runs page's totals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from helpers import Probe
from nats.aio.client import Client

from contracts.messages import ListWorkflowsRequest
from contracts.models import WorkflowState
from gateway import create_app
from natsflow.client import NatsflowClient
from orchestrator.index import IndexService
from transport.connect import NatsSettings


@pytest.fixture(autouse=True)
async def indexer(settings: NatsSettings, nc: Client) -> AsyncIterator[IndexService]:
    service = IndexService(settings, nc=nc)
    await service.start()
    yield service
    await service.stop()


async def _counts(client: NatsflowClient, expected: dict[WorkflowState, int],
                  **filters: Any) -> dict[WorkflowState, int]:
    counts: dict[WorkflowState, int] | None = None
    for _ in range(100):  # the index follows the summaries: eventually consistent
        counts = (await client.list_workflows(counts=True, limit=1, **filters)).counts
        if counts == expected:
            break
        await asyncio.sleep(0.05)
    assert counts is not None
    return counts


async def test_counts_by_state_with_and_without_filters(
        demo_worker: Probe, client: NatsflowClient, settings: NatsSettings,
        nc: Client) -> None:
    for i in range(4):
        await client.create({"name": "good", "id": f"ok-{i}", "namespace": "a" if i else "b",
                             "labels": {"n": str(i % 2)},
                             "steps": [{"id": "s", "task": "demo.noop"}]})
    for i in range(2):
        await client.create({"name": "bad", "id": f"bad-{i}",
                             "steps": [{"id": "s", "task": "demo.fail"}]})
    await client.create({"name": "nap", "id": "nap", "start": False,
                         "steps": [{"id": "s", "task": "demo.noop"}]})
    for wid in ["ok-0", "ok-1", "ok-2", "ok-3", "bad-0", "bad-1"]:
        await client.wait(wid, timeout=30)
    done, failed, created = WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.CREATED
    # From the running counts (no filter but namespaces), and the state filter is ignored.
    assert await _counts(client, {done: 4, failed: 2, created: 1}) == {
        done: 4, failed: 2, created: 1}
    assert await _counts(client, {done: 4, failed: 2, created: 1}, state=["failed"]) == {
        done: 4, failed: 2, created: 1}
    assert await _counts(client, {done: 3}, namespace="a") == {done: 3}
    assert await _counts(client, {done: 1}, namespaces=["b"]) == {done: 1}
    # By a scan: any other filter.
    assert await _counts(client, {failed: 2}, name="bad") == {failed: 2}
    assert await _counts(client, {done: 2}, labels={"n": "1"}) == {done: 2}
    assert await _counts(client, {}, created_after=datetime.now(UTC)) == {}
    # A state change moves the running count: one created workflow completes.
    await client.start("nap")
    await client.wait("nap", timeout=30)
    assert await _counts(client, {done: 5, failed: 2}) == {done: 5, failed: 2}
    # Without counts, no counts: the wire stays as it was.
    plain = await client.list_workflows(limit=1)
    assert plain.counts is None
    assert "counts" not in ListWorkflowsRequest().model_dump()

    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        body = (await http.get("/workflows", params={"counts": "true", "limit": 2})).json()
        assert body["counts"] == {"completed": 5, "failed": 2} and len(body["items"]) == 2
        assert "counts" not in (await http.get("/workflows")).json()
        bad = await http.get("/workflows", params={"counts": "maybe"})
        assert bad.status_code == 400 and bad.json()["field"] == "query.counts"
