"""Trace context from the HTTP request, through NATS headers, to the worker and back.

The gateway runs in-process (httpx.ASGITransport), the orchestrator and the demo worker
in the test process, against the real nats-server. OpenTelemetry's tracer provider is
global: one with an in-memory exporter is installed for the session, and each test that
needs spans turns tracing on (and off again) and starts with an empty exporter.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Probe
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import create_app
from natsflow.client import NatsflowClient
from transport import tracing
from transport.connect import NatsSettings
from transport.tracing import TraceContext, extract, inject

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "congo=t61rcWkgMzE"


def _config(workflow_id: str) -> dict[str, Any]:
    return {"name": "traced", "id": workflow_id, "input": {"who": "world"}, "steps": [
        {"id": "a", "task": "demo.echo", "input": {"text": "${input.who}"}},
        {"id": "b", "task": "demo.echo", "depends_on": ["a"],
         "input": {"text": "${steps.a.output.text}"}},
    ]}


@pytest.fixture(scope="session")
def exporter() -> InMemorySpanExporter:
    """The session's span exporter (the global tracer provider can be set only once)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    return memory


@pytest.fixture
def otel(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, with no spans from earlier tests."""
    exporter.clear()
    tracing.enable()
    yield exporter
    tracing.enable(False)
    exporter.clear()


@pytest.fixture
def otel_off(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """Tracing explicitly off (a provider is installed, so spans would show if made)."""
    exporter.clear()
    tracing.enable(False)
    yield exporter
    exporter.clear()


@pytest.fixture
async def http(settings: NatsSettings, nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc, request_timeout=5.0))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def _capture(nc: Client, subject: str) -> list[Msg]:
    """Every message on ``subject`` from now on (a raw core-NATS subscriber)."""
    seen: list[Msg] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(subject, cb=keep)
    await nc.flush()
    return seen


def _hex(span: ReadableSpan, *, parent: bool = False) -> tuple[str, str]:
    ctx = span.parent if parent else span.context
    assert ctx is not None, f"{span.name} has no parent"
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def _natsflow_spans(exporter: InMemorySpanExporter) -> list[str]:
    """Names of the spans natsflow made (recent FastAPI versions make their own)."""
    return [s.name for s in exporter.get_finished_spans()
            if s.name.startswith(("natsflow.", "HTTP "))]


def _ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """The names of ``span``'s recorded ancestors, nearest first."""
    by_id = {_hex(s)[1]: s for s in spans}
    names = []
    while span.parent is not None and (parent := by_id.get(_hex(span, parent=True)[1])):
        names.append(parent.name)
        span = parent
    return names


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


# -- the header helpers -------------------------------------------------------------


def test_extract_takes_valid_w3c_headers_in_any_case() -> None:
    ctx = extract({"Traceparent": TRACEPARENT.upper(), "TraceState": TRACESTATE})
    assert ctx == TraceContext(traceparent=TRACEPARENT, tracestate=TRACESTATE)
    assert ctx.trace_id == TRACE_ID
    assert extract({"traceparent": TRACEPARENT}) == TraceContext(traceparent=TRACEPARENT)


@pytest.mark.parametrize("bad", [
    "", "garbage", f"00-{TRACE_ID}-{PARENT_ID}",  # too short
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is invalid
    f"00-{'0' * 32}-{PARENT_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero ids
])
def test_extract_ignores_malformed_traceparent(bad: str) -> None:
    assert extract({"traceparent": bad, "tracestate": TRACESTATE}) is None
    assert extract(None) is None
    assert extract({}) is None


def test_off_inject_passes_the_incoming_context_unchanged(otel_off: Any) -> None:
    incoming = TraceContext(traceparent=TRACEPARENT, tracestate=TRACESTATE)
    assert inject({"x": "1"}, incoming) == {"x": "1", "traceparent": TRACEPARENT,
                                            "tracestate": TRACESTATE}
    assert inject({}, None) == {}
    with tracing.span("natsflow.nothing", incoming):
        assert inject({}, incoming) == incoming.headers()
    assert _natsflow_spans(otel_off) == []


def test_on_inject_sends_the_current_span(otel: InMemorySpanExporter) -> None:
    incoming = TraceContext(traceparent=TRACEPARENT)
    with tracing.span("work", incoming):
        sent = extract(inject({}, incoming))
    span = _one(list(otel.get_finished_spans()), "work")
    assert sent is not None and sent.trace_id == TRACE_ID
    assert sent.traceparent.split("-")[2] == _hex(span)[1]
    assert _hex(span, parent=True) == (TRACE_ID, PARENT_ID)


# -- end to end ---------------------------------------------------------------------


async def test_one_trace_from_http_request_to_worker_and_back(
        otel: InMemorySpanExporter, http: httpx.AsyncClient, client: NatsflowClient,
        nc: Client, settings: NatsSettings, demo_worker: Probe) -> None:
    tasks = await _capture(nc, settings.subjects.task("demo.echo"))
    results = await _capture(nc, settings.subjects.result("tr-1"))
    resp = await http.post("/workflows", json=_config("tr-1"),
                           headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    assert resp.status_code == 202, resp.text
    assert (await client.wait("tr-1", timeout=20)).status.state == "completed"  # type: ignore[union-attr]

    spans = list(otel.get_finished_spans())
    assert spans, "no spans were made"
    # The test's own client.wait() calls are traces of their own.
    ours = [s for s in spans if s.name != "natsflow.api workflow.get"]
    assert {_hex(s)[0] for s in ours} == {TRACE_ID}, [(s.name, _hex(s)[0]) for s in spans]
    # gateway request -> API call -> (task spans at the worker, step spans at the engine)
    request = _one(spans, "HTTP POST")
    assert _hex(request, parent=True) == (TRACE_ID, PARENT_ID)
    api = _one(spans, "natsflow.api workflow.create")
    assert _ancestors(api, spans)[-1] == request.name  # via FastAPI's own spans, if any
    task_spans = [s for s in spans if s.name == "natsflow.task demo.echo"]
    assert len(task_spans) == 2
    for span in [*task_spans, _one(spans, "natsflow.step a"), _one(spans, "natsflow.step b"),
                 _one(spans, "natsflow.workflow traced")]:
        assert _hex(span, parent=True) == _hex(api), span.name
    step_a = _one(spans, "natsflow.step a")
    assert step_a.attributes is not None and step_a.attributes["natsflow.outcome"] == "succeeded"
    assert step_a.start_time is not None and step_a.end_time is not None
    assert step_a.start_time <= step_a.end_time

    # The task messages carry the workflow's context; results carry the task span's.
    assert len(tasks) == 2
    for msg in tasks:
        assert extract(msg.headers) == TraceContext(
            traceparent=f"00-{TRACE_ID}-{_hex(api)[1]}-01", tracestate=TRACESTATE)
    result_parents = {extract(m.headers).traceparent.split("-")[2]  # type: ignore[union-attr]
                      for m in results}
    assert result_parents == {_hex(s)[1] for s in task_spans}


async def test_failed_attempts_make_error_spans(
        otel: InMemorySpanExporter, client: NatsflowClient, demo_worker: Probe) -> None:
    with tracing.span("caller", None):
        await client.create({"name": "bad", "id": "tr-fail",
                             "steps": [{"id": "x", "task": "demo.fail"}]})
    await client.wait("tr-fail", timeout=20)
    spans = list(otel.get_finished_spans())
    caller = _one(spans, "caller")
    ours = [s for s in spans if s.name != "natsflow.api workflow.get"]
    assert {_hex(s)[0] for s in ours} == {_hex(caller)[0]}
    for name in ("natsflow.task demo.fail", "natsflow.step x", "natsflow.workflow bad"):
        span = _one(spans, name)
        assert not span.status.is_ok, name
    assert _one(spans, "natsflow.step x").attributes["natsflow.outcome"] == "failed"  # type: ignore[index]


async def test_off_the_incoming_traceparent_reaches_the_worker_unchanged(
        otel_off: InMemorySpanExporter, http: httpx.AsyncClient, client: NatsflowClient,
        nc: Client, settings: NatsSettings, demo_worker: Probe) -> None:
    tasks = await _capture(nc, settings.subjects.task("demo.echo"))
    results = await _capture(nc, settings.subjects.result("tr-off"))
    resp = await http.post("/workflows", json=_config("tr-off"),
                           headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    assert resp.status_code == 202, resp.text
    await client.wait("tr-off", timeout=20)

    assert len(tasks) == 2 and results
    for msg in [*tasks, *results]:
        assert msg.headers is not None
        assert msg.headers["traceparent"] == TRACEPARENT, msg.subject
        assert msg.headers["tracestate"] == TRACESTATE, msg.subject
    # Kept with the durable record, so a restarted orchestrator sends it on too.
    kv = await nc.jetstream().key_value(settings.subjects.workflows_bucket)
    record = json.loads((await kv.get("tr-off")).value or b"{}")
    assert record["trace"] == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    assert _natsflow_spans(otel_off) == []


async def test_off_without_traceparent_nothing_is_added(
        otel_off: InMemorySpanExporter, http: httpx.AsyncClient, client: NatsflowClient,
        nc: Client, settings: NatsSettings, demo_worker: Probe) -> None:
    tasks = await _capture(nc, settings.subjects.task("demo.echo"))
    resp = await http.post("/workflows", json=_config("tr-none"))
    assert resp.status_code == 202, resp.text
    await client.wait("tr-none", timeout=20)
    assert len(tasks) == 2
    for msg in tasks:
        assert extract(msg.headers) is None


async def test_submit_and_child_workflows_keep_the_trace(
        otel_off: InMemorySpanExporter, client: NatsflowClient, nc: Client,
        settings: NatsSettings, demo_worker: Probe) -> None:
    await client.put_definition("child", {"name": "child", "steps": [
        {"id": "c", "task": "demo.noop"}]})
    tasks = await _capture(nc, settings.subjects.task("demo.noop"))
    incoming = TraceContext(traceparent=TRACEPARENT)
    await client.submit({"name": "parent", "id": "tr-sub", "steps": [
        {"id": "p", "task": "demo.noop"},
        {"id": "kid", "kind": "workflow", "definition": "child", "depends_on": ["p"]}]},
        trace=incoming)
    reply = await client.wait("tr-sub", timeout=20)
    assert reply.status is not None and reply.status.state == "completed"
    for _ in range(50):
        if len(tasks) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(tasks) == 2  # the parent's step and the child's
    for msg in tasks:
        assert extract(msg.headers) == incoming


def test_the_header_examples_in_the_worker_doc_are_valid() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "workers.md").read_text()
    rows = dict(re.findall(r"^\| `(traceparent|tracestate)` \| `([^`]+)` \|", doc, flags=re.M))
    ctx = extract(rows)
    assert ctx == TraceContext(traceparent=rows["traceparent"], tracestate=rows["tracestate"])
    assert ctx.headers() == rows


def test_configure_keeps_a_provider_already_set(exporter: InMemorySpanExporter) -> None:
    provider = trace.get_tracer_provider()
    try:
        tracing.configure("natsflow-test")
        assert tracing.enabled()
        assert trace.get_tracer_provider() is provider
    finally:
        tracing.enable(False)
