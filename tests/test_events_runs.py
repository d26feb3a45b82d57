"""A retried workflow's events: every run is replayed, and a stream ends at the last run's
end (issue 14, item 11), through the client, the CLI and the gateway's SSE."""

from __future__ import annotations

import json
from typing import Any

import httpx
from helpers import run_cli
from nats.aio.client import Client

from contracts.models import EVENT_TERMINAL, Event, EventType, WorkflowState
from gateway import create_app
from natsflow.client import NatsflowClient, stream_end
from transport.connect import NatsSettings


def _flaky_then_sleep(workflow_id: str, *, seconds: float = 0.0) -> dict[str, Any]:
    """Fails in its first run (``a`` fails); a retry with ``a: {fail_times: 0}`` ends it."""
    return {"name": "twice", "id": workflow_id, "steps": [
        {"id": "a", "task": "demo.flaky", "input": {"fail_times": 5}},
        {"id": "b", "task": "demo.sleep", "depends_on": ["a"], "input": {"seconds": seconds}}]}


async def _failed_then_completed(client: NatsflowClient, workflow_id: str) -> list[Event]:
    """Run the workflow to failure, retry it to completion; its stored events."""
    await client.create(_flaky_then_sleep(workflow_id))
    first = (await client.wait(workflow_id, timeout=30)).status
    assert first is not None and first.state == WorkflowState.FAILED
    await client.retry(workflow_id, inputs={"a": {"fail_times": 0}})
    done = (await client.wait(workflow_id, timeout=30)).status
    assert done is not None and done.state == WorkflowState.COMPLETED, done
    events = [e async for e in client.events(workflow_id, follow=False, idle_timeout=1.0)]
    assert [e.seq for e in events] == list(range(1, done.last_seq + 1))
    return events


def _terminals(events: list[Event]) -> list[EventType]:
    return [e.type for e in events if e.type in EVENT_TERMINAL]


async def test_every_run_is_replayed_by_the_client(demo_worker: object,
                                                   client: NatsflowClient) -> None:
    events = await _failed_then_completed(client, "runs-client")
    assert _terminals(events) == [EventType.WORKFLOW_FAILED, EventType.WORKFLOW_COMPLETED]
    watched = [e async for e in client.watch("runs-client")]
    assert watched == events
    resumed = [e async for e in client.watch("runs-client", after=3)]
    assert resumed == events[3:]
    # Resuming after the very last event ends at once instead of waiting forever.
    assert [e async for e in client.watch("runs-client", after=events[-1].seq)] == []


async def test_a_live_watch_goes_past_an_earlier_runs_end(demo_worker: object,
                                                          client: NatsflowClient) -> None:
    await client.create(_flaky_then_sleep("runs-live", seconds=1.5))
    await client.wait("runs-live", timeout=30)
    await client.retry("runs-live", inputs={"a": {"fail_times": 0}})
    # Started while the second run sleeps: the replay passes workflow.failed and the
    # stream follows the second run live to its end.
    watched = [e async for e in client.watch("runs-live")]
    assert _terminals(watched) == [EventType.WORKFLOW_FAILED, EventType.WORKFLOW_COMPLETED]
    assert watched[-1].type == EventType.WORKFLOW_COMPLETED
    status = (await client.get("runs-live")).status
    assert status is not None and stream_end(status) == watched[-1].seq


async def _cli(settings: NatsSettings, *args: str) -> tuple[int, str, str]:
    return await run_cli(*args, settings=settings)


async def test_cli_events_and_follow_print_every_run(demo_worker: object,
                                                     client: NatsflowClient,
                                                     settings: NatsSettings) -> None:
    events = await _failed_then_completed(client, "runs-cli")
    for extra in ([], ["--follow"]):
        code, out, err = await _cli(settings, "events", "runs-cli", "--json", *extra)
        assert code == 0, err
        printed = [Event.model_validate_json(line) for line in out.splitlines()]
        assert printed == events, extra


async def test_submit_watch_of_a_retried_workflow_ends_at_its_last_run(
        demo_worker: object, client: NatsflowClient, settings: NatsSettings,
        tmp_path: Any) -> None:
    await client.create(_flaky_then_sleep("runs-watch", seconds=1.5))
    await client.wait("runs-watch", timeout=30)
    await client.retry("runs-watch", inputs={"a": {"fail_times": 0}})
    code, out, err = await _cli(settings, "watch", "runs-watch")
    assert code == 0, out + err  # exit 0: it saw the second run complete
    assert "completed" in out


async def test_sse_replays_every_run(demo_worker: object, client: NatsflowClient,
                                     nc: Client, settings: NatsSettings) -> None:
    events = await _failed_then_completed(client, "runs-sse")
    app = create_app(settings, auth=None, nc=nc)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw", timeout=30) as http:
        resp = await http.get("/workflows/runs-sse/events")
    assert resp.status_code == 200, resp.text
    data = [json.loads(line[len("data: "):]) for line in resp.text.splitlines()
            if line.startswith("data: ")]
    assert [Event.model_validate(d) for d in data] == events
