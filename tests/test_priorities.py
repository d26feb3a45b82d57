"""Priorities (docs/priorities.md): the field, its inheritance, and the hand-out order,
against a real nats-server and orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import wait_for
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts.errors import ErrorInfo, NotFound, ValidationFailed, validation_failed
from contracts.headers import ERROR_CODE_HEADER
from contracts.models import WorkflowConfig, WorkflowState
from contracts.priorities import DEFAULT_PRIORITY, LEVELS
from contracts.subjects import Subjects
from natsflow.client import NatsflowClient
from natsflow.worker import TaskContext, Worker
from natsflow.worker._priority import HandOut
from transport.connect import NatsSettings

# -- the policy, pure ---------------------------------------------------------------


def _hand_out(policy: HandOut, levels: dict[int, int], n: int) -> list[int]:
    """The levels of the first ``n`` tasks handed out from queues of ``levels`` tasks."""
    left = dict(levels)
    for level in left:
        policy.rang(level)
    out: list[int] = []
    while len(out) < n:
        choice = policy.next()
        assert choice is not None
        level, most = choice
        take = min(most, left[level], n - len(out))
        assert take >= 1
        left[level] -= take
        out += [level] * take
        if left[level] == 0:
            policy.emptied(level)
        policy.took(level, take)
    return out


def test_the_most_urgent_level_goes_first() -> None:
    assert _hand_out(HandOut(every=100), {1: 5, 3: 5, 5: 5}, 15) == [5] * 5 + [3] * 5 + [1] * 5


def test_a_waiting_level_gets_one_task_after_every_limit_above_it() -> None:
    order = _hand_out(HandOut(every=3), {5: 100, 1: 100}, 16)
    assert order == [5, 5, 5, 1] * 4
    order = _hand_out(HandOut(every=4), {5: 100, 3: 100, 2: 100, 1: 100}, 21)
    assert order == [5, 5, 5, 5, 3, 2, 1] * 3


def test_every_waiting_level_progresses_under_a_steady_urgent_stream() -> None:
    every = 4
    order = _hand_out(HandOut(every=every), {5: 1000, 3: 1000, 2: 1000, 1: 1000}, 400)
    for level in (3, 2, 1):
        # Never more than `every` tasks of more urgent levels while it waits, plus one
        # per more urgent level starving with it.
        above = 0
        for got in order:
            above = 0 if got == level else above + (got > level)
            assert above <= every + sum(1 for other in (3, 2) if other > level), (level, order)
        assert order.count(level) >= 400 // (every + 3) - 1
    assert order.count(5) > order.count(3) >= order.count(2) >= order.count(1) > 0


def test_the_limit_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="starvation"):
        HandOut(every=0)
    with pytest.raises(ValueError, match="starvation_limit"):
        Worker(starvation_limit=0)


# -- the field ------------------------------------------------------------------------


def _config(**kw: Any) -> dict[str, Any]:
    return {"name": "p", "steps": [{"id": "a", "task": "prio.a"}]} | kw


@pytest.mark.parametrize("bad", [0, 6, "high", 2.5, True])
def test_a_priority_out_of_range_is_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(ValidationError) as exc:
        WorkflowConfig.model_validate(_config(priority=bad))
    err = validation_failed(exc.value)
    assert err.field == "priority", err.message


def test_a_config_without_priority_reads_and_writes_as_before() -> None:
    config = WorkflowConfig.model_validate(_config())
    assert config.priority is None and "priority" not in config.model_dump_json()
    assert WorkflowConfig.model_validate(_config(priority=5)).priority == 5


def _level_of(s: Subjects, subject: str) -> int:
    """The priority of a task subject, as docs/priorities.md tells other languages."""
    head = f"{s.prefix}.task."
    assert subject.startswith(head), subject
    first = subject[len(head):].split(".")[0]
    return int(first.removeprefix("priority=")) if first.startswith("priority=") \
        else DEFAULT_PRIORITY


def test_the_subjects_and_consumers_of_each_level() -> None:
    s = Subjects("natsflow")
    # The default level is where every task always was: old workers still get it.
    assert s.task("email.send", DEFAULT_PRIORITY) == s.task("email.send") == \
        "natsflow.task.email.send"
    assert s.worker_consumer("email.send", None) == "worker-email_send"
    assert s.task("email.send", 5) == "natsflow.task.priority=5.email.send"
    assert s.worker_consumer("email.send", 5) == "worker5-email_send"
    for level in LEVELS:
        assert _level_of(s, s.task("email.send", level)) == level
    # No level's subject or consumer is another task type's.
    types = ("a", "a.b", "a-5", "5-a", "priority", "priority-5.a")
    names = {s.worker_consumer(t, lv) for t in types for lv in LEVELS}
    assert len(names) == len(types) * len(LEVELS)
    subjects = {s.task(t, lv) for t in types for lv in LEVELS}
    assert len(subjects) == len(types) * len(LEVELS)


# -- against a real server ---------------------------------------------------------------


class _Starts:
    """What a worker started, in order: (workflow id, monotonic time)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def ids(self) -> list[str]:
        return [wid for wid, _ in self.seen]


def _worker(starts: _Starts, *, seconds: float, starvation_limit: int = 10,
            task_types: tuple[str, ...] = ("prio.work",)) -> Worker:
    worker = Worker(concurrency=1, stop_grace=0.5, starvation_limit=starvation_limit)
    # One slot shared by the task types: a type with nothing to do must not keep it.

    async def work(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        starts.seen.append((ctx.workflow_id, time.monotonic()))
        await asyncio.sleep(seconds)
        return {}

    for task_type in task_types:
        worker.task(task_type)(work)
    return worker


def _one_task(wid: str, priority: int | None) -> dict[str, Any]:
    return {"name": "prio", "id": wid, "steps": [{"id": "w", "task": "prio.work"}],
            **({} if priority is None else {"priority": priority})}


@contextlib.asynccontextmanager
async def _published(nc: Client, subject: str) -> AsyncIterator[list[tuple[str, float]]]:
    """(subject, monotonic time) of every message published on ``subject`` meanwhile."""
    seen: list[tuple[str, float]] = []

    async def record(msg: Msg) -> None:
        seen.append((msg.subject, time.monotonic()))

    sub = await nc.subscribe(subject, cb=record)
    await nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def test_an_urgent_task_submitted_last_is_taken_next(
        engine: object, nc: Client, client: NatsflowClient, settings: NatsSettings) -> None:
    """One worker, busy, 200 low-priority tasks queued: the urgent one is the next it
    starts once it was dispatched (bench/priority.py does the same with 10,000)."""
    s = settings.subjects
    starts = _Starts()
    task = 0.02
    async with _worker(starts, seconds=task).running(settings, nc=nc), \
            _published(nc, s.task("prio.work", 5)) as urgent:
        for i in range(200):
            await client.submit(_one_task(f"low{i}", 1))
        await wait_for(lambda: len(starts.seen) >= 5, what="the backlog to start")
        await client.submit(_one_task("urgent", 5))
        await wait_for(lambda: "urgent" in starts.ids(), timeout=20, what="the urgent task")
        published = urgent[0][1]
        at = starts.ids().index("urgent")
        started = starts.seen[at][1]
        # Started after the task running when it came ended: no low task in between.
        jumped = [wid for wid, t in starts.seen[:at] if t > published]
        assert len(jumped) <= 1, jumped
        assert started - published < 10 * task + 0.5
        assert at < 100, f"the urgent task started {at}th of 201: the backlog was gone"


async def test_less_urgent_tasks_progress_under_a_steady_urgent_stream(
        engine: object, nc: Client, client: NatsflowClient, settings: NatsSettings) -> None:
    """The starvation limit, end to end: 40 urgent and 8 low tasks queued, one worker
    with a limit of 3: a low task at least once every 4 or 5 starts until none is left."""
    s = settings.subjects
    for i in range(40):
        await client.submit(_one_task(f"hi{i:02d}", 5))
    for i in range(8):
        await client.submit(_one_task(f"lo{i}", 1))

    async def queued() -> int:
        return (await nc.jetstream().stream_info(s.tasks_stream)).state.messages

    deadline = time.monotonic() + 15
    while await queued() < 48:
        assert time.monotonic() < deadline, "the tasks were not all dispatched"
        await asyncio.sleep(0.05)
    starts = _Starts()
    async with _worker(starts, seconds=0.005, starvation_limit=3).running(settings, nc=nc):
        await wait_for(lambda: len(starts.seen) >= 48, timeout=30, what="every task")
    order = ["lo" if wid.startswith("lo") else "hi" for wid in starts.ids()]
    last_low = max(i for i, level in enumerate(order) if level == "lo")
    run = longest = 0
    for level in order[:last_low]:
        run = run + 1 if level == "hi" else 0
        longest = max(longest, run)
    assert longest <= 3 + 1, order  # one of slack: the doorbells ring one by one at start
    assert last_low < 8 * 5 + 2, order  # the low tasks did not wait for the urgent ones
    assert order[:8].count("hi") >= 5, order  # and the urgent ones still went first


async def test_steps_map_items_and_children_inherit_the_priority(
        engine: object, nc: Client, client: NatsflowClient, settings: NatsSettings) -> None:
    s = settings.subjects
    await client.put_definition("kid", {"name": "kid", "steps": [{"id": "k", "task": "prio.b"}]})
    await client.put_definition("kid4", {"name": "kid4", "priority": 4,
                                         "steps": [{"id": "k", "task": "prio.b"}]})
    parent = {"name": "parent", "input": {"xs": [1, 2, 3]}, "steps": [
        {"id": "a", "task": "prio.a"},
        {"id": "m", "kind": "map", "items": "input.xs", "step": {"task": "prio.a"}},
        {"id": "c", "kind": "workflow", "definition": "kid"},
        {"id": "mc", "kind": "map", "items": "input.xs",
         "step": {"kind": "workflow", "definition": "kid"}},
    ]}
    starts = _Starts()
    async with _published(nc, s.all_tasks) as seen, \
            _worker(starts, seconds=0, task_types=("prio.a", "prio.b")).running(
                settings, nc=nc):
        urgent = await client.create({**parent, "id": "urgent", "priority": 5})
        plain = await client.create({**parent, "id": "plain"})
        run = await client.run("kid", workflow_id="run1", priority=1)
        own = await client.run("kid4", workflow_id="own4")
        for wid in (urgent.id, plain.id, run.id, own.id):
            done = (await client.wait(wid, timeout=20)).status
            assert done is not None and done.state == WorkflowState.COMPLETED, (wid, done)
    # 1 step + 3 items + 1 child's step + 3 map children's steps, per parent.
    by_level: dict[int, int] = {}
    for subject, _ in seen:
        level = _level_of(s, subject)
        by_level[level] = by_level.get(level, 0) + 1
    assert by_level == {5: 8, DEFAULT_PRIORITY: 8, 1: 1, 4: 1}, by_level
    status = (await client.get(urgent.id)).status
    assert status is not None
    child_id = next(step.child_id for step in status.steps if step.id == "c")
    child = (await client.get(child_id or "")).status
    assert child is not None and (status.priority, child.priority) == (5, 5)


async def test_a_priority_out_of_range_is_refused_over_nats(
        client: NatsflowClient, nc: Client, settings: NatsSettings, engine: object) -> None:
    with pytest.raises(ValidationFailed) as exc:
        await client.create(_config(priority=9))
    assert exc.value.field == "priority"
    # A publisher that is not our client is answered the same by the orchestrator.
    await client.put_definition("d", _config(name="d"))
    for body, field in (({"config": _config(priority=0)}, "config.priority"),
                        ({"definition": "d", "priority": 6}, "priority"),
                        ({"config": _config(), "priority": 5}, "config")):
        msg = await nc.request(settings.subjects.api("workflow.create"),
                               json.dumps(body).encode(), timeout=10)
        assert msg.headers and msg.headers.get(ERROR_CODE_HEADER) == "validation-failed"
        info = ErrorInfo.model_validate_json(msg.data)
        assert info.field == field, info
    reply = await client.run("d", workflow_id="at5", priority=5, start=False)
    assert reply.status is not None and reply.status.priority == 5


async def test_a_batch_runs_its_members_at_its_template_s_priority(
        engine: object, nc: Client, client: NatsflowClient, settings: NatsSettings) -> None:
    batch = await client.create_batch({"workflow": {"name": "b", "priority": 2, "steps": [
        {"id": "a", "task": "prio.a"}]}, "inputs": [{}, {}]})
    assert batch.status is not None
    members = [m.workflow_id for m in batch.status.members]
    assert len(members) == 2
    for wid in members:
        for _ in range(100):  # a member is created once the batch starts it
            with contextlib.suppress(NotFound):
                status = (await client.get(wid)).status
                break
            await asyncio.sleep(0.05)
        assert status is not None and status.priority == 2


# -- the doc's example ------------------------------------------------------------------

_DOC = (Path(__file__).parent.parent / "docs" / "priorities.md").read_text()


async def test_the_doc_example_runs_at_its_priority(
        demo_worker: object, nc: Client, client: NatsflowClient,
        settings: NatsSettings) -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", _DOC, flags=re.S)
    config = WorkflowConfig.model_validate(yaml.safe_load(block))
    assert config.priority == 1
    async with _published(nc, settings.subjects.all_tasks) as seen:
        reply = await client.create(config.model_copy(update={"id": "doc1"}))
        done = (await client.wait(reply.id, timeout=20)).status
    assert done is not None and done.state == WorkflowState.COMPLETED
    assert done.priority == 1
    assert len(seen) == 4 and {_level_of(settings.subjects, s) for s, _ in seen} == {1}


async def test_the_faststream_flavour_serves_every_level(
        engine: object, client: NatsflowClient, settings: NatsSettings) -> None:
    from faststream import FastStream
    from faststream.nats import NatsBroker

    from natsflow.faststream import TaskRouter

    tasks = TaskRouter(prefix=settings.prefix)

    @tasks.task("prio.a")
    async def echo(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    broker = NatsBroker(settings.servers)
    broker.include_router(tasks)
    async with FastStream(broker, on_startup=[tasks.declare]):
        for level in (None, *LEVELS):
            reply = await client.create(_config(id=f"fs{level}", priority=level)
                                        if level else _config(id="fsnone"))
            done = (await client.wait(reply.id, timeout=20)).status
            assert done is not None and done.state == WorkflowState.COMPLETED, level


async def test_over_http_a_bad_priority_is_a_400_naming_the_field_and_a_good_one_runs(
        engine: object, nc: Client, client: NatsflowClient, settings: NatsSettings) -> None:
    import httpx

    from gateway import create_app

    app = create_app(settings, auth=None, nc=nc, request_timeout=5.0)
    await client.put_definition("g", _config(name="g"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as http:
        for body in (_config(priority=7), {"definition": "g", "priority": "urgent"}):
            resp = await http.post("/workflows", json=body)
            assert resp.status_code == 400, resp.text
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.json()["field"] == "priority", resp.json()
        resp = await http.post("/workflows", json={"definition": "g", "priority": 4,
                                                   "id": "http4", "start": False})
        assert resp.status_code == 202, resp.text
        assert resp.json()["priority"] == 4, resp.json()
