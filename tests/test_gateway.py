"""The HTTP gateway, in-process through httpx.ASGITransport, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import running_demo_worker
from nats.aio.client import Client

from contracts.errors import NatsflowError, Unavailable
from contracts.models import MAX_CONFIG_BYTES
from gateway import create_app, serve
from gateway._problems import HTTP_BY_CODE, http_mapping
from natsflow.embedded import EmbeddedNats, free_port
from transport.connect import NatsSettings, connect

PROBLEM = "application/problem+json"


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "hello",
        "input": {"who": "world"},
        "steps": [
            {"id": "a", "task": "demo.echo", "input": {"text": "${input.who}"}},
            {"id": "b", "task": "demo.echo", "depends_on": ["a"],
             "input": {"text": "${steps.a.output.text}"}},
        ],
    }
    config.update(overrides)
    return config


@asynccontextmanager
async def _http(app: FastAPI, *, raise_app_exceptions: bool = True,
                ) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


@pytest.fixture
async def http(settings: NatsSettings, nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on this test's deployment, using the test's NATS connection."""
    async with _http(create_app(settings, auth=None, nc=nc, request_timeout=2.0)) as client:
        yield client


def _assert_problem(resp: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert body["title"]
    assert "instance" in body
    if code is not None:
        assert body["code"] == code
        assert body["type"] == f"urn:natsflow:problem:{code}"
    return body


# -- without an orchestrator -------------------------------------------------------------


async def test_no_orchestrator_answers_503_with_retry_after(http: httpx.AsyncClient) -> None:
    for resp in (await http.post("/workflows", json=_config()),
                 await http.get("/workflows/nope"),
                 await http.post("/workflows/nope/stop"),
                 await http.post("/batches", json={"workflow": {"name": "b", "steps": [
                     {"id": "a", "task": "demo.noop"}]}, "inputs": [{}]}),
                 await http.get("/batches/nope")):
        body = _assert_problem(resp, 503, "unavailable")
        assert int(resp.headers["Retry-After"]) > 0
        assert body["retryable"] is True
        assert "orchestrator" in body["detail"]


async def test_healthz_always_ok_and_readyz_needs_an_orchestrator(
        http: httpx.AsyncClient) -> None:
    resp = await http.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    resp = await http.get("/readyz")
    _assert_problem(resp, 503, "unavailable")
    assert "Retry-After" in resp.headers


async def test_silent_orchestrator_is_an_engine_timeout(settings: NatsSettings,
                                                        nc: Client) -> None:
    # Someone listens on the API subject but never answers.
    sub = await nc.subscribe(settings.subjects.api("workflow.get"))
    try:
        async with _http(create_app(settings, auth=None, nc=nc, request_timeout=0.3)) as http:
            resp = await http.get("/workflows/w1")
        _assert_problem(resp, 503, "engine-timeout")
        assert resp.headers["Retry-After"] == str(HTTP_BY_CODE["engine-timeout"].retry_after)
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize(
    ("steps", "step", "field"),
    [
        pytest.param([{"id": "a", "task": "t", "depends_on": ["b"]},
                      {"id": "b", "task": "t", "depends_on": ["a"]}],
                     "a", "steps.0.depends_on", id="cycle"),
        pytest.param([{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["x"]}],
                     "b", "steps.1.depends_on", id="unknown-dependency"),
        pytest.param([{"id": "a", "task": "t"}, {"id": "a", "task": "t"}],
                     "a", "steps.1.id", id="duplicate-id"),
        pytest.param([{"id": "a", "task": "t", "depends_on": ["a"]}],
                     "a", "steps.0.depends_on", id="self-dependency"),
        pytest.param([], None, "steps", id="no-steps"),
        pytest.param([{"id": "a", "task": "t", "input": {"x": "${steps.b.output}"}},
                      {"id": "b", "task": "t"}],
                     "a", "steps.0.input", id="reference-to-non-dependency"),
    ],
)
async def test_invalid_graph_is_400_naming_step_and_field(
        http: httpx.AsyncClient, steps: list[dict[str, Any]], step: str | None,
        field: str) -> None:
    resp = await http.post("/workflows", json=_config(steps=steps))
    body = _assert_problem(resp, 400, "invalid-graph")
    assert body.get("step") == step
    assert body["field"] == field
    assert [e["loc"] for e in body["errors"]] == [field]
    assert body["instance"] == "/workflows"


@pytest.mark.parametrize(
    ("patch", "locs"),
    [
        pytest.param({"name": 5}, ["name"], id="wrong-type"),
        pytest.param({"name": None, "steps": "x"}, ["name", "steps"], id="two-fields"),
        pytest.param({"steps": [{"id": "a", "task": "t", "timeout": "soon"}]},
                     ["steps.0.timeout"], id="nested-wrong-type"),
        pytest.param({"steps": [{"id": "a b", "task": "t"}]}, ["steps.0.id"], id="bad-id"),
        pytest.param({"surprise": 1}, ["surprise"], id="unknown-field"),
        pytest.param({"webhooks": [{"url": "ftp://hooks.example/x"}]}, ["webhooks.0.url"],
                     id="webhook-url"),
    ],
)
async def test_wrong_fields_are_400_naming_each_field(
        http: httpx.AsyncClient, patch: dict[str, Any], locs: list[str]) -> None:
    resp = await http.post("/workflows", json=_config(**patch))
    body = _assert_problem(resp, 400, "validation-failed")
    assert [e["loc"] for e in body["errors"]] == locs
    assert all(e["message"] and e["type"] for e in body["errors"])
    assert body["field"] == locs[0]
    assert body["detail"].startswith(f"{locs[0]}: ")


async def test_body_that_is_not_an_object_is_400(http: httpx.AsyncClient) -> None:
    body = _assert_problem(await http.post("/workflows", json=[1, 2]), 400,
                           "validation-failed")
    assert body["errors"][0]["loc"] == "(body)"


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe{", b"[" * 100_000])
async def test_malformed_json_is_400(http: httpx.AsyncClient, content: bytes) -> None:
    resp = await http.post("/workflows", content=content,
                           headers={"content-type": "application/json"})
    _assert_problem(resp, 400, "invalid-request")


async def test_too_large_is_413(http: httpx.AsyncClient) -> None:
    big = _config(input={"blob": "x" * MAX_CONFIG_BYTES})
    body = _assert_problem(await http.post("/workflows", json=big), 413, "payload-too-large")
    assert body["details"] == {"limit": MAX_CONFIG_BYTES}


async def test_too_large_without_content_length_is_413(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "x", "input": {"blob": "'
        for _ in range(MAX_CONFIG_BYTES // 1024 + 1):
            yield b"x" * 1024
        yield b'"}}'

    resp = await http.post("/workflows", content=chunks())
    assert "content-length" not in resp.request.headers
    _assert_problem(resp, 413, "payload-too-large")


async def test_batches_accept_larger_bodies_up_to_their_own_limit(
        http: httpx.AsyncClient) -> None:
    template = {"name": "b", "steps": [{"id": "a", "task": "demo.noop"}]}
    # Larger than a workflow may be, within the batch limit: it reaches NATS (no
    # orchestrator here, hence 503), not the size check.
    inputs = [{"n": "x" * 1000} for _ in range(MAX_CONFIG_BYTES // 1000 + 10)]
    resp = await http.post("/batches", json={"workflow": template, "inputs": inputs})
    _assert_problem(resp, 503, "unavailable")
    inputs = [{"n": "x" * 1000} for _ in range(5000)]
    resp = await http.post("/batches", json={"workflow": template, "inputs": inputs})
    _assert_problem(resp, 413, "payload-too-large")


async def test_batch_fields_are_checked_by_the_gateway(http: httpx.AsyncClient) -> None:
    template = {"name": "b", "steps": [{"id": "a", "task": "t"}]}
    resp = await http.post("/batches", json={"workflow": template, "inputs": []})
    body = _assert_problem(resp, 400, "validation-failed")
    assert [e["loc"] for e in body["errors"]] == ["inputs"]
    resp = await http.post("/batches", json={"workflow": template, "inputs": [{}],
                                             "max_concurrency": 0})
    body = _assert_problem(resp, 400, "validation-failed")
    assert body["field"] == "max_concurrency"


async def test_batch_over_the_nats_max_payload_is_413(tmp_path: Path, prefix: str) -> None:
    with EmbeddedNats(tmp_path, max_payload=64 * 1024) as small:
        settings = NatsSettings(servers=[small.url], prefix=prefix)
        nc = await connect(settings, name="test")
        try:
            async with _http(create_app(settings, auth=None, nc=nc)) as http:
                template = {"name": "b", "steps": [{"id": "a", "task": "demo.noop"}]}
                inputs = [{"n": "x" * 1000} for _ in range(100)]
                resp = await http.post("/batches", json={"workflow": template,
                                                         "inputs": inputs})
        finally:
            await nc.close()
    body = _assert_problem(resp, 413, "payload-too-large")
    assert "max_payload" in body["detail"]


async def test_bad_path_and_header_values_are_400(http: httpx.AsyncClient) -> None:
    body = _assert_problem(await http.get("/workflows/" + "x" * 129), 400,
                           "validation-failed")
    assert body["errors"][0]["loc"] == "path.workflow_id"
    resp = await http.post("/workflows", json=_config(),
                           headers={"Idempotency-Key": "k" * 257})
    body = _assert_problem(resp, 400, "validation-failed")
    assert body["errors"][0]["loc"] == "header.idempotency-key"


async def test_unknown_route_and_method_are_problems(http: httpx.AsyncClient) -> None:
    body = _assert_problem(await http.get("/nowhere"), 404, None)
    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"
    body = _assert_problem(await http.delete("/workflows"), 405, None)
    assert body["title"] == "Method Not Allowed"


async def test_unexpected_exception_is_a_500_problem_without_traceback(
        settings: NatsSettings, nc: Client) -> None:
    app = create_app(settings, auth=None, nc=nc)

    # A plain Starlette route: every API route must have a scope in ROUTE_SCOPES.
    async def boom(request: object) -> None:
        raise RuntimeError("secret internals")

    app.add_route("/boom", boom)

    async with _http(app, raise_app_exceptions=False) as http:
        resp = await http.get("/boom")
    body = _assert_problem(resp, 500, None)
    assert "secret" not in resp.text
    assert "Traceback" not in resp.text
    assert body["detail"] == "an unexpected error occurred"


async def test_openapi_documents_paths_bodies_and_problems(http: httpx.AsyncClient) -> None:
    resp = await http.get("/openapi.json")
    assert resp.status_code == 200
    spec = resp.json()
    assert {"/workflows", "/workflows/{workflow_id}", "/workflows/{workflow_id}/start",
            "/workflows/{workflow_id}/stop", "/batches", "/batches/{batch_id}",
            "/batches/{batch_id}/stop", "/healthz", "/readyz"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    for name in ("WorkflowConfig", "TaskStep", "SleepStep", "WaitStep", "RetryPolicy",
                 "BatchConfig", "WorkflowTemplate", "WorkflowStatus", "BatchStatus", "Problem"):
        assert name in schemas, name
    create = spec["paths"]["/workflows"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"oneOf": [
        {"$ref": "#/components/schemas/WorkflowConfig"},
        {"$ref": "#/components/schemas/RunDefinition"}]}
    assert "RunDefinition" in schemas and "/definitions/{name}" in spec["paths"]
    assert {"200", "202", "400", "409", "413", "503"} <= set(create["responses"])
    assert "422" not in create["responses"]
    assert PROBLEM in create["responses"]["400"]["content"]
    assert any(p["name"] == "idempotency-key" for p in create["parameters"])
    batch = spec["paths"]["/batches"]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchConfig"}
    # Every $ref resolves.
    refs = {m for m in _refs(spec)}
    assert refs <= {f"#/components/schemas/{n}" for n in schemas}
    assert (await http.get("/docs")).status_code == 200


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_error_code_has_one_http_status() -> None:
    def subclasses(cls: type[NatsflowError]) -> list[type[NatsflowError]]:
        return [cls, *(c for s in cls.__subclasses__() for c in subclasses(s))]

    expected = {"validation-failed": 400, "invalid-graph": 400, "invalid-request": 400,
                "payload-too-large": 413, "workflow-not-found": 404, "batch-not-found": 404,
                "not-found": 404, "id-conflict": 409, "already-finished": 409,
                "conflict": 409, "unavailable": 503, "engine-timeout": 503,
                "too-many-signals": 409, "definition-not-found": 404,
                "schedule-not-found": 404,
                "trigger-not-found": 404,
                "expression-error": 400, "schema-mismatch": 400,
                "invalid-state": 409, "config-mismatch": 503, "egress-refused": 403,
                "nats-auth-failed": 503, "namespace-forbidden": 403,
                "unauthenticated": 401, "forbidden": 403, "record-unreadable": 500}
    for cls in subclasses(NatsflowError):
        if cls.__module__ == "contracts.errors" and cls is not NatsflowError:
            assert http_mapping(cls("x")).status == expected[cls.code], cls

    class StillUnavailable(Unavailable):
        code = "some-future-code"

    assert http_mapping(StillUnavailable("x")).status == 503
    unknown = NatsflowError("x")
    unknown.code = "from-the-future"  # type: ignore[misc]
    assert http_mapping(unknown).status == 500


# -- lifespan and serve ------------------------------------------------------------------


async def _eventually(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


async def test_starts_without_nats_and_connects_when_it_appears(
        tmp_path: Path, prefix: str) -> None:
    port = free_port()
    settings = NatsSettings(servers=[f"nats://127.0.0.1:{port}"], prefix=prefix)
    app = create_app(settings, auth=None)
    async with app.router.lifespan_context(app), _http(app) as http:
        assert (await http.get("/healthz")).status_code == 200
        body = _assert_problem(await http.get("/readyz"), 503, "unavailable")
        assert "not connected" in body["detail"]
        _assert_problem(await http.post("/workflows", json=_config()), 503, "unavailable")
        # Client errors are still client errors while NATS is away.
        _assert_problem(await http.post("/workflows", json=_config(steps=[])), 400,
                        "invalid-graph")

        server = EmbeddedNats(tmp_path, port=port)
        server.start()
        try:
            async def connected() -> bool:
                resp = await http.get("/readyz")
                return "no orchestrator" in resp.json()["detail"]

            await _eventually(connected)
            assert app.state.link.connected
        finally:
            server.stop()


async def test_serve_runs_uvicorn_until_cancelled(settings: NatsSettings) -> None:
    port = free_port()
    task = asyncio.create_task(serve(settings, port=port, auth=None, log_level="warning"))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await _eventually(up)

            async def ready_problem() -> bool:
                resp = await http.get("/readyz")
                return resp.status_code == 503 and "no orchestrator" in resp.json()["detail"]

            await _eventually(ready_problem)
            resp = await http.post("/workflows", content=json.dumps(_config(steps=[])))
            _assert_problem(resp, 400, "invalid-graph")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- with an orchestrator and the demo worker --------------------------------------------


@pytest.fixture
async def live(engine: object, settings: NatsSettings,
               nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with an orchestrator, the index and the demo worker running."""
    from orchestrator.index import IndexService

    index = IndexService(settings, nc=nc)
    await index.start()
    try:
        async with running_demo_worker(settings), _http(create_app(settings, auth=None,
                                                              nc=nc)) as client:
            yield client
    finally:
        await index.stop()


async def _poll(http: httpx.AsyncClient, location: str, *states: str,
                timeout: float = 20.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await http.get(location)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["state"] in states:
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_create_then_poll_until_completed(live: httpx.AsyncClient) -> None:
    resp = await live.post("/workflows", json=_config())
    assert resp.status_code == 202, resp.text
    assert resp.headers["content-type"] == "application/json"
    created = resp.json()
    assert resp.headers["Location"] == f"/workflows/{created['id']}"
    assert created["state"] in {"created", "running"}
    done = await _poll(live, resp.headers["Location"], "completed", "failed")
    assert done["state"] == "completed"
    assert done["output"] == {"b": {"text": "world"}}
    assert [s["state"] for s in done["steps"]] == ["succeeded", "succeeded"]


async def test_resubmit_with_same_id_is_200_and_other_config_is_409(
        live: httpx.AsyncClient) -> None:
    first = await live.post("/workflows", json=_config(id="order_1"))
    assert first.status_code == 202, first.text
    again = await live.post("/workflows", json=_config(id="order_1"))
    assert again.status_code == 200, again.text
    assert again.json()["id"] == "order_1"
    assert again.headers["Location"] == "/workflows/order_1"
    other = await live.post("/workflows", json=_config(id="order_1", input={"who": "else"}))
    _assert_problem(other, 409, "id-conflict")


async def test_idempotency_key_makes_retries_create_once(live: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "req-42"}
    first = await live.post("/workflows", json=_config(), headers=headers)
    assert first.status_code == 202, first.text
    again = await live.post("/workflows", json=_config(), headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    fresh = await live.post("/workflows", json=_config())
    assert fresh.status_code == 202
    assert fresh.json()["id"] != first.json()["id"]


async def test_unknown_ids_are_404(live: httpx.AsyncClient) -> None:
    for resp in (await live.get("/workflows/nope"),
                 await live.post("/workflows/nope/start"),
                 await live.post("/workflows/nope/stop")):
        body = _assert_problem(resp, 404, "workflow-not-found")
        assert body["instance"].startswith("/workflows/nope")
    _assert_problem(await live.get("/batches/nope"), 404, "batch-not-found")
    _assert_problem(await live.post("/batches/nope/stop"), 404, "batch-not-found")


async def test_readyz_is_200_with_an_orchestrator(live: httpx.AsyncClient) -> None:
    resp = await live.get("/readyz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ready"
    assert all(body[dep]["ok"] for dep in ("nats", "orchestrator", "index"))


async def test_start_a_created_workflow(live: httpx.AsyncClient) -> None:
    resp = await live.post("/workflows", json=_config(id="later", start=False))
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "created"
    started = await live.post("/workflows/later/start")
    assert started.status_code == 200, started.text
    assert started.json()["state"] in {"running", "completed"}
    again = await live.post("/workflows/later/start")
    assert again.status_code == 200, again.text
    await _poll(live, "/workflows/later", "completed")


async def test_stop_running_workflow_then_stop_again_is_409(live: httpx.AsyncClient) -> None:
    config = _config(id="sleepy", steps=[
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 60, "steps": 600}}])
    assert (await live.post("/workflows", json=config)).status_code == 202
    await _poll_step(live, "/workflows/sleepy", "nap", "running")
    resp = await live.post("/workflows/sleepy/stop")
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] in {"stopping", "stopped"}
    stopped = await _poll(live, "/workflows/sleepy", "stopped", "completed", "failed")
    assert stopped["state"] == "stopped"
    _assert_problem(await live.post("/workflows/sleepy/stop"), 409, "already-finished")


async def _poll_step(http: httpx.AsyncClient, location: str, step: str, state: str,
                     timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await http.get(location)).json()
        if any(s["id"] == step and s["state"] == state for s in body["steps"]):
            return
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)


async def test_failed_step_fails_the_workflow(live: httpx.AsyncClient) -> None:
    config = _config(steps=[{"id": "boom", "task": "demo.fail"}])
    resp = await live.post("/workflows", json=config)
    assert resp.status_code == 202
    done = await _poll(live, resp.headers["Location"], "completed", "failed")
    assert done["state"] == "failed"
    assert done["steps"][0]["error"]["code"] == "demo-failure"


async def test_batch_runs_every_input_with_bounded_concurrency(
        live: httpx.AsyncClient) -> None:
    template = {"name": "greet", "steps": [
        {"id": "hi", "task": "demo.echo", "input": {"n": "${input.n}"}}]}
    body = {"id": "batch_1", "workflow": template, "inputs": [{"n": i} for i in range(6)],
            "max_concurrency": 2}
    resp = await live.post("/batches", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.headers["Location"] == "/batches/batch_1"
    status = resp.json()
    assert status["max_concurrency"] == 2
    assert len(status["members"]) == 6
    assert status["counts"].get("running", 0) <= 2
    done = await _poll(live, "/batches/batch_1", "completed", "failed", "stopped")
    assert done["state"] == "completed"
    assert done["counts"].get("completed") == 6
    member = done["members"][3]["workflow_id"]
    wf = (await live.get(f"/workflows/{member}")).json()
    assert wf["state"] == "completed"
    assert wf["steps"][0]["output"] == {"n": 3}
    _assert_problem(await live.post("/batches/batch_1/stop"), 409, "already-finished")


async def test_batch_template_graph_is_400_with_batch_locations(
        live: httpx.AsyncClient) -> None:
    template = {"name": "b", "steps": [{"id": "a", "task": "t"},
                                       {"id": "b", "task": "t", "depends_on": ["zz"]}]}
    resp = await live.post("/batches", json={"workflow": template, "inputs": [{}]})
    body = _assert_problem(resp, 400, "invalid-graph")
    assert (body["step"], body["field"]) == ("b", "workflow.steps.1.depends_on")
    template = {"name": "b", "steps": [{"id": "a", "task": 7}]}
    resp = await live.post("/batches", json={"workflow": template, "inputs": [{}]})
    body = _assert_problem(resp, 400, "validation-failed")
    assert [e["loc"] for e in body["errors"]] == ["workflow.steps.0.task"]


async def test_stop_a_running_batch(live: httpx.AsyncClient) -> None:
    template = {"name": "naps", "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 60, "steps": 600}}]}
    body = {"id": "batch_2", "workflow": template, "inputs": [{}] * 4, "max_concurrency": 1}
    assert (await live.post("/batches", json=body)).status_code == 202
    resp = await live.post("/batches/batch_2/stop")
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] in {"stopping", "stopped"}
    done = await _poll(live, "/batches/batch_2", "stopped", "completed", "failed")
    assert done["state"] == "stopped"


# -- the examples of docs/http-api.md ----------------------------------------------------

_DOC = Path(__file__).resolve().parent.parent / "docs" / "http-api.md"
_EXAMPLE = re.compile(r"```bash\n(curl .*?)```\s*```http\nHTTP/1\.1 (\d{3}) ", re.DOTALL)


def _doc_examples() -> list[tuple[str, str, dict[str, str], str | None, int]]:
    """(method, path, headers, body, expected status) of each curl example, in order."""
    examples = []
    for command, status in _EXAMPLE.findall(_DOC.read_text()):
        args = shlex.split(command.replace("\\\n", " "))
        method, headers, body, url = "GET", {}, None, ""
        it = iter(args[1:])
        for arg in it:
            if arg == "-X":
                method = next(it)
            elif arg == "-H":
                name, _, value = next(it).partition(":")
                headers[name.strip()] = value.strip()
            elif arg == "-d":
                body = next(it)
            elif arg.startswith("http"):
                url = arg
        examples.append((method, url.removeprefix("http://localhost:8000"), headers, body,
                         int(status)))
    return examples


def test_docs_have_curl_examples_with_statuses() -> None:
    examples = _doc_examples()
    assert len(examples) >= 15
    assert {path for _, path, _, _, _ in examples} >= {
        "/workflows", "/workflows/order_42", "/workflows/draft_1/start",
        "/workflows/nap_1/stop", "/batches", "/batches/nightly", "/batches/naps/stop",
        "/readyz"}


async def test_docs_examples_answer_as_documented(live: httpx.AsyncClient) -> None:
    for method, path, headers, body, status in _doc_examples():
        resp = await live.request(method, path, headers=headers,
                                  content=body.encode() if body is not None else None)
        assert resp.status_code == status, (method, path, resp.text)
        if status >= 400:
            assert resp.headers["content-type"] == PROBLEM
