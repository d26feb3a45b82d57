"""The workflow list: filters, newest first, cursor pages (NATS API, gateway, CLI)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from helpers import Probe
from nats.aio.client import Client

from contracts.errors import ValidationFailed
from contracts.models import WorkflowState
from gateway import create_app
from natsflow.client import NatsflowClient
from orchestrator.index import IndexService
from transport.connect import NatsSettings


@pytest.fixture(autouse=True)
async def indexer(settings: NatsSettings, nc: Client) -> AsyncIterator[IndexService]:
    """The index service of this test's deployment."""
    service = IndexService(settings, nc=nc)
    await service.start()
    yield service
    await service.stop()


async def _settled(client: NatsflowClient, ids: list[str]) -> None:
    for wid in ids:
        await client.wait(wid, timeout=30)


async def _listed(client: NatsflowClient, expected: int, **filters: object) -> list[str]:
    for _ in range(100):  # the index follows the summaries bucket: eventually consistent
        page = await client.list_workflows(**filters)
        ids = [w.id for w in page.items]
        if len(ids) >= expected:
            return ids
        await asyncio.sleep(0.05)
    return ids


async def test_filters_pages_and_order(demo_worker: Probe, client: NatsflowClient,
                                       nc: Client, settings: NatsSettings) -> None:
    ok_ids, bad_ids = [], []
    for i in range(7):
        wid = f"ok-{i}"
        await client.create({"name": "good", "id": wid, "labels": {"team": "a" if i % 2 else "b"},
                             "steps": [{"id": "s", "task": "demo.noop"}]})
        ok_ids.append(wid)
    for i in range(3):
        wid = f"bad-{i}"
        await client.create({"name": "bad", "id": wid,
                             "steps": [{"id": "s", "task": "demo.fail"}]})
        bad_ids.append(wid)
    await _settled(client, ok_ids + bad_ids)
    newest_first = list(reversed(ok_ids + bad_ids))
    assert await _listed(client, 10, limit=100) == newest_first

    failed = await _listed(client, 3, state=["failed"])
    assert failed == list(reversed(bad_ids))
    assert await _listed(client, 7, name="good", state=["completed"]) == list(reversed(ok_ids))
    team_a = await _listed(client, 3, labels={"team": "a"})
    assert team_a == ["ok-5", "ok-3", "ok-1"]

    pages, cursor = [], None
    while True:
        page = await client.list_workflows(limit=4, cursor=cursor)
        pages.append([w.id for w in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [newest_first[0:4], newest_first[4:8], newest_first[8:10]]
    summary = (await client.list_workflows(name="bad", limit=1)).items[0]
    assert summary.state == WorkflowState.FAILED and summary.error_code == "demo-failure"
    later = await client.list_workflows(created_after=datetime.now(UTC))
    assert later.items == []
    with pytest.raises(ValidationFailed):
        await client.list_workflows(cursor="garbage")


async def test_the_gateway_lists_with_query_parameters(
        demo_worker: Probe, client: NatsflowClient, settings: NatsSettings,
        nc: Client) -> None:
    for i in range(3):
        await client.create({"name": "g", "id": f"g-{i}", "labels": {"env": "prod"},
                             "steps": [{"id": "s", "task": "demo.noop"}]})
    await _settled(client, ["g-0", "g-1", "g-2"])
    await _listed(client, 3)
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        resp = await http.get("/workflows", params={"state": "completed", "label": "env:prod",
                                                    "limit": 2})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert [w["id"] for w in body["items"]] == ["g-2", "g-1"] and body["next_cursor"]
        rest = await http.get("/workflows", params={"cursor": body["next_cursor"],
                                                    "label": "env:prod"})
        assert [w["id"] for w in rest.json()["items"]] == ["g-0"]
        bad = await http.get("/workflows", params={"label": "nocolon"})
        assert bad.status_code == 400 and bad.json()["field"] == "label"
        bad_state = await http.get("/workflows", params={"state": "sleepy"})
        assert bad_state.status_code == 400


async def test_bulk_operations_select_by_filter_with_a_dry_run(
        demo_worker: Probe, client: NatsflowClient, settings: NatsSettings,
        nc: Client) -> None:
    for i in range(4):
        await client.create({"name": "sleepy", "id": f"s-{i}", "labels": {"grp": "x"},
                             "steps": [{"id": "nap", "task": "demo.sleep",
                                        "input": {"seconds": 30}}]})
    await client.create({"name": "quick", "id": "q-0",
                         "steps": [{"id": "a", "task": "demo.noop"}]})
    await client.wait("q-0", timeout=30)
    await _listed(client, 4, name="sleepy", state=["running"])
    dry = await client.bulk("pause", dry_run=True, name="sleepy")
    assert (dry.matched, dry.done, sorted(dry.ids)) == (4, 0, ["s-0", "s-1", "s-2", "s-3"])
    assert (await client.get("s-0")).status.state == WorkflowState.RUNNING  # type: ignore[union-attr]
    paused = await client.bulk("pause", labels={"grp": "x"})
    assert paused.matched == 4 and paused.done == 4 and not paused.refused
    assert await _listed(client, 4, state=["paused"]) != []
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        stop = await http.post("/workflows/bulk/stop", json={"filter": {"name": "sleepy"}})
        assert stop.status_code == 200, stop.text
        assert stop.json()["done"] == 4
        refused = await http.post("/workflows/bulk/pause", json={"filter": {"name": "quick"}})
        assert refused.json()["refused"] == {"q-0": "invalid-state"}
        bad = await http.post("/workflows/bulk/explode")
        assert bad.status_code == 400
    for i in range(4):
        status = (await client.wait(f"s-{i}", timeout=30)).status
        assert status is not None and status.state == WorkflowState.STOPPED
