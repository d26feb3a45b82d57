"""With the index down, errors name the index, not the orchestrator, and ``/readyz``
reports each dependency (issue 14, item 13). Real nats-server, real services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from helpers import run_cli
from nats.aio.client import Client

from contracts.errors import Unavailable
from gateway import create_app
from natsflow.client import NatsflowClient
from orchestrator.index import IndexService
from transport.connect import NatsSettings

PROBLEM = "application/problem+json"


@pytest.fixture
async def http(settings: NatsSettings, nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, auth=None, nc=nc, request_timeout=2.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as client:
        yield client


@pytest.fixture
async def index(settings: NatsSettings, nc: Client) -> AsyncIterator[IndexService]:
    service = IndexService(settings, nc=nc)
    await service.start()
    yield service
    await service.stop()


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["code"] == code
    return body


def _oks(report: dict[str, Any]) -> dict[str, bool]:
    return {dep: report[dep]["ok"] for dep in ("nats", "orchestrator", "index")}


async def test_readyz_is_503_naming_the_index_when_only_the_index_is_down(
        engine: object, http: httpx.AsyncClient) -> None:
    body = _problem(await http.get("/readyz"), 503, "unavailable")
    assert "index" in body["detail"] and "orchestrator" not in body["detail"]
    assert "natsflow index" in body["detail"]
    assert _oks(body["details"]) == {"nats": True, "orchestrator": True, "index": False}
    assert body["details"]["status"] == "not-ready"


async def test_readyz_is_503_naming_the_orchestrator_when_only_it_is_down(
        index: IndexService, http: httpx.AsyncClient) -> None:
    body = _problem(await http.get("/readyz"), 503, "unavailable")
    assert "no orchestrator" in body["detail"] and "no index" not in body["detail"]
    assert _oks(body["details"]) == {"nats": True, "orchestrator": False, "index": True}


async def test_readyz_is_200_with_each_dependency_when_all_answer(
        engine: object, index: IndexService, http: httpx.AsyncClient) -> None:
    resp = await http.get("/readyz")
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["status"] == "ready"
    assert _oks(report) == {"nats": True, "orchestrator": True, "index": True}


async def test_list_and_bulk_without_the_index_name_the_index(
        engine: object, http: httpx.AsyncClient, client: NatsflowClient) -> None:
    for resp in (await http.get("/workflows"),
                 await http.post("/workflows/bulk/stop",
                                 json={"filter": {"name": "nothing"}, "dry_run": True})):
        body = _problem(resp, 503, "unavailable")
        assert "no index is running" in body["detail"], body
        assert body["details"] == {"service": "index"}
    with pytest.raises(Unavailable) as raised:
        await client.list_workflows()
    assert "index" in raised.value.message and "orchestrator is" not in raised.value.message
    # The orchestrator's own operations still name the orchestrator when it is gone.
    await engine.stop()  # type: ignore[attr-defined]
    with pytest.raises(Unavailable) as gone:
        await client.get("anything")
    assert gone.value.message == "no orchestrator is running"


async def test_cli_ls_without_the_index_names_the_index(
        engine: object, settings: NatsSettings) -> None:
    code, _, err = await run_cli("ls", settings=settings)
    assert code == 3, err
    assert err.startswith("error[unavailable]: no index is running"), err
