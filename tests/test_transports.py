"""One client, two transports: the HTTP transport answers as the NATS one does.

The routes the operation table declares (``Operation.http``) are checked against the
gateway app's own routes, and the same calls are made over a real nats-server and
through a real gateway (uvicorn, on the same deployment) with both transports.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.dependencies.utils import get_flat_params
from fastapi.params import Header, Query
from fastapi.routing import APIRoute
from nats.aio.client import Client
from ui_browser import serve_gateway

from contracts.errors import (
    AlreadyFinished,
    InvalidRequest,
    NatsflowError,
    SchemaMismatch,
    Unavailable,
    WorkflowNotFound,
)
from contracts.http_routes import HttpRoute
from contracts.messages import WorkflowReply
from contracts.operations import OPERATIONS
from gateway import create_app
from natsflow.client import NatsflowClient
from natsflow.transports import WORKFLOW_EVENTS, HttpTransport, error_from_problem
from orchestrator.index import IndexService
from transport.connect import NatsSettings

_PARAM = re.compile(r"\{[^}]+\}")


def _served() -> dict[tuple[str, str], APIRoute]:
    app = create_app(NatsSettings(), auth=None)
    return {(method, _PARAM.sub("{}", route.path)): route
            for route in app.routes if isinstance(route, APIRoute)
            for method in route.methods or ()}


_DECLARED: list[tuple[str, HttpRoute, Any]] = [
    *((op.name, op.http, op.request) for op in OPERATIONS.values() if op.http is not None),
    ("workflow events (SSE)", WORKFLOW_EVENTS, None)]


@pytest.mark.parametrize(("name", "route", "request_model"), _DECLARED,
                         ids=[name for name, _, _ in _DECLARED])
def test_every_declared_route_is_served_by_the_gateway(
        name: str, route: HttpRoute, request_model: Any) -> None:
    served = _served().get((route.method, _PARAM.sub("{}", route.path)))
    assert served is not None, f"{name}: the gateway serves no {route.method} {route.path}"
    params = get_flat_params(served.dependant)
    queries = {p.alias for p in params if isinstance(p.field_info, Query)}
    headers = {p.alias.lower() for p in params if isinstance(p.field_info, Header)}
    assert set(route.query.values()) <= queries, (name, queries)
    assert {h.lower() for h in route.headers.values()} <= headers, (name, headers)
    if request_model is not None:  # every field it names is the request's
        fields = set(request_model.model_fields)
        assert {*route.path_fields, *route.query, *route.headers} <= fields, name
        if route.scope is not None:
            assert "namespaces" in fields, name


def test_the_workflow_operations_the_cli_needs_have_routes() -> None:
    routed = {name for name, op in OPERATIONS.items() if op.http is not None}
    assert {"workflow.create", "workflow.get", "workflow.signal", "workflow.list",
            "workflow.stop"} <= routed


def test_a_problem_document_is_the_error_its_code_names() -> None:
    err = error_from_problem(404, {"type": "urn:natsflow:problem:workflow-not-found",
                                   "title": "Workflow not found", "status": 404,
                                   "detail": "no such id 'x'", "code": "workflow-not-found",
                                   "field": "id"})
    assert isinstance(err, WorkflowNotFound) and err.field == "id"
    assert err.message == "no such id 'x'"
    # Without a code (a proxy's page, say), the HTTP status alone decides.
    assert isinstance(error_from_problem(502, None), NatsflowError)
    assert error_from_problem(502, None).code == "unavailable"
    assert isinstance(error_from_problem(400, {"title": "Bad"}), InvalidRequest)


# -- the same answers over both transports ----------------------------------------------

@pytest.fixture
async def indexer(settings: NatsSettings, nc: Client) -> AsyncIterator[IndexService]:
    service = IndexService(settings, nc=nc)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def gateway(settings: NatsSettings, nc: Client) -> AsyncIterator[NatsflowClient]:
    """A client through a real gateway (uvicorn on a free port) of this deployment."""
    async with serve_gateway(settings, nc) as url:
        client = NatsflowClient(HttpTransport(url), settings.subjects)
        try:
            yield client
        finally:
            await client.aclose()


GATES = {"name": "gates", "id": "gates-1", "labels": {"team": "t1"}, "steps": [
    {"id": "first", "kind": "wait", "signal": "one"},
    {"id": "second", "kind": "wait", "signal": "two", "depends_on": ["first"]}]}


async def _raised(call: Any) -> NatsflowError:
    with pytest.raises(NatsflowError) as caught:
        await call
    return caught.value


async def _same_error(nats_call: Any, http_call: Any, kind: type[NatsflowError]) -> None:
    over_nats, over_http = await _raised(nats_call), await _raised(http_call)
    assert type(over_http) is type(over_nats) is kind, (over_nats, over_http)
    assert (over_http.code, over_http.field) == (over_nats.code, over_nats.field)


async def test_create_get_signal_answer_alike(engine: object, client: NatsflowClient,
                                              gateway: NatsflowClient) -> None:
    made = await gateway.create(GATES)
    assert made.created and made.status is not None
    assert made.status.step("first").state == "waiting"
    # The same config again: existed already, over either transport.
    again_http, again_nats = await gateway.create(GATES), await client.create(GATES)
    assert not again_http.created and not again_nats.created
    assert again_http == again_nats
    assert await gateway.get("gates-1") == await client.get("gates-1")

    sent = await gateway.signal("gates-1", "one", {"by": "ana"})
    assert sent.status is not None and sent.status.step("first").output == {"by": "ana"}
    assert sent == await client.get("gates-1")
    over_nats = await client.signal("gates-1", "two", [1, 2])
    assert over_nats.status is not None and over_nats.status.state == "completed"
    assert await gateway.get("gates-1") == await client.get("gates-1")

    # A workflow's events: the gateway's SSE gives what the events stream gives.
    over_sse = [e async for e in gateway.watch("gates-1")]
    assert over_sse == [e async for e in client.watch("gates-1")]
    assert [e async for e in gateway.events("gates-1", after=2, follow=False)] == \
        over_sse[2:]

    # 409, 404 (and outside the caller's scope, a 404 too), 400: the same errors.
    await _same_error(client.signal("gates-1", "two"), gateway.signal("gates-1", "two"),
                      AlreadyFinished)
    await _same_error(client.get("no-such"), gateway.get("no-such"), WorkflowNotFound)
    await _same_error(client.signal("no-such", "one"), gateway.signal("no-such", "one"),
                      WorkflowNotFound)
    await _same_error(client.get("gates-1", namespaces=["other"]),
                      gateway.get("gates-1", namespaces=["other"]), WorkflowNotFound)
    await _same_error(client.stop("gates-1", namespaces=["other"]),
                      gateway.stop("gates-1", namespaces=["other"]), WorkflowNotFound)
    await client.put_definition("typed", {
        "name": "typed", "input_schema": {"type": "object", "required": ["n"]},
        "steps": [{"id": "s", "kind": "transform", "output": 1}]})
    await _same_error(client.run("typed", {"m": 1}), gateway.run("typed", {"m": 1}),
                      SchemaMismatch)
    ran = await gateway.run("typed", {"n": 1}, workflow_id="typed-1")
    assert ran.created and ran.id == "typed-1"
    assert (await client.get("typed-1")).status is not None


async def test_list_answers_alike(engine: object, indexer: IndexService,
                                  client: NatsflowClient, gateway: NatsflowClient) -> None:
    for i in range(3):
        await client.create({**GATES, "id": f"l-{i}", "labels": {"team": f"t{i % 2}"}})
    for _ in range(100):  # the index follows the summaries bucket
        if len((await client.list_workflows(name="gates")).items) == 3:
            break
        await asyncio.sleep(0.05)
    for filters in ({}, {"name": "gates", "labels": {"team": "t0"}},
                    {"state": ["created", "running"], "limit": 2},
                    {"namespaces": ["default"], "counts": True},
                    {"namespaces": ["other"]}):
        over_nats = await client.list_workflows(**filters)
        assert await gateway.list_workflows(**filters) == over_nats, filters
    page = await client.list_workflows(limit=2)
    assert page.next_cursor is not None
    assert (await gateway.list_workflows(cursor=page.next_cursor, limit=2)
            == await client.list_workflows(cursor=page.next_cursor, limit=2))


async def test_what_has_no_route_is_refused_plainly(gateway: NatsflowClient) -> None:
    with pytest.raises(InvalidRequest, match="not served by the gateway's REST API"):
        await gateway.get_batch("b-1")
    with pytest.raises(InvalidRequest, match="needs NATS"):
        await gateway.submit(GATES)


def test_a_reply_without_status_reads_as_accepted() -> None:
    from contracts.http_routes import ReplyShape
    from natsflow.transports import _read  # the one reader of every STATUS route

    accepted = _read(ReplyShape.STATUS_CREATED, WorkflowReply, 202, {"id": "w"})
    assert accepted == WorkflowReply(id="w", created=True)
    assert _read(ReplyShape.STATUS, WorkflowReply, 202, {"id": "w"}) == WorkflowReply(id="w")


async def test_an_answer_that_is_not_a_natsflow_reply_is_unavailable() -> None:
    # A --gateway URL that points at some other HTTP server answering 200 with HTML.
    async def other(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>not a gateway</html>")

    transport = HttpTransport("http://127.0.0.1:9", http=httpx.AsyncClient(
        transport=httpx.MockTransport(other), base_url="http://127.0.0.1:9"))
    client = NatsflowClient(transport, NatsSettings().subjects)
    try:
        with pytest.raises(Unavailable, match="not a natsflow"):
            await client.get("wf-1")
    finally:
        await client.aclose()
