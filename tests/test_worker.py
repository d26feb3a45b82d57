"""The worker SDK and the demo worker, against a real nats-server.

The tests play the orchestrator: they publish TaskMessages to the tasks stream and read
results back from the inbox stream, exactly as the orchestrator does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from helpers import RESULT, new_task, results_of, run_one, send
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from contracts.messages import (
    CancelNotice,
    DeadLetter,
    TaskFailed,
    TaskMessage,
    TaskProgress,
    TaskSucceeded,
)
from contracts.subjects import Subjects
from natsflow.embedded import EmbeddedNats
from natsflow.worker import TaskContext, TaskError, Worker
from natsflow.worker._settle import (
    Settlement,
    after_dead_letter,
    after_result,
    after_shutdown,
)
from natsflow.worker._slots import SlotPool
from transport.connect import NatsSettings, connect
from transport.streams import Topology, declare_stream

# -- playing the orchestrator -----------------------------------------------------------


@pytest.fixture
async def js(nc: Client, settings: NatsSettings) -> JetStreamContext:
    """JetStream with the streams the orchestrator would have declared."""
    ctx = nc.jetstream()
    topology = Topology(settings.subjects)
    await declare_stream(ctx, topology.inbox())
    await declare_stream(ctx, topology.dlq())
    return ctx


async def tasks_left(js: JetStreamContext, subjects: Subjects) -> int:
    """Messages still in the tasks (work-queue) stream: unacked or undelivered."""
    info = await js.stream_info(subjects.tasks_stream)
    return int(info.state.messages)


async def all_settled(js: JetStreamContext, subjects: Subjects, *, within: float = 2.0) -> bool:
    """True once every task message is acked or terminated (the ack follows the result)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while await tasks_left(js, subjects) > 0:
        if loop.time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


class GreetIn(BaseModel):
    """Input of t.greet."""

    name: str
    times: int = 1


class GreetOut(BaseModel):
    """Output of t.greet."""

    greeting: str


@pytest.fixture
async def serving(settings: NatsSettings, nc: Client) -> AsyncIterator[Worker]:
    """A worker with handlers for the failure modes, serving on the test connection."""
    worker = Worker(concurrency=8)

    @worker.task("t.greet")
    async def greet(ctx: TaskContext, data: GreetIn) -> GreetOut:
        return GreetOut(greeting=" ".join([f"hello {data.name}"] * data.times))

    @worker.task("t.refuse")
    async def refuse(ctx: TaskContext, data: dict[str, Any]) -> None:
        raise TaskError("card-declined", "no money", retryable=False, details={"left": 0})

    @worker.task("t.crash")
    async def crash(ctx: TaskContext, data: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    async with worker.running(settings, nc=nc):
        yield worker


# -- results ----------------------------------------------------------------------------


async def test_typed_input_and_output(serving: Worker, js: JetStreamContext,
                                      settings: NatsSettings) -> None:
    s = settings.subjects
    result = await run_one(js, s, "t.greet", {"name": "ada", "times": 2})
    assert isinstance(result, TaskSucceeded)
    assert result.output == {"greeting": "hello ada hello ada"}
    assert result.started_at is not None
    assert await all_settled(js, s)  # acked after the result was stored


async def test_task_error_fails_with_its_code(serving: Worker, js: JetStreamContext,
                                              settings: NatsSettings) -> None:
    result = await run_one(js, settings.subjects, "t.refuse", {})
    assert isinstance(result, TaskFailed)
    assert (result.error.code, result.error.retryable) == ("card-declined", False)
    assert result.error.message == "no money"
    assert result.error.details == {"left": 0}


async def test_unexpected_exception_is_a_retryable_worker_error(
        serving: Worker, js: JetStreamContext, settings: NatsSettings) -> None:
    result = await run_one(js, settings.subjects, "t.crash", {})
    assert isinstance(result, TaskFailed)
    assert (result.error.code, result.error.retryable) == ("worker-error", True)
    assert result.error.message == "RuntimeError('boom')"
    assert await all_settled(js, settings.subjects)


async def test_invalid_input_names_the_field(serving: Worker, js: JetStreamContext,
                                             settings: NatsSettings) -> None:
    result = await run_one(js, settings.subjects, "t.greet", {"name": "ada", "times": "x"})
    assert isinstance(result, TaskFailed)
    assert (result.error.code, result.error.retryable) == ("invalid-input", False)
    assert result.error.field == "times"
    assert "times" in result.error.message


async def test_unstorable_result_is_naked_and_redelivered(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    s = settings.subjects
    calls: list[int] = []
    redelivered = asyncio.Event()
    worker = Worker()

    @worker.task("t.count")
    async def count(ctx: TaskContext, data: dict[str, Any]) -> None:
        calls.append(ctx.attempt)
        if len(calls) == 2:
            redelivered.set()

    async with worker.running(settings, nc=nc):
        # No stream captures this reply subject, so the result publish fails.
        task = new_task(s, "t.count", {}, reply_to=f"{s.prefix}.nowhere")
        await send(js, s, task)
        await asyncio.wait_for(redelivered.wait(), 5)
    assert await tasks_left(js, s) == 1  # never acked: the result is still owed


# -- heartbeats, progress, cancellation -------------------------------------------------


async def test_heartbeats_keep_a_long_task_past_the_ack_wait(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    s = settings.subjects
    calls = 0
    worker = Worker()

    @worker.task("t.long")
    async def long(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await ctx.progress({"pct": 0})
        await asyncio.sleep(2.5)  # silent; only the worker's heartbeats speak for it
        await ctx.progress({"pct": 100})
        return {"done": True}

    async with worker.running(settings, nc=nc):
        short = dataclasses.replace(Topology(s).worker_consumer("t.long"), ack_wait=1.0)
        await js.add_consumer(s.tasks_stream, short)
        task = new_task(s, "t.long", {}, heartbeat=0.3)
        await send(js, s, task)
        got = await results_of(js, s, task)
    assert [r.kind for r in got] == ["progress", "progress", "succeeded"]
    assert [r.progress for r in got if isinstance(r, TaskProgress)] == [{"pct": 0}, {"pct": 100}]
    assert calls == 1
    info = await js.consumer_info(s.tasks_stream, s.worker_consumer("t.long"))
    assert info.num_redelivered == 0


async def test_a_heartbeat_timeout_adds_liveness_reports_for_the_orchestrator(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    s = settings.subjects
    worker = Worker()

    @worker.task("t.quiet")
    async def quiet(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(1.0)  # no progress of its own
        return {"done": True}

    async with worker.running(settings, nc=nc):
        task = new_task(s, "t.quiet", {}).model_copy(update={"heartbeat_timeout": 0.6})
        await send(js, s, task)
        got = await results_of(js, s, task)
    *reports, final = got
    assert final.kind == "succeeded"
    # One when the handler starts, then one per heartbeat_timeout / 3 = 0.2 s.
    assert len(reports) >= 3, got
    for r in reports:
        assert isinstance(r, TaskProgress) and r.progress is None
        assert (r.workflow_id, r.step_id, r.attempt) == (task.workflow_id, "s1", 1)
        assert r.started_at == final.started_at


async def test_cancel_notice_cancels_the_running_attempt(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    s = settings.subjects
    started = asyncio.Event()
    worker = Worker()

    @worker.task("t.forever")
    async def forever(ctx: TaskContext, data: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(60)

    async with worker.running(settings, nc=nc):
        task = new_task(s, "t.forever", {})
        await send(js, s, task)
        await asyncio.wait_for(started.wait(), 5)
        other = CancelNotice(workflow_id=task.workflow_id, step_id="s1", attempt=2)
        await nc.publish(s.cancel(task.workflow_id), other.model_dump_json().encode())
        await nc.publish(s.cancel(task.workflow_id), b"not a notice")  # ignored
        notice = CancelNotice(workflow_id=task.workflow_id, step_id="s1", attempt=1)
        await nc.publish(s.cancel(task.workflow_id), notice.model_dump_json().encode())
        result = (await results_of(js, s, task))[-1]
    assert isinstance(result, TaskFailed)
    assert (result.error.code, result.error.retryable) == ("cancelled", False)
    assert await all_settled(js, s)


# -- robustness ----------------------------------------------------------------------


async def test_malformed_task_is_dead_lettered_and_serving_goes_on(
        serving: Worker, js: JetStreamContext, settings: NatsSettings) -> None:
    s = settings.subjects
    await js.publish(s.task("t.greet"), b'{"not": "a task"}')
    dlq = await js.pull_subscribe(s.dlq("malformed-task"), stream=s.dlq_stream)
    msgs = await dlq.fetch(1, timeout=5)
    letter = DeadLetter.model_validate_json(msgs[0].data)
    assert letter.reason.code == "malformed-task"
    assert letter.subject == s.task("t.greet")
    assert letter.data == '{"not": "a task"}'
    assert letter.deliveries == 1
    result = await run_one(js, s, "t.greet", {"name": "bob"})
    assert isinstance(result, TaskSucceeded)
    assert await all_settled(js, s)  # the malformed one was terminated


async def test_two_workers_share_one_task_type(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    s = settings.subjects
    served: dict[str, int] = {"a": 0, "b": 0}

    def make(label: str) -> Worker:
        worker = Worker(concurrency=2)

        @worker.task("t.share")
        async def share(ctx: TaskContext, data: dict[str, Any]) -> str:
            served[label] += 1
            await asyncio.sleep(0.1)
            return label

        return worker

    async with make("a").running(settings, nc=nc), make("b").running(settings, nc=nc):
        tasks = [new_task(s, "t.share", {}) for _ in range(16)]
        for task in tasks:
            await send(js, s, task)
        finals = [(await results_of(js, s, t))[-1] for t in tasks]
    assert all(isinstance(r, TaskSucceeded) for r in finals)
    assert served["a"] > 0 and served["b"] > 0
    assert served["a"] + served["b"] == 16


async def test_concurrency_bounds_running_handlers(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    s = settings.subjects
    now = peak = 0
    worker = Worker(concurrency=3)

    async def body() -> None:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        await asyncio.sleep(0.2)
        now -= 1

    @worker.task("t.x")
    async def x(ctx: TaskContext, data: dict[str, Any]) -> None:
        await body()

    @worker.task("t.y")
    async def y(ctx: TaskContext, data: dict[str, Any]) -> None:
        await body()

    async with worker.running(settings, nc=nc):
        tasks = [new_task(s, t, {}) for t in ["t.x", "t.y"] * 6]
        for task in tasks:
            await send(js, s, task)
        for task in tasks:
            await results_of(js, s, task)
    assert peak == 3


async def test_stop_hands_unfinished_tasks_back(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    s = settings.subjects
    started = asyncio.Event()
    slow = Worker(stop_grace=0.2)

    @slow.task("t.job")
    async def stuck(ctx: TaskContext, data: dict[str, Any]) -> str:
        started.set()
        await asyncio.sleep(60)
        return "slow"

    task = new_task(s, "t.job", {})
    async with slow.running(settings, nc=nc):
        await send(js, s, task)
        await asyncio.wait_for(started.wait(), 5)

    fast = Worker()

    @fast.task("t.job")
    async def quick(ctx: TaskContext, data: dict[str, Any]) -> str:
        return "fast"

    async with fast.running(settings, nc=nc):
        result = (await results_of(js, s, task))[-1]
    assert isinstance(result, TaskSucceeded)
    assert result.output == "fast"


async def test_a_task_that_comes_during_a_stops_grace_goes_to_another_worker_at_once(
        settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    # A stopping worker kept its pull requests open through its handlers' grace: a task
    # the server handed to them then sat in its hands for the whole grace (10 s by
    # default) before going back, although another worker was idle.
    s = settings.subjects
    started, release = asyncio.Event(), asyncio.Event()
    slow = Worker(stop_grace=60)

    @slow.task("t.job")
    async def stuck(ctx: TaskContext, data: dict[str, Any]) -> str:
        started.set()
        await release.wait()
        return "slow"

    serving = slow.running(settings, nc=nc)
    await serving.__aenter__()
    stopping: asyncio.Future[Any] | None = None
    try:
        await send(js, s, new_task(s, "t.job", {}))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.ensure_future(serving.__aexit__(None, None, None))
        await asyncio.sleep(0.3)
        assert not stopping.done()  # in its grace: the handler still runs
        second = new_task(s, "t.job", {})
        await send(js, s, second)
        fast = Worker()

        @fast.task("t.job")
        async def quick(ctx: TaskContext, data: dict[str, Any]) -> str:
            return "fast"

        async with fast.running(settings, nc=nc):
            result = (await results_of(js, s, second, within=10))[-1]
        assert isinstance(result, TaskSucceeded) and result.output == "fast"
        assert not stopping.done()  # it did not wait for the stopping worker's grace
    finally:
        release.set()
        if stopping is not None:
            await asyncio.wait_for(stopping, 30)


async def test_an_idle_worker_stops_without_waiting_out_its_fetch(
        settings: NatsSettings, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every worker stop waited for its fetch loops' timeout (1 s; about 1,000 s of CI
    # over the suite's fixtures): a stop halts the fetches instead.
    monkeypatch.setattr("natsflow.worker._worker.FETCH_TIMEOUT", 60.0)
    worker = Worker()

    @worker.task("t.idle")
    async def idle(ctx: TaskContext, data: dict[str, Any]) -> str:
        return "ok"

    serving = worker.running(settings, nc=nc)
    await serving.__aenter__()
    await asyncio.sleep(0.3)  # the loops are waiting in their fetch
    began = asyncio.get_running_loop().time()
    await asyncio.wait_for(serving.__aexit__(None, None, None), 90)
    # Not the 60 s fetch, nor the 10 s its pull request lives on the server.
    assert asyncio.get_running_loop().time() - began < 5


async def test_run_connects_itself_and_stops_when_cancelled(
        settings: NatsSettings, js: JetStreamContext) -> None:
    worker = Worker()

    @worker.task("t.ping")
    async def ping(ctx: TaskContext, data: dict[str, Any]) -> str:
        return "pong"

    runner = asyncio.create_task(worker.run(settings))
    try:
        async with asyncio.timeout(5):  # run() declares the tasks stream and consumer
            while True:
                try:
                    await js.consumer_info(settings.subjects.tasks_stream,
                                           settings.subjects.worker_consumer("t.ping"))
                    break
                except nats.js.errors.NotFoundError:
                    await asyncio.sleep(0.05)
        result = await run_one(js, settings.subjects, "t.ping", {})
        assert isinstance(result, TaskSucceeded) and result.output == "pong"
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


# -- the demo worker ---------------------------------------------------------------------


async def test_demo_tasks(settings: NatsSettings, nc: Client, js: JetStreamContext) -> None:
    from natsflow.demo import worker

    s = settings.subjects

    async def ok(task_type: str, data: dict[str, Any], **kw: Any) -> Any:
        result = await run_one(js, s, task_type, data, **kw)
        assert isinstance(result, TaskSucceeded), result
        return result.output

    async def err(task_type: str, data: dict[str, Any], **kw: Any) -> tuple[str, bool]:
        result = await run_one(js, s, task_type, data, **kw)
        assert isinstance(result, TaskFailed), result
        return result.error.code, result.error.retryable

    async with worker.running(settings, nc=nc):
        assert await ok("demo.echo", {"x": [1, "two"]}) == {"x": [1, "two"]}
        assert await ok("demo.noop", {"ignored": 1}) == {}
        assert await ok("demo.add", {"a": 1, "b": 2}) == {"sum": 3}
        assert await ok("demo.add", {"a": 1.5, "b": 2}) == {"sum": 3.5}
        assert await err("demo.add", {"a": 1}) == ("invalid-input", False)
        assert await err("demo.flaky", {"fail_times": 1}) == ("flaky", True)
        assert await ok("demo.flaky", {"fail_times": 1}, attempt=2) == {"attempt": 2}
        assert await err("demo.fail", {}) == ("demo-failure", False)

        task = new_task(s, "demo.sleep", {"seconds": 0.3, "steps": 3})
        await send(js, s, task)
        got = await results_of(js, s, task)
        assert [r.kind for r in got] == ["progress"] * 3 + ["succeeded"]
        assert [r.progress for r in got if isinstance(r, TaskProgress)] == [
            {"done": i, "of": 3} for i in (1, 2, 3)]
        assert isinstance(got[-1], TaskSucceeded) and got[-1].output == {"slept": 0.3}


# -- pure parts ----------------------------------------------------------------------------


def test_settlement_decisions() -> None:
    assert after_result(True) is Settlement.ACK
    assert after_result(False) is Settlement.NAK
    assert after_dead_letter(True) is Settlement.TERM
    assert after_dead_letter(False) is Settlement.NAK
    assert after_shutdown() is Settlement.NAK


async def test_slot_pool_reserves_in_bulk_and_closes() -> None:
    pool = SlotPool(3)
    assert await pool.reserve(2) == 2
    assert await pool.reserve(5) == 1
    waiter = asyncio.create_task(pool.reserve(5))
    await asyncio.sleep(0)
    assert not waiter.done()
    pool.release(2)
    assert await waiter == 2
    late = asyncio.create_task(pool.reserve(1))
    await asyncio.sleep(0)
    pool.close()
    assert await late == 0


# -- docs/workers.md --------------------------------------------------------------------

DOC = Path(__file__).parent.parent / "docs" / "workers.md"


def doc_blocks(language: str) -> list[str]:
    """The fenced code blocks of ``docs/workers.md`` in ``language``."""
    return [textwrap.dedent(b) for b in
            re.findall(rf"^ *```{language}\n(.*?)^ *```", DOC.read_text(), re.S | re.M)]


def test_doc_json_examples_are_valid_messages() -> None:
    blocks = doc_blocks("json")
    assert len(blocks) == 6
    for block in blocks:
        data = json.loads(block)
        if "reply_to" in data:
            TaskMessage.model_validate(data)
        elif "kind" in data:
            RESULT.validate_python(data)
        else:
            CancelNotice.model_validate(data)


async def test_doc_python_worker_runs(settings: NatsSettings, nc: Client,
                                      js: JetStreamContext) -> None:
    example = doc_blocks("python")[0]  # the FastStream one: tests/test_faststream.py
    namespace: dict[str, Any] = {"__name__": "workers_doc_example"}
    exec(compile(example, str(DOC), "exec"), namespace)
    worker: Worker = namespace["worker"]
    s = settings.subjects
    async with worker.running(settings, nc=nc):
        task = new_task(s, "payments.charge", {"amount": 1250, "currency": "EUR"})
        await send(js, s, task)
        got = await results_of(js, s, task)
        assert [r.kind for r in got] == ["progress", "succeeded"]
        assert isinstance(got[-1], TaskSucceeded)
        assert got[-1].output == {"charge_id": f"ch_{task.idempotency_key}"}
        refused = await run_one(js, s, "payments.charge", {"amount": 20_000, "currency": "EUR"})
        assert isinstance(refused, TaskFailed)
        assert (refused.error.code, refused.error.retryable) == ("limit-exceeded", False)
        bad = await run_one(js, s, "payments.charge", {"amount": 1})
        assert isinstance(bad, TaskFailed) and bad.error.field == "currency"
        upper = await run_one(js, s, "text.upper", {"text": "hi"})
        assert isinstance(upper, TaskSucceeded) and upper.output == {"text": "HI"}


async def test_worker_survives_a_server_restart(tmp_path: Path, prefix: str) -> None:
    server = EmbeddedNats(tmp_path / "store").start()
    settings = NatsSettings(servers=[server.url], prefix=prefix)
    s = settings.subjects
    worker = Worker()

    @worker.task("t.echo")
    async def echo(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        return data

    try:
        reconnected = asyncio.Event()

        async def on_state(state: str) -> None:
            if state == "reconnected":
                reconnected.set()

        client = await connect(settings, name="test-restart", on_state=on_state)
        try:
            js = client.jetstream()
            await declare_stream(js, Topology(s).inbox())
            async with worker.running(settings):
                before = await run_one(js, s, "t.echo", {"n": 1})
                assert isinstance(before, TaskSucceeded)
                server.stop()
                await asyncio.sleep(0.5)  # the fetch loop now sees errors or timeouts
                server.start()
                await asyncio.wait_for(reconnected.wait(), 10)
                after = await run_one(js, s, "t.echo", {"n": 2})
                assert isinstance(after, TaskSucceeded) and after.output == {"n": 2}
        finally:
            await client.close()
    finally:
        server.stop()
