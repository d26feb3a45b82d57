"""What a hostile or careless client sends: never a 500, never "everything" (issue 14).

The gateway in-process through httpx.ASGITransport, against a real nats-server with a
real orchestrator, index service and demo worker; the NATS API and submit subject with
plain nats-py requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import read_dead_letters, running_demo_worker
from nats.aio.client import Client
from typer.testing import CliRunner

from contracts.errors import ErrorInfo, InvalidRequest, NatsflowError, ValidationFailed
from contracts.headers import ERROR_CODE_HEADER
from contracts.messages import BulkResult
from contracts.untrusted import MAX_JSON_DEPTH
from contracts.webhooks import sign, verify_signature
from gateway import create_app
from gateway._problems import http_mapping
from natsflow.cli import app as cli_app
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings

PROBLEM = "application/problem+json"
ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret"


def _http(app: FastAPI) -> httpx.AsyncClient:
    # A 500 comes back as a response (not an exception), so the assertion shows it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


@pytest.fixture
async def http(settings: NatsSettings, nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway alone (no orchestrator): for what it must refuse by itself."""
    async with _http(create_app(settings, auth=None, nc=nc, request_timeout=2.0)) as client:
        yield client


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


def _problem(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def _bad_request(resp: httpx.Response, field: str | None = None) -> dict[str, Any]:
    """A 400 whose `errors` names each field (and, given, ``field`` first)."""
    body = _problem(resp, 400)
    assert body["errors"] and all(e["loc"] and e["message"] for e in body["errors"]), body
    if field is not None:
        assert body["field"] == field and body["errors"][0]["loc"] == field, body
    return body


def _config(wid: str, **overrides: Any) -> dict[str, Any]:
    return {"name": "hard", "id": wid, "input": {"who": "world"},
            "steps": [{"id": "a", "task": "demo.echo", "input": {"text": "${input.who}"}}],
            **overrides}


def _sleeper(wid: str) -> dict[str, Any]:
    return {"name": "sleeper", "id": wid, "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 60, "steps": 60}}]}


async def _state(http: httpx.AsyncClient, wid: str, *states: str,
                 timeout: float = 20.0) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await http.get(f"/workflows/{wid}")
        assert resp.status_code == 200, resp.text
        state: str = resp.json()["state"]
        if not states or state in states:
            return state
        assert asyncio.get_running_loop().time() < deadline, (wid, state, states)
        await asyncio.sleep(0.05)


def _nested(levels: int, leaf: Any = 1) -> Any:
    """``levels`` objects one inside the other: ``_nested(2)`` is ``{"a": {"a": 1}}``."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


# -- items 4 and 5: a body that is not an object; a bulk with no filter -------------------


async def test_a_body_that_is_not_an_object_is_a_400_and_touches_nothing(
        live: httpx.AsyncClient) -> None:
    assert (await live.post("/workflows", json=_sleeper("busy"))).status_code == 202
    failing = {"name": "f", "id": "broken", "steps": [{"id": "x", "task": "demo.fail"}]}
    assert (await live.post("/workflows", json=failing)).status_code == 202
    await _state(live, "busy", "running")
    await _state(live, "broken", "failed")
    for path in ("/workflows/broken/retry", "/workflows/broken/rerun",
                 "/workflows/bulk/stop"):
        for body in ('"stop"', "5", "[]", "null", "0", "false", "[{}]", '"{}"'):
            resp = await live.post(path, content=body,
                                   headers={"content-type": "application/json"})
            problem = _bad_request(resp, "(body)")
            assert problem["code"] == "validation-failed"
            assert "JSON object" in problem["detail"], (path, body, problem)
    # Nothing was stopped, retried or rerun.
    assert await _state(live, "busy") == "running"
    assert await _state(live, "broken") == "failed"
    listed = (await live.get("/workflows")).json()["items"]
    assert sorted(w["id"] for w in listed) == ["broken", "busy"]


async def test_an_empty_body_is_still_no_options(live: httpx.AsyncClient) -> None:
    failing = {"name": "f", "id": "broken", "steps": [{"id": "x", "task": "demo.fail"}]}
    assert (await live.post("/workflows", json=failing)).status_code == 202
    await _state(live, "broken", "failed")
    resp = await live.post("/workflows/broken/rerun", content=b"")
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] != "broken"


async def test_a_bulk_without_a_filter_needs_all_true(live: httpx.AsyncClient) -> None:
    for wid in ("keep_1", "keep_2"):
        assert (await live.post("/workflows", json=_sleeper(wid))).status_code == 202
        await _state(live, wid, "running")
    for body in (b"", b"{}", b'{"filter": {}}', b'{"dry_run": false}',
                 b'{"filter": {"state": [], "labels": {}, "limit": 5}}'):
        resp = await live.post("/workflows/bulk/stop", content=body,
                               headers={"content-type": "application/json"})
        problem = _bad_request(resp, "all")
        assert '"all": true' in problem["detail"]
    both = await live.post("/workflows/bulk/stop",
                           json={"all": True, "filter": {"name": "sleeper"}})
    assert "one or the other" in _bad_request(both, "all")["detail"]
    assert [await _state(live, w) for w in ("keep_1", "keep_2")] == ["running", "running"]

    # Both ways of meaning it work.
    dry = await live.post("/workflows/bulk/stop", json={"all": True, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert sorted(dry.json()["ids"]) == ["keep_1", "keep_2"]
    one = await live.post("/workflows/bulk/stop", json={"filter": {"name": "sleeper"},
                                                        "dry_run": True})
    assert one.status_code == 200 and one.json()["matched"] == 2
    stop = await live.post("/workflows/bulk/stop", json={"all": True})
    assert stop.status_code == 200 and stop.json()["done"] == 2, stop.text
    for wid in ("keep_1", "keep_2"):
        await _state(live, wid, "stopped")


async def test_a_bulk_over_nats_without_a_filter_needs_all(
        live: httpx.AsyncClient, nc: Client, settings: NatsSettings,
        client: NatsflowClient) -> None:
    assert (await live.post("/workflows", json=_sleeper("keep"))).status_code == 202
    await _state(live, "keep", "running")
    msg = await nc.request(settings.subjects.api("workflow.bulk"), b'{"operation": "stop"}',
                           timeout=10)
    assert msg.headers and msg.headers[ERROR_CODE_HEADER] == "validation-failed"
    assert ErrorInfo.model_validate_json(msg.data).field == "all"
    with pytest.raises(ValidationFailed, match='"all": true'):
        await client.bulk("stop")
    assert await _state(live, "keep") == "running"
    result = await client.bulk("stop", all_workflows=True, dry_run=True)
    assert result.ids == ["keep"]


def test_the_cli_bulk_without_a_filter_needs_all(settings: NatsSettings) -> None:
    runner = CliRunner(env={"NATS_URL": settings.servers[0],
                            "NATSFLOW_PREFIX": settings.prefix})
    result = runner.invoke(cli_app, ["bulk", "stop"])
    assert result.exit_code == 2, result.output
    assert "--all" in result.stderr and "validation-failed" in result.stderr


# -- item 6: deep nesting ------------------------------------------------------------------


def _deep_requests(levels: int) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every body that carries a client's value, nested so that
    the body is ``levels`` deep."""
    value = _nested(levels - 1)
    return [
        ("POST", "/workflows", _config("deep_wf", input=value)),
        ("POST", "/workflows/target/signals/go", _nested(levels)),
        ("POST", "/workflows/target/rerun", {"input": value}),
        ("POST", "/workflows/target/retry", {"inputs": {"x": _nested(levels - 2)}}),
        ("POST", "/batches", {"workflow": {"name": "b", "steps": [
            {"id": "a", "task": "demo.noop"}]}, "inputs": [_nested(levels - 2)]}),
        ("PUT", "/definitions/deep", {"steps": [
            {"id": "a", "task": "demo.echo", "input": _nested(levels - 3)}]}),
    ]


@pytest.mark.parametrize("levels", [300, MAX_JSON_DEPTH + 1])
async def test_deep_nesting_is_a_400_naming_the_limit(live: httpx.AsyncClient,
                                                      levels: int) -> None:
    wait = {"name": "w", "id": "target", "steps": [
        {"id": "w", "kind": "wait", "signal": "go"}]}
    assert (await live.post("/workflows", json=wait)).status_code == 202
    for method, path, body in _deep_requests(levels):
        resp = await live.request(method, path, json=body)
        problem = _bad_request(resp)
        assert problem["code"] == "validation-failed", (path, problem)
        assert problem["details"] == {"max_depth": MAX_JSON_DEPTH}, (path, problem)
        assert f"limit of {MAX_JSON_DEPTH} levels" in problem["detail"], (path, problem)
    # The connection is still good, and so is the workflow.
    assert await _state(live, "target") == "running"


async def test_nesting_at_the_limit_is_taken_end_to_end(live: httpx.AsyncClient) -> None:
    body = _config("at_limit", input={"who": "ada", "deep": _nested(MAX_JSON_DEPTH - 2)})
    resp = await live.post("/workflows", json=body)
    assert resp.status_code == 202, resp.text
    assert await _state(live, "at_limit", "completed", "failed") == "completed"
    got = (await live.get("/workflows/at_limit")).json()
    assert got["input"]["deep"] == _nested(MAX_JSON_DEPTH - 2)
    wait = {"name": "w", "id": "sig", "steps": [{"id": "w", "kind": "wait", "signal": "go"}]}
    assert (await live.post("/workflows", json=wait)).status_code == 202
    resp = await live.post("/workflows/sig/signals/go", json=_nested(MAX_JSON_DEPTH))
    assert resp.status_code == 202, resp.text
    assert await _state(live, "sig", "completed", "failed") == "completed"


async def test_deep_nesting_over_nats_is_refused_naming_the_limit(
        engine: object, nc: Client, settings: NatsSettings) -> None:
    # Under what the API's own JSON parser gives up at (about 200), over the limit.
    request = {"config": _config("deep_nats", input=_nested(100))}
    msg = await nc.request(settings.subjects.api("workflow.create"),
                           json.dumps(request).encode(), timeout=10)
    assert msg.headers and msg.headers[ERROR_CODE_HEADER] == "validation-failed"
    info = ErrorInfo.model_validate_json(msg.data)
    assert info.details == {"max_depth": MAX_JSON_DEPTH}
    assert info.field is not None and info.field.startswith("config.input.a")
    signal = {"id": "nobody", "name": "go", "payload": _nested(300)}
    msg = await nc.request(settings.subjects.api("workflow.signal"),
                           json.dumps(signal).encode(), timeout=10)
    assert msg.headers and msg.headers[ERROR_CODE_HEADER] == "validation-failed"
    assert ErrorInfo.model_validate_json(msg.data).details == {"max_depth": MAX_JSON_DEPTH}


# -- item 8: NaN and Infinity ------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers_are_a_400_naming_the_field(http: httpx.AsyncClient,
                                                             token: str) -> None:
    bodies = [
        ("/workflows", '{"name": "n", "input": {"x": [1, %s]}, '
                       '"steps": [{"id": "a", "task": "t"}]}', "input.x.1"),
        ("/workflows/w/signals/go", '{"v": %s}', "v"),
        ("/workflows/w/rerun", '{"input": {"x": %s}}', "input.x"),
        ("/batches", '{"workflow": {"name": "b", "steps": [{"id": "a", "task": "t"}]}, '
                     '"inputs": [{"x": %s}]}', "inputs.0.x"),
    ]
    for path, template, field in bodies:
        resp = await http.post(path, content=template % token,
                               headers={"content-type": "application/json"})
        problem = _bad_request(resp, field)
        assert "not a JSON number" in problem["detail"]
    resp = await http.put("/definitions/d", content="steps: [{id: a, task: t, "
                          "input: {x: .nan}}]", headers={"content-type": "application/yaml"})
    _bad_request(resp, "steps.0.input.x")


async def test_non_finite_numbers_over_nats_are_refused(
        live: httpx.AsyncClient, engine: object, nc: Client, settings: NatsSettings) -> None:
    config = ('{"name": "n", "id": "nan_api", "input": {"x": NaN}, '
              '"steps": [{"id": "a", "task": "demo.noop"}]}')
    msg = await nc.request(settings.subjects.api("workflow.create"),
                           b'{"config": %s}' % config.encode(), timeout=10)
    assert msg.headers and msg.headers[ERROR_CODE_HEADER] == "validation-failed"
    assert ErrorInfo.model_validate_json(msg.data).field == "config.input.x"
    msg = await nc.request(settings.subjects.api("workflow.signal"),
                           b'{"id": "w", "name": "go", "payload": [Infinity]}', timeout=10)
    assert ErrorInfo.model_validate_json(msg.data).field == "payload.0"
    # The fire-and-forget submit: a dead letter saying why, and no workflow.
    await nc.jetstream().publish(settings.subjects.submit,
                                 config.replace("nan_api", "nan_submit").encode())
    ((_, letter),) = await read_dead_letters(nc, settings.subjects, count=1)
    assert letter.reason.code == "validation-failed" and letter.reason.field == "input.x"
    _problem(await live.get("/workflows/nan_submit"), 404, "workflow-not-found")
    _problem(await live.get("/workflows/nan_api"), 404, "workflow-not-found")


# -- item 7: YAML aliases ------------------------------------------------------------------

_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


async def test_yaml_aliases_are_refused_and_memory_stays_flat(
        live: httpx.AsyncClient) -> None:
    small = ("steps:\n  - &step {id: a, task: demo.echo, input: {text: hi}}\n"
             "input: {copy: *step}\n")
    for doc in (small, _LAUGHS):
        tracemalloc.start()
        try:
            resp = await live.put("/definitions/laughs", content=doc,
                                  headers={"content-type": "application/yaml"})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        problem = _problem(resp, 400, "invalid-request")
        assert "aliases" in problem["detail"], problem
        assert peak < 16 * 1024 * 1024, peak
    _problem(await live.get("/definitions/laughs"), 404, "definition-not-found")
    # An anchor alone expands nothing: still fine.
    plain = "steps:\n  - &s {id: a, task: demo.echo, input: {text: hi}}\n"
    resp = await live.put("/definitions/anchored", content=plain,
                          headers={"content-type": "application/yaml"})
    assert resp.status_code == 201, resp.text


def test_the_cli_refuses_yaml_aliases(tmp_path: Path) -> None:
    from natsflow._cli_workflows import load_mapping

    path = tmp_path / "laughs.yaml"
    path.write_text("name: x\n" + _LAUGHS + "steps: [{id: a, task: t}]\n")
    with pytest.raises(InvalidRequest, match=r"laughs\.yaml is not valid YAML: aliases"):
        load_mapping(path)
    result = CliRunner().invoke(cli_app, ["submit", str(path)])
    assert result.exit_code == 2 and "aliases" in result.stderr


# -- item 9: a webhook signature that is not ASCII ------------------------------------------


def _doc_blocks(lang: str) -> list[str]:
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", doc, flags=re.S | re.M)


def test_a_non_ascii_signature_does_not_verify() -> None:
    body, ts = b'{"seq":1}', str(int(time.time()))
    good = sign(SECRET, ts, body)
    (_, plain) = _doc_blocks("python")
    namespace: dict[str, Any] = {}
    exec(compile(plain, "webhooks.md", "exec"), namespace)
    for check in (verify_signature, namespace["verify"]):
        assert check(SECRET, ts, body, good)
        # A valid-looking signature beside the non-ASCII one, but a wrong one: its last hex
        # digit changed (to another digit whatever it was, so the check cannot pass by luck).
        wrong = good[:-1] + ("1" if good[-1] == "0" else "0")
        for header in ("v1=é", "v1=" + "é" * 64, f"v1=ü,{wrong}", "v1=\u2603"):
            assert check(SECRET, ts, body, header) is False, (check, header)
    # Not from an HTTP header, but from a Python caller it may be.
    assert verify_signature(SECRET, ts, body, "v1=\udcff") is False
    for check in (verify_signature, namespace["verify"]):
        # A digit, but not one int() reads.
        assert check(SECRET, "\u00b2", body, sign(SECRET, "\u00b2", body)) is False


async def test_the_documented_receiver_answers_401_to_a_non_ascii_signature(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    (recipe, _) = _doc_blocks("python")
    namespace: dict[str, Any] = {}
    exec(compile(recipe, "webhooks.md", "exec"), namespace)
    ts = str(int(time.time()))
    async with _http(namespace["app"]) as http:
        for signature in ("v1=é".encode(), "v1=ü".encode("latin-1"), b"v1=\xff\xfe"):
            resp = await http.post("/hooks/natsflow", content=b"{}", headers=[
                (b"Natsflow-Event-Id", b"x:1"), (b"Natsflow-Timestamp", ts.encode()),
                (b"Natsflow-Signature", signature)])
            assert resp.status_code == 401, (signature, resp.text)


# -- item 10: every invalid request is a 400 -------------------------------------------------


async def test_every_invalid_request_is_a_400_naming_each_field(
        http: httpx.AsyncClient) -> None:
    graph = await http.post("/workflows", json=_config("g", steps=[
        {"id": "a", "task": "t", "depends_on": ["ghost"]}]))
    assert _bad_request(graph, "steps.0.depends_on")["code"] == "invalid-graph"
    fields = await http.post("/workflows", json=_config("f", name=5, surprise=1))
    body = _bad_request(fields, "name")
    assert [e["loc"] for e in body["errors"]] == ["name", "surprise"]
    expression = await http.post("/workflows", json=_config("e", steps=[
        {"id": "a", "task": "t", "when": "1 +"}]))
    assert _bad_request(expression)["code"] == "validation-failed"
    # FastAPI's own request validation (path, query, header) answers the same way.
    path = await http.get("/workflows/" + "x" * 129)
    assert _bad_request(path, "path.workflow_id")["code"] == "validation-failed"
    query = await http.get("/workflows", params={"limit": 0})
    assert _bad_request(query, "query.limit")["code"] == "validation-failed"
    header = await http.post("/workflows", json=_config("h"),
                             headers={"Idempotency-Key": "k" * 257})
    _bad_request(header, "header.idempotency-key")
    op = await http.post("/workflows/bulk/explode", json={"all": True})
    _bad_request(op, "path.operation")


def test_every_invalid_request_code_maps_to_400() -> None:
    def subclasses(cls: type[NatsflowError]) -> list[type[NatsflowError]]:
        return [cls, *(c for s in cls.__subclasses__() for c in subclasses(s))]

    for cls in subclasses(InvalidRequest):
        if cls.code != "payload-too-large":
            assert http_mapping(cls("x")).status == 400, cls


async def test_openapi_declares_400_problems_and_no_422(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    text = json.dumps(spec)
    assert '"422"' not in text and "HTTPValidationError" not in text
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            takes_input = operation.get("parameters") or operation.get("requestBody")
            if takes_input:
                bad = operation["responses"].get("400")
                assert bad, (method, path)
                assert bad["content"][PROBLEM]["schema"] == {
                    "$ref": "#/components/schemas/Problem"}, (method, path)


def test_the_http_doc_declares_400_and_no_422() -> None:
    doc = (ROOT / "docs" / "http-api.md").read_text()
    assert not re.search(r"\b422\b", doc)
    table = [line.split("|") for line in doc.splitlines()
             if re.match(r"\| (POST|GET|PUT) ", line)]
    assert len(table) > 20
    for _, method, path, _, errors, _ in table:
        if path.strip() not in ("`/healthz`", "`/readyz`", "`/definitions`"):
            assert "400" in errors.split(), (method, path, errors)
    (rerun,) = [row for row in table if row[2].strip() == "`/workflows/{id}/rerun`"]
    assert "409" in rerun[4].split()


# -- item 17: the client's timeout is per call ----------------------------------------------


async def test_a_bulk_does_not_change_the_shared_client_timeout(
        nc: Client, settings: NatsSettings) -> None:
    client = NatsflowClient(nc, settings.subjects, timeout=0.5)
    asked, answer = asyncio.Event(), asyncio.Event()

    async def slow_index(msg: Any) -> None:
        asked.set()
        await answer.wait()
        await msg.respond(BulkResult(operation="stop", dry_run=True, matched=0,
                                     ids=[]).model_dump_json().encode())

    bulk_sub = await nc.subscribe(settings.subjects.api("workflow.bulk"), cb=slow_index)
    silent = await nc.subscribe(settings.subjects.api("workflow.get"))
    try:
        bulk = asyncio.create_task(client.bulk("stop", name="sleeper", dry_run=True))
        await asyncio.wait_for(asked.wait(), 10)
        assert client.timeout == 0.5
        # Another request meanwhile keeps its own deadline.
        with pytest.raises(NatsflowError, match=r"within 0\.5s"):
            await asyncio.wait_for(client.get("anyone"), 10)
        answer.set()
        assert (await asyncio.wait_for(bulk, 10)).matched == 0
        assert client.timeout == 0.5
    finally:
        answer.set()
        await bulk_sub.unsubscribe()
        await silent.unsubscribe()


# -- item 18: rerun with a taken new_id ---------------------------------------------------


async def test_rerun_with_a_taken_new_id_is_a_409(live: httpx.AsyncClient) -> None:
    assert (await live.post("/workflows", json=_config("first"))).status_code == 202
    other = _config("other", input={"who": "someone else"})
    assert (await live.post("/workflows", json=other)).status_code == 202
    for wid in ("first", "other"):
        await _state(live, wid, "completed")
    resp = await live.post("/workflows/first/rerun", json={"new_id": "other"})
    _problem(resp, 409, "id-conflict")
    assert (await live.get("/workflows/other")).json()["input"] == {"who": "someone else"}
