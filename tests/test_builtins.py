"""The built-in steps against a real nats-server, a real NATS micro service and real HTTP.

The tests play the engine: they publish TaskMessages for the reserved task types onto
the work queue and read the results from the inbox stream, as the engine does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import uvicorn
import yaml
from helpers import RESULT, new_task, results_of, run_one, send
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from contracts.builtins import (
    BUILTIN_TASKS,
    HTTP_TASK,
    PUBLISH_TASK,
    REQUEST_TASK,
    HttpInput,
    PublishInput,
    RequestInput,
)
from contracts.egress import LOOPBACK, EgressPolicy
from contracts.messages import TaskFailed, TaskSucceeded
from contracts.models import MAX_STEP_OUTPUT_BYTES, StepState, TaskStep, WorkflowState
from contracts.subjects import TASK_TYPE_RE
from natsflow.client import NatsflowClient
from natsflow.embedded import free_port
from natsflow.worker import TaskContext, Worker
from orchestrator import Orchestrator
from orchestrator.builtins import BuiltinSteps, decode_reply, encode_payload
from transport.connect import NatsSettings
from transport.streams import Topology, declare_stream

# -- fixtures ---------------------------------------------------------------------------

#: The test HTTP server listens on 127.0.0.1, which http steps refuse unless opened.
OPEN_LOOPBACK = EgressPolicy.parse(LOOPBACK)


@pytest.fixture
async def engine(settings: NatsSettings) -> AsyncIterator[object]:
    """An orchestrator whose http steps may call this machine (the test server)."""
    orch = Orchestrator(settings, stop_grace=2.0, egress=OPEN_LOOPBACK)
    await orch.start()
    yield orch
    await orch.stop()


@pytest.fixture
async def js(nc: Client, settings: NatsSettings) -> JetStreamContext:
    """JetStream with the inbox the engine would have declared."""
    ctx = nc.jetstream()
    await declare_stream(ctx, Topology(settings.subjects).inbox())
    return ctx


@pytest.fixture
async def steps(settings: NatsSettings, nc: Client, js: JetStreamContext
                ) -> AsyncIterator[BuiltinSteps]:
    """The built-in steps served on the test connection."""
    builtin = BuiltinSteps(nc, settings.subjects, stop_grace=0.5, egress=OPEN_LOOPBACK)
    async with builtin.running(settings):
        yield builtin


@pytest.fixture
async def service(nc: Client, prefix: str) -> AsyncIterator[str]:
    """A NATS micro service; yields the subject prefix of its endpoints."""
    svc = await add_service(nc, ServiceConfig(name=f"svc{prefix}", version="1.0.0"))

    async def echo(req: Request) -> None:
        await req.respond(json.dumps({"got": req.data.decode(),
                                      "hdr": (req.headers or {}).get("X-Test")}).encode())

    async def text(req: Request) -> None:
        await req.respond(b"plain words")

    async def refuse(req: Request) -> None:
        await req.respond_error("404", "no such order")

    async def broken(req: Request) -> None:
        await req.respond_error("503", "database down")

    async def silent(req: Request) -> None:
        await asyncio.sleep(3)

    for name, fn in {"echo": echo, "text": text, "refuse": refuse, "broken": broken,
                     "silent": silent}.items():
        await svc.add_endpoint(EndpointConfig(name=name, subject=f"svc{prefix}.{name}",
                                              handler=fn))
    yield f"svc{prefix}"
    await svc.stop()


async def _json(request: HttpRequest) -> Response:
    return JSONResponse({"hello": "world", "query": dict(request.query_params)})


async def _echo(request: HttpRequest) -> Response:
    body = await request.body()
    return JSONResponse({"body": body.decode(), "type": request.headers.get("content-type"),
                         "method": request.method})


async def _text(request: HttpRequest) -> Response:
    return PlainTextResponse("just text")


async def _bad_json(request: HttpRequest) -> Response:
    return Response("{not json", media_type="application/json")


async def _status(request: HttpRequest) -> Response:
    return PlainTextResponse(f"status {request.path_params['code']}",
                             status_code=int(request.path_params["code"]))


async def _slow(request: HttpRequest) -> Response:
    await asyncio.sleep(5)
    return PlainTextResponse("late")


async def _trickle(request: HttpRequest) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(30):  # each chunk within any read timeout, the whole far beyond
            await asyncio.sleep(0.1)
            yield b"."

    return StreamingResponse(chunks(), media_type="text/plain")


async def _big(request: HttpRequest) -> Response:
    return PlainTextResponse("x" * (MAX_STEP_OUTPUT_BYTES + 1))


_APP = Starlette(routes=[
    Route("/json", _json),
    Route("/echo", _echo, methods=["POST", "PUT", "PATCH", "DELETE"]),
    Route("/text", _text),
    Route("/bad-json", _bad_json),
    Route("/status/{code:int}", _status, methods=["GET", "POST"]),
    Route("/slow", _slow),
    Route("/trickle", _trickle),
    Route("/big", _big),
])


@pytest.fixture
async def web() -> AsyncIterator[str]:
    """A real HTTP server (uvicorn) on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_APP, host="127.0.0.1", port=port, lifespan="off",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


async def _succeeded(js: JetStreamContext, settings: NatsSettings, task_type: str,
                     data: dict[str, Any]) -> Any:
    result = await run_one(js, settings.subjects, task_type, data)
    assert isinstance(result, TaskSucceeded), result
    return result.output


async def _failed(js: JetStreamContext, settings: NatsSettings, task_type: str,
                  data: dict[str, Any]) -> TaskFailed:
    result = await run_one(js, settings.subjects, task_type, data)
    assert isinstance(result, TaskFailed), result
    return result


# -- contracts --------------------------------------------------------------------------


def test_builtin_task_types_are_valid_task_types() -> None:
    assert {REQUEST_TASK, HTTP_TASK, PUBLISH_TASK} == BUILTIN_TASKS
    assert all(TASK_TYPE_RE.match(t) for t in BUILTIN_TASKS)


@pytest.mark.parametrize("subject", ["a.*", "a.>", "a..b", ".a", "a b", ""])
def test_subjects_must_be_literal(subject: str) -> None:
    for model in (RequestInput, PublishInput):
        with pytest.raises(ValueError, match="subject"):
            model.model_validate({"subject": subject})
    # The server's subjects are well-formed input: the egress policy refuses them when
    # sent (tests/test_egress.py), unless an operator opened them.
    assert RequestInput(subject="$JS.API.INFO").subject == "$JS.API.INFO"


def test_inputs_forbid_unknown_fields_and_bad_urls() -> None:
    with pytest.raises(ValueError, match="extra"):
        RequestInput.model_validate({"subject": "a", "payloud": 1})
    for url in ("ftp://host/x", "host/x", "http://"):
        with pytest.raises(ValueError, match="url"):
            HttpInput.model_validate({"url": url})
    with pytest.raises(ValueError, match="method"):
        HttpInput.model_validate({"url": "http://h/", "method": "TRACE"})
    assert RequestInput(subject="$SRV.PING").timeout == 5


def test_payload_encoding_and_reply_decoding() -> None:
    assert encode_payload(None) == b""
    assert encode_payload("héllo") == "héllo".encode()
    assert encode_payload({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode()
    assert decode_reply(b"") is None
    assert decode_reply(b'{"a":1}') == {"a": 1}
    assert decode_reply(b"42") == 42
    assert decode_reply(b"not json") == "not json"
    assert decode_reply(b"NaN") == "NaN"  # not JSON, whatever Python's json says


def test_user_workers_cannot_serve_reserved_task_types() -> None:
    worker = Worker()

    async def handler(ctx: TaskContext, data: dict[str, Any]) -> None:
        return None

    for task_type in (REQUEST_TASK, "natsflow.anything"):
        with pytest.raises(ValueError, match="reserved"):
            worker.task(task_type)(handler)
    worker.task("natsflowish.ok")(handler)  # only the ``natsflow.`` prefix is reserved
    assert worker.task_types == ["natsflowish.ok"]
    assert not worker.reserved


async def test_only_a_reserved_worker_serves_the_builtin_task_types(
        nc: Client, settings: NatsSettings) -> None:
    async def handler(ctx: TaskContext, data: dict[str, Any]) -> None:
        return None

    worker = Worker(reserved=True)  # the SDK's public option, for natsflow's own steps
    worker.task("natsflow.anything")(handler)
    with pytest.raises(ValueError, match="already registered"):
        worker.task("natsflow.anything")(handler)
    assert worker.task_types == ["natsflow.anything"]
    builtins = BuiltinSteps(nc, settings.subjects).worker
    assert builtins.reserved and sorted(builtins.task_types) == sorted(BUILTIN_TASKS)


# -- natsflow.request -------------------------------------------------------------------


async def test_request_reply_is_the_output(steps: BuiltinSteps, service: str,
                                           js: JetStreamContext, settings: NatsSettings) -> None:
    out = await _succeeded(js, settings, REQUEST_TASK, {
        "subject": f"{service}.echo", "payload": {"n": 1}, "headers": {"X-Test": "yes"}})
    assert out == {"got": '{"n":1}', "hdr": "yes"}
    out = await _succeeded(js, settings, REQUEST_TASK,
                           {"subject": f"{service}.echo", "payload": "raw text"})
    assert out == {"got": "raw text", "hdr": None}
    assert await _succeeded(js, settings, REQUEST_TASK,
                            {"subject": f"{service}.text"}) == "plain words"


async def test_request_service_errors(steps: BuiltinSteps, service: str,
                                      js: JetStreamContext, settings: NatsSettings) -> None:
    refused = await _failed(js, settings, REQUEST_TASK, {"subject": f"{service}.refuse"})
    assert (refused.error.code, refused.error.retryable) == ("request-error", False)
    assert "404" in refused.error.message and "no such order" in refused.error.message
    assert refused.error.details == {"service_code": "404", "service_error": "no such order"}
    broken = await _failed(js, settings, REQUEST_TASK, {"subject": f"{service}.broken"})
    assert (broken.error.code, broken.error.retryable) == ("request-error", True)
    assert "database down" in broken.error.message


async def test_request_no_responders_and_timeout(steps: BuiltinSteps, service: str,
                                                 js: JetStreamContext,
                                                 settings: NatsSettings) -> None:
    nobody = await _failed(js, settings, REQUEST_TASK, {"subject": f"{service}.nobody"})
    assert (nobody.error.code, nobody.error.retryable) == ("no-responders", True)
    late = await _failed(js, settings, REQUEST_TASK,
                         {"subject": f"{service}.silent", "timeout": 0.3})
    assert (late.error.code, late.error.retryable) == ("request-timeout", True)


async def test_request_to_natsflow_internals_is_forbidden(
        steps: BuiltinSteps, js: JetStreamContext, settings: NatsSettings) -> None:
    s = settings.subjects
    # Its public API too: a step runs with the orchestrator's rights, not the submitter's.
    for subject in (s.result("wf1"), s.workflow_command("wf1"), s.task("x"),
                    s.api("workflow.get"), s.submit):
        failed = await _failed(js, settings, REQUEST_TASK, {"subject": subject})
        assert (failed.error.code, failed.error.retryable) == ("forbidden-subject", False)
        assert failed.error.details == {"subject": subject, "rule": "natsflow-subject"}


# -- natsflow.http ----------------------------------------------------------------------


async def test_http_json_and_text_bodies(steps: BuiltinSteps, web: str, js: JetStreamContext,
                                         settings: NatsSettings) -> None:
    out = await _succeeded(js, settings, HTTP_TASK,
                           {"url": f"{web}/json?a=1", "query": {"b": "2"}})
    assert out == {"hello": "world", "query": {"a": "1", "b": "2"}}
    out = await _succeeded(js, settings, HTTP_TASK,
                           {"url": f"{web}/echo", "method": "POST", "body": {"x": [1]}})
    assert out["type"] == "application/json" and json.loads(out["body"]) == {"x": [1]}
    out = await _succeeded(js, settings, HTTP_TASK,
                           {"url": f"{web}/echo", "method": "PUT", "body": "hi"})
    assert (out["body"], out["type"]) == ("hi", "text/plain; charset=utf-8")
    out = await _succeeded(js, settings, HTTP_TASK, {"url": f"{web}/echo", "method": "PATCH",
                                                     "body": "<a/>",
                                                     "headers": {"Content-Type": "text/xml"}})
    assert (out["body"], out["type"], out["method"]) == ("<a/>", "text/xml", "PATCH")
    assert await _succeeded(js, settings, HTTP_TASK, {"url": f"{web}/text"}) == "just text"
    assert await _succeeded(js, settings, HTTP_TASK, {"url": f"{web}/bad-json"}) == "{not json"
    assert await _succeeded(js, settings, HTTP_TASK,
                            {"url": f"{web}/json", "method": "HEAD"}) is None


async def test_http_status_errors(steps: BuiltinSteps, web: str, js: JetStreamContext,
                                  settings: NatsSettings) -> None:
    missing = await _failed(js, settings, HTTP_TASK, {"url": f"{web}/status/404?token=secret"})
    assert (missing.error.code, missing.error.retryable) == ("http-status", False)
    assert "404" in missing.error.message and "status 404" in missing.error.message
    assert "secret" not in missing.error.message  # the query may hold credentials
    assert missing.error.details == {"status": 404, "body": "status 404"}
    for code in (503, 429, 408):
        failed = await _failed(js, settings, HTTP_TASK, {"url": f"{web}/status/{code}"})
        assert (failed.error.code, failed.error.retryable) == ("http-status", True)


async def test_http_expect_lists_the_successful_statuses(
        steps: BuiltinSteps, web: str, js: JetStreamContext, settings: NatsSettings) -> None:
    out = await _succeeded(js, settings, HTTP_TASK,
                           {"url": f"{web}/status/404", "expect": [200, 404]})
    assert out == "status 404"
    failed = await _failed(js, settings, HTTP_TASK, {"url": f"{web}/json", "expect": [201]})
    assert (failed.error.code, failed.error.retryable) == ("http-status", False)


async def test_http_timeout_connection_error_and_size_bound(
        steps: BuiltinSteps, web: str, js: JetStreamContext, settings: NatsSettings) -> None:
    slow = await _failed(js, settings, HTTP_TASK, {"url": f"{web}/slow", "timeout": 0.3})
    assert (slow.error.code, slow.error.retryable) == ("http-timeout", True)
    trickle = await _failed(js, settings, HTTP_TASK, {"url": f"{web}/trickle", "timeout": 0.5})
    assert (trickle.error.code, trickle.error.retryable) == ("http-timeout", True)
    closed = await _failed(js, settings, HTTP_TASK, {"url": f"http://127.0.0.1:{free_port()}/"})
    assert (closed.error.code, closed.error.retryable) == ("http-error", True)
    big = await _failed(js, settings, HTTP_TASK, {"url": f"{web}/big"})
    assert (big.error.code, big.error.retryable) == ("output-too-large", False)


# -- natsflow.publish -------------------------------------------------------------------


async def test_publish_core(steps: BuiltinSteps, nc: Client, js: JetStreamContext,
                            settings: NatsSettings, prefix: str) -> None:
    sub = await nc.subscribe(f"out{prefix}.>")
    out = await _succeeded(js, settings, PUBLISH_TASK, {
        "subject": f"out{prefix}.a", "payload": [1, "b"], "headers": {"X-K": "v"}})
    assert out == {"subject": f"out{prefix}.a"}
    msg = await sub.next_msg(timeout=5)
    assert (msg.data, (msg.headers or {}).get("X-K")) == (b'[1,"b"]', "v")
    await sub.unsubscribe()


async def test_publish_to_a_stream_waits_for_the_ack(
        steps: BuiltinSteps, js: JetStreamContext, settings: NatsSettings, prefix: str) -> None:
    await js.add_stream(StreamConfig(name=f"OUT{prefix}", subjects=[f"out{prefix}.>"]))
    task = new_task(settings.subjects, PUBLISH_TASK,
                    {"subject": f"out{prefix}.a", "payload": "x", "stream": True})
    await send(js, settings.subjects, task)
    (result,) = await results_of(js, settings.subjects, task)
    assert isinstance(result, TaskSucceeded)
    assert result.output == {"subject": f"out{prefix}.a", "stream": f"OUT{prefix}", "seq": 1}
    stored = await js.get_msg(f"OUT{prefix}", 1)
    assert stored.data == b"x"
    assert (stored.headers or {}).get("Nats-Msg-Id") == task.idempotency_key
    nostream = await _failed(js, settings, PUBLISH_TASK,
                             {"subject": f"none{prefix}.a", "stream": True})
    assert (nostream.error.code, nostream.error.retryable) == ("no-stream", True)


async def test_publish_to_natsflow_internals_is_forbidden(
        steps: BuiltinSteps, js: JetStreamContext, settings: NatsSettings) -> None:
    failed = await _failed(js, settings, PUBLISH_TASK,
                           {"subject": settings.subjects.result("wf1"), "stream": True})
    assert (failed.error.code, failed.error.retryable) == ("forbidden-subject", False)


# -- invalid input and the orchestrator -------------------------------------------------


@pytest.mark.parametrize(("task_type", "data", "field"), [
    (REQUEST_TASK, {"subject": "a.*"}, "subject"),
    (REQUEST_TASK, {"subject": "a", "timeout": 0}, "timeout"),
    (HTTP_TASK, {"url": "file:///etc/passwd"}, "url"),
    (HTTP_TASK, {"url": "http://h/", "expect": ["ok"]}, "expect.0"),
    (PUBLISH_TASK, {"subject": "a", "extra": 1}, "extra"),
])
async def test_invalid_input_is_not_retryable_and_names_the_field(
        steps: BuiltinSteps, js: JetStreamContext, settings: NatsSettings, task_type: str,
        data: dict[str, Any], field: str) -> None:
    failed = await _failed(js, settings, task_type, data)
    assert (failed.error.code, failed.error.retryable) == ("invalid-input", False)
    assert failed.error.field == field
    assert field in failed.error.message


async def test_the_orchestrator_serves_builtins_unless_told_not_to(
        settings: NatsSettings, nc: Client, service: str, prefix: str) -> None:
    s = settings.subjects
    js = nc.jetstream()
    # The engine owns the inbox; this test collects the result on a stream of its own.
    await js.add_stream(StreamConfig(name=f"RES{prefix}", subjects=[f"res{prefix}.>"]))
    task = new_task(s, REQUEST_TASK, {"subject": f"{service}.text"},
                    reply_to=f"res{prefix}.r")
    results = await js.pull_subscribe(f"res{prefix}.r", stream=f"RES{prefix}")
    async with Orchestrator(settings, builtins=False):
        await send(js, s, task)
        with pytest.raises(nats.errors.TimeoutError):
            await results.fetch(1, timeout=1.5)
    async with Orchestrator(settings):
        (msg,) = await results.fetch(1, timeout=10)
    result = RESULT.validate_json(msg.data)
    assert isinstance(result, TaskSucceeded) and result.output == "plain words"


def test_docs_examples_are_valid_builtin_steps() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "workers.md").read_text()
    section = doc[doc.index("## Built-in steps"):]
    blocks = re.findall(r"^```yaml\n(.*?)^```", section, flags=re.S | re.M)
    models: dict[str, type[BaseModel]] = {REQUEST_TASK: RequestInput, HTTP_TASK: HttpInput,
                                          PUBLISH_TASK: PublishInput}
    assert len(blocks) == 3
    steps = [TaskStep.model_validate(yaml.safe_load(block)) for block in blocks]
    for step in steps:
        models[step.task].model_validate(step.input)
    assert {step.task for step in steps} == BUILTIN_TASKS


# -- through the engine: kind request / http / publish ----------------------------------


async def test_request_http_and_publish_steps_run_through_the_engine(
        engine: object, client: NatsflowClient, nc: Client, web: str,
        service: str) -> None:
    published: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        published.append(msg.data)

    sub = await nc.subscribe("engine.out.eu", cb=on_msg)
    try:
        await client.create({
            "name": "no-code", "id": "nocode", "input": {"region": "eu", "n": 3},
            "steps": [
                {"id": "ask", "kind": "request", "subject": f"{service}.echo",
                 "payload": {"n": "${input.n}"}, "headers": {"X-Test": "yes"}},
                {"id": "call", "kind": "http", "method": "POST", "url": f"{web}/echo",
                 "body": {"asked": "${steps.ask.output.hdr}"}, "depends_on": ["ask"]},
                {"id": "get", "kind": "http", "url": f"{web}/json",
                 "query": {"region": "${input.region}"}},
                {"id": "tell", "kind": "publish", "subject": "engine.out.${input.region}",
                 "payload": {"method": "${steps.call.output.method}"},
                 "depends_on": ["call", "get"]},
                {"id": "missing", "kind": "http", "url": f"{web}/status/404",
                 "when": "input.n > 5"},
            ]})
        status = (await client.wait("nocode", timeout=60)).status
    finally:
        await sub.unsubscribe()
    assert status is not None and status.state == WorkflowState.COMPLETED, status.error
    assert status.step("ask").output == {"got": '{"n":3}', "hdr": "yes"}
    assert status.step("call").output["body"] == '{"asked":"yes"}'
    assert status.step("get").output == {"hello": "world", "query": {"region": "eu"}}
    assert status.step("tell").output["subject"] == "engine.out.eu"
    assert json.loads(published[0]) == {"method": "POST"}
    assert status.step("missing").state == StepState.SKIPPED


async def test_an_http_step_with_an_unexpected_status_fails_naming_it(
        engine: object, client: NatsflowClient, web: str) -> None:
    await client.create({"name": "bad-http", "id": "badhttp", "steps": [
        {"id": "call", "kind": "http", "url": f"{web}/status/404",
         "retry": {"max_attempts": 3, "initial_interval": 0.1}}]})
    status = (await client.wait("badhttp", timeout=60)).status
    assert status is not None and status.state == WorkflowState.FAILED
    err = status.step("call").error
    assert err is not None and err.code == "http-status" and "404" in err.message
    assert status.step("call").attempts == 1  # a 404 is not retried
