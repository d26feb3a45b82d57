"""One behaviour suite, two worker flavours: ``natsflow.worker.Worker`` and a FastStream
app serving the same handlers through ``natsflow.faststream.TaskRouter``.

FastStream's own practice (one suite, several brokers): every test here runs once per
flavour, against the real nats-server and an in-process orchestrator; the workflow's
status is what each test reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from faststream import FastStream
from faststream.nats import NatsBroker
from helpers import read_dead_letters, wait_for
from nats.aio.client import Client
from pydantic import BaseModel

from contracts.models import StepState, WorkflowState, WorkflowStatus
from natsflow.client import NatsflowClient
from natsflow.faststream import TaskRouter
from natsflow.worker import TaskContext, TaskError, Worker
from natsflow.worker._handler import HandlerFn
from transport.connect import NatsSettings
from transport.streams import TASK_ACK_WAIT

FLAVOURS = ["worker", "faststream"]
#: Seconds a stopping flavour lets running handlers finish before cancelling them.
GRACE = 0.3


@dataclass
class Flavour:
    """Serves handlers the way one flavour does, on the test's deployment."""

    name: str
    settings: NatsSettings
    nc: Client

    @contextlib.asynccontextmanager
    async def serving(self, handlers: dict[str, HandlerFn], *, max_deliveries: int = 10,
                      ack_wait: float = TASK_ACK_WAIT) -> AsyncIterator[None]:
        """Serve ``handlers`` while the block runs; on exit stop as the flavour stops."""
        if self.name == "worker":
            worker = Worker(concurrency=8, stop_grace=GRACE, ack_wait=ack_wait,
                            max_deliveries=max_deliveries)
            for task_type, fn in handlers.items():
                worker.task(task_type)(fn)
            async with worker.running(self.settings, nc=self.nc):
                yield
            return
        tasks = TaskRouter(prefix=self.settings.prefix, max_workers=8, ack_wait=ack_wait,
                           max_deliveries=max_deliveries)
        for task_type, fn in handlers.items():
            tasks.task(task_type)(fn)
        broker = NatsBroker(self.settings.servers, graceful_timeout=GRACE)
        broker.include_router(tasks)
        async with FastStream(broker, on_startup=[tasks.declare]):
            yield


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest, engine: object, settings: NatsSettings,
            nc: Client) -> Flavour:
    """Each flavour in turn, with an orchestrator running."""
    return Flavour(request.param, settings, nc)


@pytest.mark.parametrize("make", [Worker, TaskRouter], ids=FLAVOURS)
def test_registration_is_checked_alike(make: type[Worker] | type[TaskRouter]) -> None:
    registrar = make()

    @registrar.task("t.one")
    async def one(ctx: TaskContext, data: dict[str, Any]) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        registrar.task("t.one")
    with pytest.raises(ValueError, match="invalid task type"):
        registrar.task("bad type")
    with pytest.raises(ValueError, match="reserved"):
        registrar.task("natsflow.http")

    def not_async(ctx: TaskContext, data: dict[str, Any]) -> None: ...

    with pytest.raises(TypeError, match="async"):
        registrar.task("t.two")(not_async)  # type: ignore[type-var]

    class Local(BaseModel):
        x: int

    async def local_model(ctx: TaskContext, data: Local) -> None: ...

    with pytest.raises(TypeError, match="cannot resolve"):
        registrar.task("t.three")(local_model)
    assert registrar.task_types == ["t.one"]  # nothing half-registered
    for bad in ({"max_deliveries": 0}, {"ack_wait": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        Worker(concurrency=0)
    with pytest.raises(ValueError, match="max_workers"):
        TaskRouter(max_workers=0)


class GreetIn(BaseModel):
    """Input of t.greet."""

    name: str
    times: int = 1


class GreetOut(BaseModel):
    """Output of t.greet."""

    greeting: str


@dataclass
class Calls:
    """What the handlers saw, from inside."""

    attempts: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    cancelled: list[bool] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def saw(self, ctx: TaskContext) -> None:
        self.attempts.append(ctx.attempt)
        self.keys.append(ctx.idempotency_key)
        self.started.set()


def _workflow(task: str, data: dict[str, Any], **step: Any) -> dict[str, Any]:
    wid = "wf" + uuid.uuid4().hex[:10]
    return {"name": "flavours", "id": wid,
            "steps": [{"id": "s", "task": task, "input": data, **step}]}


async def _finished(client: NatsflowClient, config: dict[str, Any]) -> WorkflowStatus:
    status = (await client.wait(config["id"], timeout=60)).status
    assert status is not None
    return status


async def _status(client: NatsflowClient, wid: str) -> WorkflowStatus:
    status = (await client.get(wid)).status
    assert status is not None
    return status


async def test_typed_input_and_output(flavour: Flavour, client: NatsflowClient) -> None:
    calls = Calls()

    async def greet(ctx: TaskContext, data: GreetIn) -> GreetOut:
        calls.saw(ctx)
        return GreetOut(greeting=" ".join([f"hello {data.name}"] * data.times))

    async with flavour.serving({"t.greet": greet}):
        ok = _workflow("t.greet", {"name": "ada", "times": 2})
        await client.create(ok)
        bad = _workflow("t.greet", {"name": "ada", "times": "x"})
        await client.create(bad)
        done, refused = await _finished(client, ok), await _finished(client, bad)
    assert done.state == WorkflowState.COMPLETED, done.error
    assert done.step("s").output == {"greeting": "hello ada hello ada"}
    assert refused.state == WorkflowState.FAILED
    error = refused.step("s").error
    assert error is not None and (error.code, error.field) == ("invalid-input", "times")
    assert calls.attempts == [1]  # the invalid input never reached the handler


async def test_a_non_retryable_task_error_fails_the_step_at_once(
        flavour: Flavour, client: NatsflowClient) -> None:
    calls = Calls()

    async def refuse(ctx: TaskContext, data: dict[str, Any]) -> None:
        calls.saw(ctx)
        raise TaskError("card-declined", "no money", retryable=False, details={"left": 0})

    async with flavour.serving({"t.refuse": refuse}):
        config = _workflow("t.refuse", {}, retry={"max_attempts": 3, "initial_interval": 0})
        await client.create(config)
        status = await _finished(client, config)
    assert status.state == WorkflowState.FAILED
    step = status.step("s")
    assert step.error is not None
    assert (step.error.code, step.error.retryable) == ("card-declined", False)
    assert step.error.details == {"left": 0}
    assert step.attempts == 1 and calls.attempts == [1]


async def test_a_retryable_task_error_is_retried_per_the_retry_policy(
        flavour: Flavour, client: NatsflowClient) -> None:
    calls = Calls()

    async def busy(ctx: TaskContext, data: dict[str, Any]) -> dict[str, int]:
        calls.saw(ctx)
        if ctx.attempt < data["succeed_on"]:
            raise TaskError("busy", "try again later")
        return {"attempt": ctx.attempt}

    async with flavour.serving({"t.busy": busy}):
        retry = {"max_attempts": 3, "initial_interval": 0.05, "backoff_coefficient": 1}
        recovers = _workflow("t.busy", {"succeed_on": 3}, retry=retry)
        await client.create(recovers)
        recovered = await _finished(client, recovers)
        gives_up = _workflow("t.busy", {"succeed_on": 9}, retry=retry)
        await client.create(gives_up)
        given_up = await _finished(client, gives_up)
    assert recovered.state == WorkflowState.COMPLETED, recovered.error
    assert recovered.step("s").output == {"attempt": 3}
    assert given_up.state == WorkflowState.FAILED
    error = given_up.step("s").error
    assert error is not None and (error.code, error.retryable) == ("busy", True)
    assert given_up.step("s").attempts == 3
    assert calls.attempts == [1, 2, 3, 1, 2, 3]
    # Each attempt has its own key: a retry is new work, a redelivery is not.
    assert len(set(calls.keys)) == 6


async def test_progress_and_heartbeats_reach_the_workflow_status(
        flavour: Flavour, client: NatsflowClient) -> None:
    calls = Calls()

    async def long(ctx: TaskContext, data: dict[str, Any]) -> str:
        calls.saw(ctx)
        await ctx.progress({"done": 1, "of": 2})
        await calls.release.wait()  # silent: only the flavour's heartbeats speak for it
        return ctx.step_id

    # JetStream must hear an in-progress ack every second or it hands a task on (both
    # steps); the orchestrator a sign of life every 0.6 s or the attempt dies ("alive").
    async with flavour.serving({"t.long": long}, ack_wait=1.0):
        wid = "wf" + uuid.uuid4().hex[:10]
        config = {"name": "flavours", "id": wid, "steps": [
            {"id": "alive", "task": "t.long", "input": {}, "heartbeat_timeout": 0.6},
            {"id": "acked", "task": "t.long", "input": {}}]}
        await client.create(config)
        await wait_for(lambda: len(calls.keys) == 2, what="both steps to start")
        first_beat = None

        async def beating() -> bool:
            nonlocal first_beat
            step = (await _status(client, wid)).step("alive")
            if step.progress == {"done": 1, "of": 2} and step.heartbeat_at is not None:
                first_beat = first_beat or step.heartbeat_at
                return step.heartbeat_at > first_beat
            return False

        for _ in range(300):  # until a heartbeat newer than the first one arrives
            if await beating():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no progress or heartbeat reached the status")
        assert (await _status(client, wid)).step("acked").progress == {"done": 1, "of": 2}
        await asyncio.sleep(2.5)  # over twice both limits, silent but alive
        running = await _status(client, wid)
        for step_id in ("alive", "acked"):
            step = running.step(step_id)
            assert (step.state, step.attempts) == (StepState.RUNNING, 1), step
        calls.release.set()
        status = await _finished(client, config)
    assert status.state == WorkflowState.COMPLETED, status.error
    assert [status.step(s).output for s in ("alive", "acked")] == ["alive", "acked"]
    assert calls.attempts == [1, 1]  # neither redelivered nor retried


async def test_stopping_the_workflow_cancels_the_running_handler(
        flavour: Flavour, client: NatsflowClient) -> None:
    calls = Calls()

    async def forever(ctx: TaskContext, data: dict[str, Any]) -> None:
        calls.saw(ctx)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            calls.cancelled.append(ctx.cancelled)
            raise

    async with flavour.serving({"t.forever": forever}):
        config = _workflow("t.forever", {})
        await client.create(config)
        await asyncio.wait_for(calls.started.wait(), 10)
        await client.stop(config["id"])
        status = await _finished(client, config)
        await wait_for(lambda: bool(calls.cancelled), what="the handler to be cancelled")
    assert status.state == WorkflowState.STOPPED
    assert calls.cancelled == [True]  # by the cancel notice, not by a shutdown


async def test_a_redelivered_task_runs_again_under_its_idempotency_key(
        flavour: Flavour, client: NatsflowClient) -> None:
    calls = Calls()
    effects: dict[str, int] = {}

    async def charge(ctx: TaskContext, data: dict[str, Any]) -> dict[str, int]:
        calls.saw(ctx)
        # The side effect, deduplicated by the key, as docs/workers.md asks.
        effects.setdefault(ctx.idempotency_key, len(effects) + 1)
        if len(calls.keys) == 1:
            await asyncio.sleep(60)  # this worker is stopped meanwhile
        return {"charge": effects[ctx.idempotency_key]}

    config = _workflow("t.charge", {})
    async with flavour.serving({"t.charge": charge}):
        await client.create(config)
        await asyncio.wait_for(calls.started.wait(), 10)
    # Stopped mid-task: the task is handed back, and the next worker gets it at once.
    async with flavour.serving({"t.charge": charge}):
        status = await _finished(client, config)
    assert status.state == WorkflowState.COMPLETED, status.error
    key = f"{config['id']}:s:1"
    assert calls.keys == [key, key]  # one attempt, run once per delivery
    assert status.step("s").attempts == 1
    assert status.step("s").output == {"charge": 1} and effects == {key: 1}


async def test_a_task_delivered_too_often_is_dead_lettered_not_run(
        flavour: Flavour, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    calls = Calls()

    async def hangs(ctx: TaskContext, data: dict[str, Any]) -> None:
        calls.saw(ctx)
        await asyncio.sleep(60)

    config = _workflow("t.hangs", {}, retry={"max_attempts": 3, "initial_interval": 0})
    async with flavour.serving({"t.hangs": hangs}, max_deliveries=1):
        await client.create(config)
        await asyncio.wait_for(calls.started.wait(), 10)
    async with flavour.serving({"t.hangs": hangs}, max_deliveries=1):
        status = await _finished(client, config)
        ((subject, letter),) = await read_dead_letters(nc, settings.subjects, count=1)
    assert status.state == WorkflowState.FAILED
    step = status.step("s")
    assert step.error is not None
    assert (step.error.code, step.error.retryable) == ("too-many-deliveries", False)
    assert step.attempts == 1  # given up, not retried
    assert calls.attempts == [1]  # the second delivery was not run
    assert subject == settings.subjects.dlq("too-many-deliveries")
    assert letter.reason.code == "too-many-deliveries" and letter.deliveries == 2


async def test_a_malformed_task_is_dead_lettered_and_serving_goes_on(
        flavour: Flavour, client: NatsflowClient, nc: Client,
        settings: NatsSettings) -> None:
    calls = Calls()

    async def greet(ctx: TaskContext, data: GreetIn) -> GreetOut:
        calls.saw(ctx)
        return GreetOut(greeting=f"hello {data.name}")

    s = settings.subjects
    async with flavour.serving({"t.greet": greet}):
        await nc.jetstream().publish(s.task("t.greet"), b'{"not": "a task"}')
        ((subject, letter),) = await read_dead_letters(nc, s, count=1)
        config = _workflow("t.greet", {"name": "bob"})
        await client.create(config)
        status = await _finished(client, config)
        for _ in range(100):  # the ack follows the result, so it may come just after
            left = (await nc.jetstream().stream_info(s.tasks_stream)).state.messages
            if left == 0:
                break
            await asyncio.sleep(0.05)
    assert subject == s.dlq("malformed-task")
    assert (letter.reason.code, letter.data, letter.deliveries) == (
        "malformed-task", '{"not": "a task"}', 1)
    assert status.state == WorkflowState.COMPLETED, status.error
    assert calls.attempts == [1]
    assert left == 0  # the malformed one was terminated, the task acked
