"""Schedules on a real nats-server: each overlap policy, catch-up after downtime,
backfill, trigger/get/pause, namespaces, and bad input over HTTP naming the field.

The overlap tests backfill three past fire times of a schedule whose workflow waits for a
signal, so "the previous run is still going" is in the test's hands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from helpers import read_events
from nats.aio.client import Client

from contracts.errors import (
    NamespaceForbidden,
    ScheduleNotFound,
    ValidationFailed,
    WorkflowNotFound,
)
from contracts.models import EventType, WorkflowState
from contracts.schedules import (
    FIRE_TIME_LABEL,
    SCHEDULE_LABEL,
    RunOutcome,
    fire_time_token,
    run_id,
)
from gateway import create_app
from natsflow.client import NatsflowClient
from natsflow.schedule_client import ScheduleClient
from orchestrator import Orchestrator, letters, runtime
from transport.connect import NatsSettings

pytestmark = pytest.mark.timeout(60)

HELD = {"name": "held", "steps": [{"id": "w", "kind": "wait", "signal": "go"}]}
QUICK = {"name": "quick", "steps": [{"id": "t", "kind": "transform",
                                     "output": "${input.n}"}], "input": {"n": 1}}


@pytest.fixture
def schedules(engine: object, client: NatsflowClient) -> ScheduleClient:
    return ScheduleClient(client)


async def until(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0,
                what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def state(client: NatsflowClient, workflow_id: str) -> WorkflowState | None:
    try:
        reply = await client.get(workflow_id)
    except WorkflowNotFound:
        return None
    return reply.status.state if reply.status else None


def past_minutes(n: int) -> list[datetime]:
    """``n`` whole minutes of the past hour, oldest first."""
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    return [base + timedelta(minutes=i) for i in range(n)]


async def three_held_runs(schedules: ScheduleClient, overlap: str) -> list[str]:
    """A schedule of HELD with ``overlap``, three past fire times backfilled at once.

    The schedule ends at the third: a live fire time (the next whole minute, with
    ``every: 60``) coming while the test runs would be a fourth overlapping run, which
    the policy rightly applies to the others (a live minute stopped the third run under
    cancel_other), so nothing the test expects would hold.
    """
    name = overlap.replace("_", "-")
    times = past_minutes(3)
    created = await schedules.create({"name": name, "workflow": {"config": HELD},
                                      "spec": {"every": 60, "end": times[-1].isoformat()},
                                      "overlap": overlap})
    assert created.next_fire_times == []
    reply = await schedules.backfill(name, times[0], times[-1])
    assert reply.fire_times == times
    return [run_id("default", name, t) for t in times]


async def states(client: NatsflowClient, ids: list[str]) -> list[WorkflowState | None]:
    return [await state(client, i) for i in ids]


async def settled(client: NatsflowClient, ids: list[str],
                  want: list[WorkflowState | None], *, hold: float = 0.7,
                  timeout: float = 10.0) -> None:
    """``ids`` reach ``want`` and are still there ``hold`` seconds later."""
    async def reached() -> bool:
        return await states(client, ids) == want

    await until(reached, timeout=timeout, what=f"{ids} to be {want}")
    await asyncio.sleep(hold)
    assert await states(client, ids) == want


R, C, S = WorkflowState.RUNNING, WorkflowState.COMPLETED, WorkflowState.STOPPED


async def test_overlap_skip(schedules: ScheduleClient, client: NatsflowClient) -> None:
    ids = await three_held_runs(schedules, "skip")
    await settled(client, ids, [R, None, None])
    info = await schedules.get("skip")
    assert [(r.workflow_id, r.outcome) for r in reversed(info.recent)] == [
        (ids[0], RunOutcome.STARTED), (ids[1], RunOutcome.SKIPPED),
        (ids[2], RunOutcome.SKIPPED)]
    assert info.recent[-1].state is R
    await client.signal(ids[0], "go")
    await settled(client, ids, [C, None, None])


async def test_overlap_buffer_one(schedules: ScheduleClient, client: NatsflowClient) -> None:
    ids = await three_held_runs(schedules, "buffer_one")
    await settled(client, ids, [R, None, None])
    await client.signal(ids[0], "go")
    await settled(client, ids, [C, R, None])
    await client.signal(ids[1], "go")
    await settled(client, ids, [C, C, None])


async def test_overlap_buffer_all(schedules: ScheduleClient, client: NatsflowClient) -> None:
    ids = await three_held_runs(schedules, "buffer_all")
    await settled(client, ids, [R, None, None])
    assert len((await schedules.get("buffer-all")).buffered) == 2
    await client.signal(ids[0], "go")
    await settled(client, ids, [C, R, None])
    await client.signal(ids[1], "go")
    await settled(client, ids, [C, C, R])
    await client.signal(ids[2], "go")
    await settled(client, ids, [C, C, C])


async def test_overlap_cancel_other(schedules: ScheduleClient,
                                    client: NatsflowClient) -> None:
    # The first starts; the second stops it and waits, the third takes the second's place.
    ids = await three_held_runs(schedules, "cancel_other")
    await settled(client, ids, [S, None, R])


class WritesAway:
    """Crash points under which every workflow write fails (its bucket away, say) until
    ``back``: a create made meanwhile is persisted and retried, and lands only later."""

    def __init__(self, *, most: int) -> None:
        self.back = False
        self.failed = 0
        self.most = most

    def reach(self, point: str) -> None:
        if point == "before-save" and not self.back:
            self.failed += 1
            self.back = self.failed >= self.most  # a bound, should the test lose track
            raise ConnectionError("simulated: the workflows bucket is away")


def processed(orch: Orchestrator) -> float:
    """Inbox messages the orchestrator's engine processed (failed ones not counted)."""
    return sum(s.value for m in orch.metrics.registry.collect() for s in m.samples
               if s.name == "natsflow_inbox_processed_total")


async def test_overlap_cancel_other_stops_a_run_whose_create_lands_after_the_stop(
        settings: NatsSettings, client: NatsflowClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The first run's create keeps failing past the API's wait for it, so the stop the
    # second fire time sends reaches the engine first and finds no workflow. Once the
    # create lands, the first run must be stopped all the same, and the third start.
    for module in (letters, runtime):
        monkeypatch.setattr(module, "MAX_DELIVERIES", 1000)  # the create is never given up
    writes = WritesAway(most=100)
    # One message at a time: the stop is never taken with the failing create.
    async with Orchestrator(settings, stop_grace=2.0, crash_points=writes,
                            fetch_batch=1) as orch:
        assert orch.api is not None
        orch.api.command_timeout = 1.0  # "accepted", not created, after a second
        ids = await three_held_runs(ScheduleClient(client), "cancel_other")

        async def stop_answered() -> bool:
            return processed(orch) >= 1  # the one input a failing write lets through

        await until(stop_answered, timeout=30, what="the stop to find no workflow yet")
        assert not writes.back and await states(client, ids) == [None, None, None]
        writes.back = True
        await settled(client, ids, [S, None, R], timeout=30)


async def test_overlap_terminate_other(schedules: ScheduleClient,
                                       client: NatsflowClient) -> None:
    ids = await three_held_runs(schedules, "terminate_other")
    await settled(client, ids, [S, S, R])


async def test_overlap_allow_all(schedules: ScheduleClient, client: NatsflowClient) -> None:
    ids = await three_held_runs(schedules, "allow_all")
    await settled(client, ids, [R, R, R])


async def test_backfill_runs_carry_schedule_and_fire_time_in_labels_and_events(
        schedules: ScheduleClient, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    await schedules.create({"name": "nightly", "workflow": {"config": QUICK},
                            "spec": {"cron": "*/10 * * * *"}, "overlap": "allow_all",
                            "labels": {"team": "data"}})
    end = datetime.now(UTC) - timedelta(hours=2)
    reply = await schedules.backfill("nightly", end - timedelta(minutes=30), end)
    assert 3 <= len(reply.fire_times) <= 4
    ids = [run_id("default", "nightly", t) for t in reply.fire_times]

    async def done() -> bool:
        return await states(client, ids) == [C] * len(ids)

    await until(done, what="backfilled runs")
    first = await client.get(ids[0])
    assert first.status is not None
    assert first.status.labels == {"team": "data", SCHEDULE_LABEL: "nightly",
                                   FIRE_TIME_LABEL: reply.fire_times[0].isoformat()
                                   .replace("+00:00", "Z")}
    created = await read_events(nc, settings.subjects, ids[0], "workflow.created",
                                terminals=None, count=1)
    assert created[0].type is EventType.WORKFLOW_CREATED
    assert created[0].data["schedule"] == "nightly"
    assert created[0].data["fire_time"].startswith(reply.fire_times[0].strftime("%Y-%m-%dT"))
    with pytest.raises(ValidationFailed) as too_many:
        await schedules.backfill("nightly", end - timedelta(days=30), end)
    assert too_many.value.field == "end"


async def test_trigger_get_pause_unpause_delete(schedules: ScheduleClient,
                                                client: NatsflowClient) -> None:
    created = await schedules.create({"name": "yearly", "workflow": {"config": QUICK},
                                      "spec": {"cron": "0 0 1 1 *",
                                               "timezone": "Europe/Berlin"}})
    assert created.created
    assert [t.month for t in created.next_fire_times] == [12] * 5  # 23:00 UTC, 31 Dec
    again = await schedules.create({"name": "yearly", "workflow": {"config": QUICK},
                                    "spec": {"cron": "0 0 1 1 *",
                                             "timezone": "Europe/Berlin"}})
    assert not again.created
    fired = await schedules.trigger("yearly")
    assert fired.workflow_id == f"yearly-{fire_time_token(fired.fire_time)}"

    async def shown_completed() -> bool:
        info = await schedules.get("yearly")
        return [(r.workflow_id, r.state) for r in info.recent] == [(fired.workflow_id, C)]

    await until(shown_completed, what="the triggered run in `get`")
    paused = await schedules.pause("yearly", note="maintenance")
    assert paused.schedule.paused and paused.schedule.note == "maintenance"
    same = await schedules.create({"name": "yearly", "workflow": {"config": QUICK},
                                   "spec": {"cron": "0 0 1 1 *", "timezone": "Europe/Berlin"}})
    assert not same.created and same.schedule.paused  # the same body: still paused
    assert paused.next_fire_times == []
    listed = await schedules.list()
    assert [(s.name, s.paused, s.note) for s in listed.schedules] == [
        ("yearly", True, "maintenance")]
    unpaused = await schedules.unpause("yearly")
    assert not unpaused.schedule.paused and len(unpaused.next_fire_times) == 5
    assert await schedules.delete("yearly")
    assert not await schedules.delete("yearly")
    with pytest.raises(ScheduleNotFound):
        await schedules.get("yearly")


async def test_a_schedule_fires_every_second_once_per_fire_time(
        schedules: ScheduleClient, client: NatsflowClient, settings: NatsSettings) -> None:
    # A second orchestrator beside the fixture's: they share the ticks, no leader.
    second = Orchestrator(settings, stop_grace=2.0)
    await second.start()
    try:
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        end = start + timedelta(seconds=4)
        await schedules.create({"name": "often", "workflow": {"config": QUICK},
                                "spec": {"every": 1, "start": start.isoformat(),
                                         "end": end.isoformat()}, "overlap": "allow_all"})
        ids = [run_id("default", "often", start + timedelta(seconds=i)) for i in range(5)]

        async def done() -> bool:
            return await states(client, ids) == [C] * 5

        await until(done, timeout=20, what="five runs")
        info = await schedules.get("often")
        assert sorted(r.workflow_id for r in info.recent) == ids
        assert info.next_fire_times == []
    finally:
        await second.stop()


async def test_catchup_runs_the_missed_fire_times_inside_the_window_only(
        settings: NatsSettings, client: NatsflowClient) -> None:
    schedules = ScheduleClient(client)
    first = Orchestrator(settings, stop_grace=2.0)
    await first.start()
    await schedules.create({"name": "catchup", "workflow": {"config": QUICK},
                            "spec": {"every": 1}, "overlap": "allow_all",
                            "catchup_window": 2})
    await asyncio.sleep(1.5)
    await first.stop()
    down_from = datetime.now(UTC)
    await asyncio.sleep(4.5)
    back_at = datetime.now(UTC)
    again = Orchestrator(settings, stop_grace=2.0)
    await again.start()
    try:
        async def caught_up() -> bool:
            info = await schedules.get("catchup")
            return any(r.fire_time > back_at for r in info.recent
                       if r.outcome is RunOutcome.STARTED)

        await until(caught_up, what="firing again after the downtime")
        info = await schedules.get("catchup")
        missed = sorted(r.fire_time for r in info.recent if r.outcome is RunOutcome.MISSED)
        started = sorted(r.fire_time for r in info.recent if r.outcome is RunOutcome.STARTED)
        assert info.missed == len(missed) >= 2
        # Missed: during the downtime and older than the window when it ended.
        assert all(down_from - timedelta(seconds=1) < t < back_at - timedelta(seconds=1)
                   for t in missed), (missed, down_from, back_at)
        # Every fire time from the first to the last is accounted for exactly once.
        every = sorted([*missed, *started])
        assert every == [every[0] + timedelta(seconds=i) for i in range(len(every))]
        during = [t for t in started if down_from < t <= back_at]
        assert during, "the fire times inside the window ran"
    finally:
        await again.stop()


async def test_namespaces_apply_to_schedules(schedules: ScheduleClient) -> None:
    body: dict[str, Any] = {"name": "ns", "namespace": "team-a",
                            "workflow": {"config": QUICK}, "spec": {"every": 3600}}
    with pytest.raises(NamespaceForbidden):
        await schedules.create(body, namespaces=["team-b"])
    await schedules.create(body, namespaces=["team-a"])
    with pytest.raises(ScheduleNotFound):
        await schedules.get("ns", namespace="team-a", namespaces=["team-b"])
    assert (await schedules.get("ns", namespace="team-a")).schedule.namespace == "team-a"
    assert (await schedules.list(namespaces=["team-b"])).schedules == []
    assert [s.name for s in (await schedules.list(namespaces=["team-a"])).schedules] == ["ns"]
    fired = await schedules.trigger("ns", namespace="team-a")
    assert fired.workflow_id.startswith("team-a-ns-")


@pytest.fixture
async def http(engine: object, settings: NatsSettings,
               nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


@pytest.fixture
async def bare_http(settings: NatsSettings, nc: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway alone: a body it refuses never reaches NATS."""
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


@pytest.mark.parametrize(("change", "field"), [
    ({"spec": {"cron": "99 * * * *"}}, "spec.cron"),
    ({"spec": {"cron": "* * * * *", "timezone": "Europe/Atlantis"}}, "spec.timezone"),
    ({"spec": {"every": "often"}}, "spec.every"),
    ({"spec": {"every": 60, "jitter": -1}}, "spec.jitter"),
    ({"spec": {}}, "spec.cron"),
    ({"overlap": "sometimes"}, "overlap"),
    ({"catchup_window": "a while"}, "catchup_window"),
    ({"name": "no spaces"}, "name"),
    ({"workflow": {}}, "workflow.definition"),
    ({"surprise": 1}, "surprise"),
])
async def test_bad_input_over_http_is_a_400_naming_the_field(
        bare_http: httpx.AsyncClient, change: dict[str, Any], field: str) -> None:
    body = {"name": "bad", "workflow": {"config": QUICK}, "spec": {"every": 60}, **change}
    r = await bare_http.post("/schedules", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field, r.json()


async def test_the_http_routes(http: httpx.AsyncClient) -> None:
    body = {"name": "web", "workflow": {"config": QUICK}, "spec": {"cron": "0 3 * * *"}}
    r = await http.post("/schedules", json=body)
    assert r.status_code == 201 and r.headers["location"] == "/schedules/web"
    assert (await http.post("/schedules", json=body)).status_code == 200
    other = await http.post("/schedules", json={**body, "spec": {"cron": "0 4 * * *"}})
    assert other.status_code == 409, other.text
    missing = await http.post("/schedules", json={**body, "name": "nodef",
                                                  "workflow": {"definition": "nope"}})
    assert missing.status_code == 404 and missing.json()["code"] == "definition-not-found"
    assert len((await http.get("/schedules/web")).json()["next_fire_times"]) == 5
    assert (await http.get("/schedules")).json()["schedules"][0]["name"] == "web"
    paused = await http.post("/schedules/web/pause", json={"note": "why not"})
    assert paused.status_code == 200 and paused.json()["schedule"]["note"] == "why not"
    assert (await http.post("/schedules/web/unpause")).status_code == 200
    trig = await http.post("/schedules/web/trigger")
    assert trig.status_code == 202 and trig.json()["workflow_id"].startswith("web-")
    back = await http.post("/schedules/web/backfill", json={
        "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"})
    assert back.status_code == 202 and len(back.json()["fire_times"]) == 1
    bad = await http.post("/schedules/web/backfill", json={"start": "2026-01-02T00:00:00Z",
                                                           "end": "2026-01-01T00:00:00Z"})
    assert bad.status_code == 400 and bad.json()["field"] == "end"
    assert (await http.delete("/schedules/web")).status_code == 204
    assert (await http.delete("/schedules/web")).status_code == 404
    assert (await http.get("/schedules/web")).status_code == 404
