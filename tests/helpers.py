"""Shared helpers of the integration tests: a probed demo worker, event and DLQ readers.

Everything here talks to the real nats-server with plain nats-py; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import typing
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from prometheus_client import CollectorRegistry
from pydantic import TypeAdapter

from contracts.messages import (
    DeadLetter,
    TaskFailed,
    TaskMessage,
    TaskProgress,
    TaskResult,
    TaskSucceeded,
)
from contracts.models import EVENT_TERMINAL, Event, EventType
from contracts.subjects import Subjects
from natsflow import demo
from natsflow.worker import TaskContext, Worker
from transport.connect import NatsSettings

__all__ = [
    "AttemptKey",
    "RESULT",
    "Probe",
    "assert_history",
    "by_workflow",
    "example_workflow",
    "load_example",
    "make_demo_worker",
    "new_task",
    "read_dead_letters",
    "read_events",
    "results_of",
    "run_one",
    "running_demo_worker",
    "send",
    "terminal_of",
    "wait_for",
]

AttemptKey = tuple[str, str, int]  # (workflow id, step id, attempt)

RESULT = TypeAdapter[TaskSucceeded | TaskFailed | TaskProgress](TaskResult)

_DEMO_HANDLERS = {
    "demo.echo": demo.echo,
    "demo.noop": demo.noop,
    "demo.add": demo.add,
    "demo.sleep": demo.sleep,
    "demo.flaky": demo.flaky,
    "demo.fail": demo.fail,
    "demo.count": demo.count,
}


@dataclass
class Probe:
    """What the demo worker's handlers did, as seen from inside the worker."""

    running: int = 0
    max_running: int = 0
    runs: Counter[AttemptKey] = field(default_factory=Counter)
    cancelled: list[AttemptKey] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self, key: AttemptKey) -> None:
        self.runs[key] += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()

    def leave(self, key: AttemptKey, ctx: TaskContext) -> None:
        self.running -= 1
        if ctx.cancelled:
            self.cancelled.append(key)


def counted(registry: CollectorRegistry, name: str) -> float:
    """A metric's value summed over all its labels (``name`` as exposed: ``..._total``)."""
    return sum(sample.value for metric in registry.collect() for sample in metric.samples
               if sample.name == name)


def _probed(probe: Probe, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a demo handler so the probe sees every run; keeps the input model."""

    async def handler(ctx: TaskContext, data: Any) -> Any:
        key = (ctx.workflow_id, ctx.step_id, ctx.attempt)
        probe.enter(key)
        try:
            return await fn(ctx, data)
        finally:
            probe.leave(key, ctx)

    # The worker validates the input into the handler's annotated model.
    handler.__annotations__ = {**handler.__annotations__,
                               "data": typing.get_type_hints(fn)["data"]}
    return handler


def make_demo_worker(probe: Probe, *, concurrency: int = 64, stop_grace: float = 0.5) -> Worker:
    """A Worker serving every ``demo.*`` task type, each run reported to ``probe``."""
    worker = Worker(concurrency=concurrency, name="test-demo-worker", stop_grace=stop_grace)
    for task_type, fn in _DEMO_HANDLERS.items():
        worker.task(task_type)(_probed(probe, fn))
    return worker


@contextlib.asynccontextmanager
async def running_demo_worker(settings: NatsSettings, *, concurrency: int = 64
                              ) -> AsyncIterator[Probe]:
    """Serve the demo task types while the block runs; yields the probe."""
    probe = Probe()
    async with make_demo_worker(probe, concurrency=concurrency).running(settings):
        yield probe


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0,
                   what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _terminal_count(events: Sequence[Event]) -> int:
    return sum(1 for e in events if e.type in EVENT_TERMINAL)


async def read_events(nc: Client, subjects: Subjects, workflow_id: str = "*",
                      event_type: str = ">", *, terminals: int | None = 1,
                      count: int | None = None, timeout: float = 20.0,
                      linger: float = 0.3) -> list[Event]:
    """Events from the events stream, read with a plain ordered JetStream consumer.

    Reads until ``terminals`` terminal events (or ``count`` events) have arrived, then
    ``linger`` seconds more, so a stray event after the end is caught too.

    Raises:
        AssertionError: the awaited events did not arrive within ``timeout``.
    """
    js = nc.jetstream()
    sub = await js.subscribe(subjects.events_of(workflow_id, event_type),
                             ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    events: list[Event] = []
    seen_terminals = 0

    def done() -> bool:
        if count is not None:
            return len(events) >= count
        return terminals is not None and seen_terminals >= terminals

    try:
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s: {len(events)} events, {seen_terminals} "
                    f"terminal, last {[e.type.value for e in events[-5:]]}")
            try:
                msg = await sub.next_msg(timeout=min(left, 1.0))
            except nats.errors.TimeoutError:
                continue
            event = Event.model_validate_json(msg.data)
            events.append(event)
            seen_terminals += event.type in EVENT_TERMINAL
        end = loop.time() + linger
        while (left := end - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                break
            events.append(Event.model_validate_json(msg.data))
    finally:
        await sub.unsubscribe()
    return events


def by_workflow(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Events grouped by workflow id, each group in stream order."""
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.workflow_id, []).append(e)
    return out


def terminal_of(events: Iterable[Event]) -> Event:
    """The (first) terminal event among ``events``."""
    return next(e for e in events if e.type in EVENT_TERMINAL)


def assert_history(events: Sequence[Event], *, terminal: EventType | None = None) -> None:
    """One workflow's events: seq 1..n without gaps, exactly one terminal event, last."""
    assert events, "no events"
    wid = events[0].workflow_id
    assert all(e.workflow_id == wid for e in events)
    seqs = sorted(e.seq for e in events)
    assert seqs == list(range(1, len(events) + 1)), f"{wid}: seqs {seqs}"
    ordered = sorted(events, key=lambda e: e.seq)
    assert ordered[0].type == EventType.WORKFLOW_CREATED
    assert _terminal_count(events) == 1, f"{wid}: {[e.type.value for e in ordered]}"
    assert ordered[-1].type in EVENT_TERMINAL, f"{wid}: {[e.type.value for e in ordered]}"
    if terminal is not None:
        assert ordered[-1].type == terminal, f"{wid}: {[e.type.value for e in ordered]}"


async def read_dead_letters(nc: Client, subjects: Subjects, *, count: int,
                            timeout: float = 10.0) -> list[tuple[str, DeadLetter]]:
    """The first ``count`` dead letters as (subject, letter), read from the DLQ stream."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # The orchestrator declares the stream; wait for it rather than race it.
    sub = await js.subscribe(subjects.all_dlq, stream=subjects.dlq_stream,
                             ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    letters: list[tuple[str, DeadLetter]] = []
    try:
        while len(letters) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out: {len(letters)} of {count} dead letters: "
                                     f"{letters}")
            try:
                msg = await sub.next_msg(timeout=min(left, 1.0))
            except nats.errors.TimeoutError:
                continue
            letters.append((msg.subject, DeadLetter.model_validate_json(msg.data)))
    finally:
        await sub.unsubscribe()
    return letters


# -- examples/ ----------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(filename: str) -> Any:
    """Import ``examples/<filename>`` as a module (the examples are not a package)."""
    name = "natsflow_example_" + Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def example_workflow(filename: str, wid: str, **input_: Any) -> dict[str, Any]:
    """The workflow of ``examples/<filename>`` with the id ``wid`` and ``input_`` merged in."""
    config = yaml.safe_load((EXAMPLES / filename).read_text())
    config["id"] = wid
    config["input"].update(input_)
    return dict(config)


# -- playing the orchestrator for workers -----------------------------------------------


def new_task(subjects: Subjects, task_type: str, data: dict[str, Any], *, attempt: int = 1,
             heartbeat: float = 10.0, reply_to: str | None = None) -> TaskMessage:
    """A task for a fresh workflow id."""
    wid = "wf" + uuid.uuid4().hex[:12]
    return TaskMessage(workflow_id=wid, step_id="s1", attempt=attempt, task=task_type,
                       input=data, idempotency_key=f"{wid}:s1:{attempt}",
                       reply_to=reply_to or subjects.result(wid), heartbeat_interval=heartbeat)


async def send(js: JetStreamContext, subjects: Subjects, task: TaskMessage) -> None:
    """Publish ``task`` to its task type's work queue."""
    await js.publish(subjects.task(task.task), task.model_dump_json().encode())


async def results_of(js: JetStreamContext, subjects: Subjects, task: TaskMessage, *,
                     within: float = 5.0) -> list[TaskSucceeded | TaskFailed | TaskProgress]:
    """Every result of ``task``'s workflow up to and including the final one."""
    sub = await js.pull_subscribe(subjects.result(task.workflow_id),
                                  stream=subjects.inbox_stream)
    got: list[TaskSucceeded | TaskFailed | TaskProgress] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    try:
        while loop.time() < end:
            try:
                msgs = await sub.fetch(batch=10, timeout=max(0.1, end - loop.time()))
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                await msg.ack()
                got.append(RESULT.validate_json(msg.data))
            if got and got[-1].kind != "progress":
                return got
        raise AssertionError(f"no final result for {task.idempotency_key}; got {got}")
    finally:
        await sub.unsubscribe()


async def run_one(js: JetStreamContext, subjects: Subjects, task_type: str,
                  data: dict[str, Any], **kwargs: Any) -> TaskSucceeded | TaskFailed:
    """Send one task and return its final result."""
    task = new_task(subjects, task_type, data, **kwargs)
    await send(js, subjects, task)
    final = (await results_of(js, subjects, task))[-1]
    assert not isinstance(final, TaskProgress)
    return final


async def run_cli(*args: str, settings: NatsSettings | None = None,
                  env: dict[str, str] | None = None,
                  timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``natsflow <args>`` as a user would, in a process of its own.

    Args:
        args: The command line after ``natsflow``.
        settings: The deployment to point it at (``NATS_URL``, ``NATSFLOW_PREFIX``).
        env: More environment variables, over the test's own.
        timeout: Seconds before the process is killed (the test then fails).

    Returns:
        The exit code, standard output and standard error.
    """
    import os

    full = {**os.environ, **(env or {})}
    if settings is not None:
        full |= {"NATS_URL": settings.servers[0], "NATSFLOW_PREFIX": settings.prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "natsflow.cli", *args, env=full,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:  # timed out: leave nothing behind
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
