"""Live event streams (SSE) of the gateway, through uvicorn and a real HTTP client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from nats.aio.client import Client

from contracts.models import EVENT_TERMINAL, Event
from contracts.subjects import Subjects
from gateway import create_app
from natsflow.client import NatsflowClient
from natsflow.embedded import free_port
from transport.connect import NatsSettings

PROBLEM = "application/problem+json"
_Frame = tuple[str | None, str | None, str | None]  # (id, event, data); all None: comment


@pytest.fixture
async def gateway(demo_worker: object, settings: NatsSettings,
                  nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway served by uvicorn on a free port, with an engine and the demo worker."""
    port = free_port()
    app = create_app(settings, auth=None, nc=nc, heartbeat=0.2)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        yield http
    server.should_exit = True
    await serving


async def _frames(resp: httpx.Response) -> AsyncIterator[_Frame]:
    """The SSE messages of a response; a comment is ``(None, None, None)``."""
    fields: dict[str, str] = {}
    async for line in resp.aiter_lines():
        if line.startswith(":"):
            yield None, None, None
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif fields:
            yield fields.get("id"), fields.get("event"), fields.get("data")
            fields = {}


async def _read_all(http: httpx.AsyncClient, path: str, **kwargs: Any) -> list[Event]:
    """Every event of a stream that ends, checking the SSE fields against each Event."""
    events = []
    async with http.stream("GET", path, **kwargs) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for event_id, kind, data in _frames(resp):
            if data is None:
                continue
            event = Event.model_validate_json(data)
            assert (event_id, kind) == (str(event.seq), event.type)
            events.append(event)
    return events


def _sleeper(workflow_id: str, *, start: bool = True) -> dict[str, Any]:
    return {"name": "nap", "id": workflow_id, "start": start, "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 0.6, "steps": 3}},
        {"id": "echo", "task": "demo.echo", "depends_on": ["nap"], "input": {"text": "x"}}]}


async def test_stream_replays_then_follows_live_until_terminal(
        gateway: httpx.AsyncClient, client: NatsflowClient) -> None:
    await client.create(_sleeper("live_1", start=False))
    reading = asyncio.create_task(_read_all(gateway, "/workflows/live_1/events"))
    await asyncio.sleep(0.3)  # let the stream replay `created` and wait for more
    await client.start("live_1")
    events = await asyncio.wait_for(reading, 30)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "workflow.created"
    assert events[-1].type == "workflow.completed"
    assert {"step.progress", "step.succeeded"} <= {e.type for e in events}
    assert events == [e async for e in client.events("live_1", follow=False)]


async def test_connecting_after_the_end_gets_every_event_and_ends(
        gateway: httpx.AsyncClient, client: NatsflowClient) -> None:
    await client.create(_sleeper("done_1"))
    await client.wait("done_1", timeout=30)
    events = await _read_all(gateway, "/workflows/done_1/events")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type in EVENT_TERMINAL
    assert events == [e async for e in client.watch("done_1")]


async def test_resume_after_last_event_id_or_after(
        gateway: httpx.AsyncClient, client: NatsflowClient) -> None:
    await client.create(_sleeper("again_1"))
    await client.wait("again_1", timeout=30)
    every = await _read_all(gateway, "/workflows/again_1/events")
    resumed = await _read_all(gateway, "/workflows/again_1/events",
                              headers={"Last-Event-ID": "2"})
    assert resumed == every[2:]
    assert await _read_all(gateway, "/workflows/again_1/events?after=3") == every[3:]
    # EventSource's header wins over the query of the URL it reconnects to.
    assert await _read_all(gateway, "/workflows/again_1/events?after=1",
                           headers={"Last-Event-ID": "4"}) == every[4:]
    assert [e async for e in client.watch("again_1", after=4)] == every[4:]


async def test_unknown_workflow_and_bad_filters_are_problems(
        gateway: httpx.AsyncClient) -> None:
    resp = await gateway.get("/workflows/nope_1/events")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["code"] == "workflow-not-found"
    for bad in ("a..b", "*.workflow.>.x", "a b", "$JS.x", ""):
        resp = await gateway.get("/events", params={"subject": bad})
        assert resp.status_code == 400, (bad, resp.text)
        assert resp.headers["content-type"] == PROBLEM
    resp = await gateway.get("/workflows/x/events", headers={"Last-Event-ID": "soon"})
    assert resp.status_code == 400


def test_event_filters_are_mapped_under_the_prefix() -> None:
    s = Subjects("acme.flow")
    assert s.events_matching("*.workflow.failed") == "acme.flow.events.*.workflow.failed"
    assert s.events_matching(">") == s.all_events
    assert s.events_matching("wf1.>") == s.events_of("wf1")
    for bad in ("a.>.b", "a*", "a.", "*..x", "x y"):
        with pytest.raises(ValueError, match="event filter"):
            s.events_matching(bad)


async def _consumers(nc: Client, subjects: Subjects) -> int:
    info = await nc.jetstream().stream_info(subjects.events_stream)
    assert info.state.consumer_count is not None
    return info.state.consumer_count


async def _failed_events(http: httpx.AsyncClient, params: dict[str, str],
                         out: list[Event], heartbeats: list[int]) -> None:
    async with http.stream("GET", "/events", params=params) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for event_id, _, data in _frames(resp):
            if data is None:
                heartbeats.append(1)
                continue
            assert event_id is not None and int(event_id) > 0
            out.append(Event.model_validate_json(data))


async def test_all_events_filter_sees_other_workflows_failures_live(
        gateway: httpx.AsyncClient, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    await client.create(_sleeper("early_ok"))
    await client.wait("early_ok", timeout=30)
    before = await _consumers(nc, settings.subjects)
    seen: list[Event] = []
    heartbeats: list[int] = []
    reading = asyncio.create_task(
        _failed_events(gateway, {"subject": "*.workflow.failed"}, seen, heartbeats))
    while True:  # once the gateway's consumer exists, "now" has begun
        if await _consumers(nc, settings.subjects) > before:
            break
        await asyncio.sleep(0.02)
    await client.create({"name": "ok", "id": "fine_1",
                         "steps": [{"id": "a", "task": "demo.noop"}]})
    await client.create({"name": "bad", "id": "broken_1", "steps": [
        {"id": "a", "task": "demo.fail", "retry": {"max_attempts": 1}}]})
    await client.wait("fine_1", timeout=30)
    await client.wait("broken_1", timeout=30)
    while not seen or not heartbeats:
        assert not reading.done(), reading
        await asyncio.sleep(0.05)
    reading.cancel()
    assert [(e.workflow_id, e.type) for e in seen] == [("broken_1", "workflow.failed")]


async def test_all_events_from_the_start(
        gateway: httpx.AsyncClient, client: NatsflowClient) -> None:
    await client.create({"name": "bad", "id": "old_fail", "steps": [
        {"id": "a", "task": "demo.fail", "retry": {"max_attempts": 1}}]})
    await client.wait("old_fail", timeout=30)
    seen: list[Event] = []
    reading = asyncio.create_task(_failed_events(
        gateway, {"subject": "old_fail.workflow.*", "deliver": "all"}, seen, []))
    while len(seen) < 3:
        assert not reading.done(), reading
        await asyncio.sleep(0.05)
    reading.cancel()
    assert [e.type for e in seen] == ["workflow.created", "workflow.started",
                                      "workflow.failed"]


# -- the examples of docs/http-api.md and docs/subjects.md -------------------------------

_DOCS = Path(__file__).resolve().parent.parent / "docs"


async def test_http_doc_stream_example_is_what_order_42_sends(
        gateway: httpx.AsyncClient, client: NatsflowClient) -> None:
    doc = (_DOCS / "http-api.md").read_text()
    section = doc[doc.index("### `GET /workflows/{id}/events`"):doc.index("### `GET /events`")]
    shown = re.findall(r"^id: (\d+)\nevent: ([\w.]+)\n", section, re.MULTILINE)
    await client.create({"name": "greet", "id": "order_42", "input": {"who": "world"},
                         "steps": [{"id": "hello", "task": "demo.echo",
                                    "input": {"text": "${input.who}"}},
                                   {"id": "shout", "task": "demo.echo",
                                    "depends_on": ["hello"],
                                    "input": {"text": "${steps.hello.output.text}"}}]})
    sent = {(str(e.seq), e.type) for e in await _read_all(gateway, "/workflows/order_42/events")}
    assert len(shown) == 3
    assert set(shown) <= sent
    assert max(int(i) for i, _ in shown) == len(sent)


async def test_subjects_doc_recipe_replays_failures(
        engine: object, demo_worker: object, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    doc = (_DOCS / "subjects.md").read_text()
    recipe = re.search(r"## Recipe.*?```python\n(.*?)```", doc, re.DOTALL)
    assert recipe is not None
    s = settings.subjects
    code = (recipe.group(1).replace("NATSFLOW_EVENTS", s.events_stream)
            .replace("natsflow.events.", s.prefix + ".events."))
    namespace: dict[str, Any] = {}
    exec(compile(code, "subjects.md", "exec"), namespace)
    await client.create({"name": "bad", "id": "recipe_1", "steps": [
        {"id": "a", "task": "demo.fail"}]})
    await client.wait("recipe_1", timeout=30)
    feed = namespace["failures"](nc)
    stream_seq, event = await asyncio.wait_for(anext(feed), 30)
    await feed.aclose()
    assert (event.workflow_id, event.type) == ("recipe_1", "workflow.failed")
    assert stream_seq > 0


async def test_all_events_before_any_orchestrator_is_a_503_not_a_broken_stream(
        settings: NatsSettings, nc: Client) -> None:
    """No orchestrator has declared the events stream yet: a 503 problem before the stream
    starts, not a 200 whose body breaks off with a server error."""
    port = free_port()
    app = create_app(settings, auth=None, nc=nc, heartbeat=0.2)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            resp = await http.get("/events", params={"deliver": "all"})
            assert resp.status_code == 503, resp.text
            assert resp.headers["content-type"].startswith(PROBLEM)
            assert resp.json()["code"] == "unavailable"
            assert "events stream" in resp.json()["detail"]
    finally:
        server.should_exit = True
        await serving
