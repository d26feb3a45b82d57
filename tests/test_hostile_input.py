"""Hostile input on what this release added: namespaces, scopes, the operation table.

Each must get a clear 4xx (HTTP) or an error reply (NATS), never a 500 or a silence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client

from contracts.headers import ERROR_CODE_HEADER
from contracts.operations import INDEX_OPERATIONS, OPERATIONS
from gateway import create_app
from gateway._problems import HTTP_BY_CODE
from orchestrator.index import IndexService
from transport.connect import NatsSettings

_GARBAGE = (b"", b"\x00\xff\xfe", b"[]", b"null", b'"x"', b"7", b'{"id": NaN}',
            b"{" * 300, b'{"id": "a.>"}', b'{"id": "*"}', b'{"namespaces": "team-a"}',
            b'{"namespaces": ["a.>"]}')


@pytest.fixture
async def index(engine: object, settings: NatsSettings) -> AsyncIterator[IndexService]:
    service = IndexService(settings)
    await service.start()
    yield service
    await service.stop()


async def test_garbage_to_every_operation_gets_an_error_reply(
        index: IndexService, nc: Client, settings: NatsSettings) -> None:
    assert set(OPERATIONS) >= INDEX_OPERATIONS
    for name in OPERATIONS:
        for body in _GARBAGE:
            if body == b"" and name.endswith(".list"):
                continue  # an empty request lists with no filter, as documented
            answer = await nc.request(settings.subjects.api(name), body, timeout=10)
            code = (answer.headers or {}).get(ERROR_CODE_HEADER)
            # An error reply whose code is a client's mistake (4xx over HTTP).
            assert code in HTTP_BY_CODE and HTTP_BY_CODE[code].status < 500, (
                name, body[:40], answer)
            assert b"internal error" not in answer.data, (name, body[:40], answer.data)


async def test_wildcards_and_bad_namespaces_over_http_are_4xx(
        index: IndexService, nc: Client, settings: NatsSettings) -> None:
    app = create_app(settings, auth=None, request_timeout=5.0, nc=nc)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://gw") as http:
        steps = [{"id": "a", "task": "t"}]
        for body in ({"name": "n", "id": "a.>", "steps": steps},
                     {"name": "n", "id": "*", "steps": steps},
                     {"name": "n", "namespace": "a.*", "steps": steps},
                     {"name": "n", "namespace": "", "steps": steps},
                     {"name": "n", "namespace": ["x"], "steps": steps},
                     {"definition": "d", "namespace": "a.>"}):
            resp = await http.post("/workflows", content=json.dumps(body).encode(),
                                   headers={"content-type": "application/json"})
            assert resp.status_code == 400, (body, resp.text)
        for path in ("/workflows?namespace=a.>", "/workflows?namespace=%00",
                     "/definitions/greet?namespace=a.*", "/definitions?namespace=a b"):
            resp = await http.get(path)
            assert resp.status_code == 400, (path, resp.text)
        for path in ("/workflows/a.%3E", "/workflows/*", "/workflows/a%20b/events"):
            resp = await http.get(path)
            assert resp.status_code in (400, 404), (path, resp.text)


async def test_garbage_to_every_body_route_over_http_is_a_4xx(
        index: IndexService, nc: Client, settings: NatsSettings) -> None:
    """Every route that takes a body (the table the app is built from, so the schedules',
    triggers' and whatever comes next are in it): a non-object, an empty body, a body
    over its limit, one nested past the depth limit, NaN and binary garbage are each a
    4xx problem, never a 5xx; and wildcard names in the paths are a 4xx too."""
    from gateway._bodies import BODY_RULES

    app = create_app(settings, auth=None, request_timeout=5.0, nc=nc)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://gw") as http:
        for (method, template), rule in BODY_RULES.items():
            path = (template.replace("{workflow_id}", "w1").replace("{name}", "n1")
                    .replace("{operation}", "stop"))
            for body, want in ((b"[]", 400), (b"7", 400), (b"null", 400), (b"", 400),
                               (b'{"a": NaN}', 400), (b"{" * 300, 400),
                               (b'{"a": ' * 70 + b"1" + b"}" * 70, 400),
                               (b"\x00\xff\xfe", 400),
                               (b'{"a": "' + b"x" * (rule.limit + 1) + b'"}', 413)):
                resp = await http.request(method, path, content=body,
                                          headers={"content-type": "application/json"})
                # A signal's payload may be any JSON ([], 7, null), and some bodies are
                # optional: those answer with the missing workflow's or schedule's 404.
                # What counts: a problem with a 4xx, the exact 413 over the limit.
                if want == 413:
                    assert resp.status_code == 413, (method, template, resp.text)
                assert 400 <= resp.status_code < 500, (method, template, body[:20],
                                                       resp.text)
                assert resp.headers["content-type"].startswith("application/problem+json")
        for path in ("/schedules/a.%3E", "/schedules/*", "/triggers/a.%3E", "/triggers/*",
                     "/triggers/*/stats"):
            resp = await http.get(path)
            assert 400 <= resp.status_code < 500, (path, resp.text)
        for path in ("/schedules/*/pause", "/triggers/a.>/resume", "/schedules/*/trigger"):
            resp = await http.post(path, json={})
            assert 400 <= resp.status_code < 500, (path, resp.text)
