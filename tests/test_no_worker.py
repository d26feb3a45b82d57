"""A task type no worker serves, on a real nats-server: it says so, and can give up.

The orchestrator runs with a short worker-grace period; workers come late, or are busy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from helpers import read_events, wait_for
from nats.aio.client import Client
from rich.console import Console

from contracts.models import EventType, StepState, WorkerWaitReason, WorkflowState
from natsflow._cli_render import workflow_view
from natsflow.client import NatsflowClient
from natsflow.worker import TaskContext, Worker
from orchestrator import Orchestrator
from transport.connect import NatsSettings

NOBODY = "nobody.serves"


@contextlib.asynccontextmanager
async def orchestrator(settings: NatsSettings, *, grace: float) -> AsyncIterator[Orchestrator]:
    orch = Orchestrator(settings, stop_grace=2.0, worker_grace=grace,
                        queue_sample_interval=0.2)
    await orch.start()
    try:
        yield orch
    finally:
        await orch.stop()


def late_worker(runs: list[tuple[str, str, int]]) -> Worker:
    """A worker for the task type nobody served so far; records each attempt it runs."""
    worker = Worker(concurrency=4, name="late-worker", stop_grace=0.5)

    @worker.task(NOBODY)
    async def serve(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        runs.append((ctx.workflow_id, ctx.step_id, ctx.attempt))
        return {"served": data}

    return worker


def sample(orch: Orchestrator, name: str, **labels: str) -> float:
    return orch.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_task_nobody_serves_is_marked_after_the_grace_and_a_late_worker_clears_it(
        settings: NatsSettings, nc: Client, client: NatsflowClient) -> None:
    async with orchestrator(settings, grace=0.5) as orch:
        await client.create({"name": "orphan", "id": "orphan", "input": {"n": 1},
                             "steps": [{"id": "a", "task": NOBODY,
                                        "input": {"n": "${input.n}"}}]})
        (waiting,) = await read_events(nc, settings.subjects, "orphan",
                                       EventType.STEP_WAITING_FOR_WORKER.value,
                                       terminals=None, count=1, linger=0.5)
        assert (waiting.step_id, waiting.attempt) == ("a", 1)
        assert waiting.data["task"] == NOBODY
        assert waiting.data["reason"] == "no-consumer"
        assert NOBODY in waiting.data["message"] and waiting.data["waited"] >= 0.5

        status = (await client.get("orphan")).status
        assert status is not None and status.state == WorkflowState.RUNNING
        step = status.step("a")
        assert step.state == StepState.DISPATCHED
        assert step.waiting_for_worker == WorkerWaitReason.NO_CONSUMER
        console = Console(width=160, record=True)
        console.print(workflow_view(status))
        assert "waiting for a worker (no-consumer)" in console.export_text()

        assert sample(orch, "natsflow_steps_waiting_for_worker_total", task=NOBODY,
                      reason="no-consumer") == 1
        await wait_for(lambda: sample(orch, "natsflow_tasks_without_worker",
                                      task=NOBODY) == 1,
                       what="the task counted as without a worker")

        runs: list[tuple[str, str, int]] = []
        async with late_worker(runs).running(settings):
            done = await client.wait("orphan", timeout=20)
            await wait_for(lambda: sample(orch, "natsflow_tasks_without_worker",
                                          task=NOBODY) == 0,
                           what="the gauge to drop once a worker takes the task")
        assert done.status is not None and done.status.state == WorkflowState.COMPLETED
        assert done.status.step("a").waiting_for_worker is None
        assert done.status.output == {"a": {"served": {"n": 1}}}
        assert runs == [("orphan", "a", 1)]
        types = [e.type for e in await read_events(nc, settings.subjects, "orphan")]
        assert types.count(EventType.STEP_WAITING_FOR_WORKER) == 1
        assert (types.index(EventType.STEP_WAITING_FOR_WORKER)
                < types.index(EventType.STEP_STARTED))


async def test_schedule_to_start_fails_the_attempt_and_a_late_worker_runs_only_the_retry(
        settings: NatsSettings, nc: Client, client: NatsflowClient) -> None:
    async with orchestrator(settings, grace=30.0):
        # No retry: the workflow fails, naming the task type.
        await client.create({"name": "give-up", "id": "give-up", "steps": [
            {"id": "a", "task": NOBODY, "schedule_to_start": 0.5}]})
        failed = await client.wait("give-up", timeout=20)
        assert failed.status is not None and failed.status.state == WorkflowState.FAILED
        error = failed.status.step("a").error
        assert error is not None and error.code == "schedule-to-start-timeout"
        assert NOBODY in error.message

        # With a retry: the first attempt fails, a worker comes, runs the second only.
        await client.create({"name": "retry", "id": "retry", "steps": [
            {"id": "a", "task": NOBODY, "schedule_to_start": 1,
             "retry": {"max_attempts": 2, "initial_interval": 5}}]})
        (retrying,) = await read_events(nc, settings.subjects, "retry",
                                        EventType.STEP_RETRYING.value, terminals=None,
                                        count=1, linger=0)
        assert retrying.data["error"]["code"] == "schedule-to-start-timeout"
        runs: list[tuple[str, str, int]] = []
        async with late_worker(runs).running(settings):
            done = await client.wait("retry", timeout=30)
        assert done.status is not None and done.status.state == WorkflowState.COMPLETED
        assert done.status.step("a").attempts == 2
        # The timed-out attempts' tasks were still queued: the worker dropped them unrun.
        assert runs == [("retry", "a", 2)]


async def test_a_long_task_reports_its_start_and_a_task_queued_behind_it_is_busy(
        settings: NatsSettings, nc: Client, client: NatsflowClient) -> None:
    running: list[str] = []
    worker = Worker(concurrency=1, name="one-at-a-time", stop_grace=0.5)

    @worker.task("slow.task")
    async def slow(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        running.append(ctx.workflow_id)
        await asyncio.sleep(data["seconds"])  # no progress: only the start report tells
        return {}

    async with orchestrator(settings, grace=1.0), worker.running(settings):
        await client.create({"name": "long", "id": "long", "steps": [
            {"id": "a", "task": "slow.task", "input": {"seconds": 3}}]})
        await wait_for(lambda: running == ["long"], what="the long task to start")
        await client.create({"name": "queued", "id": "queued", "steps": [
            {"id": "a", "task": "slow.task", "input": {"seconds": 0}}]})
        (waiting,) = await read_events(nc, settings.subjects, "queued",
                                       EventType.STEP_WAITING_FOR_WORKER.value,
                                       terminals=None, count=1, linger=0)
        assert waiting.data["reason"] == "busy"
        # The long task sent no progress, yet the orchestrator knows a worker has it.
        status = (await client.get("long")).status
        assert status is not None and status.step("a").state == StepState.RUNNING
        assert status.step("a").waiting_for_worker is None
        for wid in ("long", "queued"):
            done = await client.wait(wid, timeout=30)
            assert done.status is not None and done.status.state == WorkflowState.COMPLETED
            assert done.status.step("a").waiting_for_worker is None
        long_events = await read_events(nc, settings.subjects, "long")
        assert EventType.STEP_WAITING_FOR_WORKER not in [e.type for e in long_events]


async def test_a_consumer_whose_workers_are_gone_says_no_worker(
        settings: NatsSettings, nc: Client, client: NatsflowClient) -> None:
    async with orchestrator(settings, grace=0.5):
        async with late_worker([]).running(settings):
            pass  # its durable consumer stays behind, with nobody pulling
        await client.create({"name": "left", "id": "left", "steps": [
            {"id": "a", "task": NOBODY}]})
        (waiting,) = await read_events(nc, settings.subjects, "left",
                                       EventType.STEP_WAITING_FOR_WORKER.value,
                                       terminals=None, count=1, linger=0)
        assert waiting.data["reason"] == "no-worker"
