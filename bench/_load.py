"""Load generation and end-to-end timing: the raw JetStream floor and natsflow phases.

Completion is observed the way any client would: a core NATS subscription on the
terminal events (``<prefix>.events.*.workflow.completed`` and ``...failed``), opened
before the load starts. A workflow's latency runs from just before its create request
(or submit publish) leaves this process to the arrival of its terminal event here.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from contracts.models import EventType, WorkflowConfig
from contracts.subjects import Subjects
from natsflow.client import NatsflowClient

__all__ = [
    "PhaseResult",
    "Snapshot",
    "Tracker",
    "chain_config",
    "percentile",
    "raw_floor",
    "raw_rtt",
    "run_calls",
    "run_load",
    "run_sequential",
    "settled",
    "snapshot",
    "stored_messages",
]

#: The benchmark's own stream for the raw floor; not part of natsflow's topology.
RAW_STREAM = "BENCH_RAW"
RAW_SUBJECT = "bench.raw"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def chain_config(steps: int, task: str) -> WorkflowConfig:
    """A workflow of ``steps`` no-op steps, each depending on the one before (a->b->...)."""
    ids = [f"s{i}" for i in range(steps)]
    return WorkflowConfig.model_validate({
        "name": f"bench-{steps}-step",
        "steps": [{"id": sid, "task": task, "depends_on": [ids[i - 1]] if i else []}
                  for i, sid in enumerate(ids)],
    })


# -- the raw floor -----------------------------------------------------------------


async def raw_floor(nc: Client, *, seconds: float, window: int = 500,
                    payload: bytes = b"x" * 64) -> float:
    """Async JetStream publishes to a file stream for ``seconds``; returns acked msgs/s.

    Publishes go out in windows of ``window`` (``publish_async``), each window's acks
    awaited before the next: the same pattern the orchestrator uses for an outbox.
    """
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=RAW_STREAM, subjects=[RAW_SUBJECT],
                                     storage=StorageType.FILE))
    try:
        sent = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            futures = [await js.publish_async(RAW_SUBJECT, payload) for _ in range(window)]
            await asyncio.gather(*futures)
            sent += window
        return sent / (time.perf_counter() - start)
    finally:
        await js.delete_stream(RAW_STREAM)


async def raw_rtt(nc: Client, *, count: int = 200, payload: bytes = b"x" * 64) -> float:
    """Median seconds of one synchronous JetStream publish (publish, wait for the ack)."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=RAW_STREAM, subjects=[RAW_SUBJECT],
                                     storage=StorageType.FILE))
    try:
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            await js.publish(RAW_SUBJECT, payload)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    finally:
        await js.delete_stream(RAW_STREAM)


async def stored_messages(nc: Client, subjects: Subjects) -> int:
    """Messages ever stored in the deployment's streams and buckets (sum of last seqs).

    Every stream of the server but the raw floor's: the benchmark's server holds one
    deployment, and a stream forgotten here (the summaries bucket once was) would hide
    its writes. bench/writes.py breaks the same count down by stream.
    """
    del subjects  # the server is the deployment's alone
    total = 0
    for info in await nc.jetstream().streams_info():
        if info.config.name != RAW_STREAM:
            total += info.state.last_seq
    return total


#: stream name -> (messages, last_seq, bytes)
Snapshot = dict[str, tuple[int, int, int]]


async def snapshot(nc: Client) -> tuple[Snapshot, dict[str, list[str]]]:
    """Every stream's (messages, last_seq, bytes), and its subjects."""
    state: Snapshot = {}
    captures: dict[str, list[str]] = {}
    for info in await nc.jetstream().streams_info():
        name = info.config.name
        if name is None:
            continue
        state[name] = (info.state.messages, info.state.last_seq, info.state.bytes)
        captures[name] = list(info.config.subjects or [])
    return state, captures


async def settled(nc: Client, *, quiet: float = 0.5, timeout: float = 30.0) -> Snapshot:
    """A snapshot once nothing has been stored for ``quiet`` seconds (the last outbox
    parts and acks land after the terminal event)."""
    last, _ = await snapshot(nc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now, _ = await snapshot(nc)
        if now == last:
            return now
        last = now
    return last


# -- completion tracking -----------------------------------------------------------


@dataclass
class _Pending:
    t0: float
    done: asyncio.Future[float]


class Tracker:
    """Times workflows from submission to their terminal event.

    Args:
        nc: The benchmark's connection.
        subjects: The deployment's subjects.
        events: The events that end a workflow's clock (default: its terminal events).
        success: The one of them that is not counted as ``failed``.
    """

    def __init__(self, nc: Client, subjects: Subjects, *,
                 events: tuple[EventType, ...] = (EventType.WORKFLOW_COMPLETED,
                                                  EventType.WORKFLOW_FAILED),
                 success: EventType = EventType.WORKFLOW_COMPLETED) -> None:
        self.nc = nc
        self.subjects = subjects
        self.events = events
        self.success = success
        self.pending: dict[str, _Pending] = {}
        self.failed = 0
        self.finished = 0
        self.last_done = 0.0
        self._subs: list[Any] = []

    async def start(self) -> None:
        """Subscribe to the events (before any load is sent)."""
        for kind in self.events:
            self._subs.append(await self.nc.subscribe(
                self.subjects.events_of("*", kind.value), cb=self._on_event,
                pending_msgs_limit=1_000_000, pending_bytes_limit=1024**3))

    async def stop(self) -> None:
        """Unsubscribe."""
        for sub in self._subs:
            await sub.unsubscribe()

    def expect(self, workflow_id: str) -> asyncio.Future[float]:
        """Start the clock for ``workflow_id``; the future gives its latency in seconds."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pending[workflow_id] = _Pending(time.perf_counter(), fut)
        return fut

    async def _on_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        # <prefix>.events.<id>.<kind>.<what>: the id is third from the end.
        tokens = msg.subject.rsplit(".", 3)
        entry = self.pending.pop(tokens[1], None)
        if entry is None or entry.done.done():
            return
        if f"{tokens[2]}.{tokens[3]}" != self.success.value:
            self.failed += 1
        self.finished += 1
        self.last_done = now
        entry.done.set_result(now - entry.t0)


# -- phases ------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """What one load phase measured."""

    name: str
    workflows: int
    steps_per_workflow: int
    completed: int = 0
    failed: int = 0
    elapsed: float = 0.0
    submit_elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    ids: list[str] = field(default_factory=list, repr=False)
    stored_messages: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def workflows_per_s(self) -> float:
        """Completed workflows per second, first submit to last completion."""
        return self.completed / self.elapsed if self.elapsed else 0.0

    @property
    def steps_per_s(self) -> float:
        """Completed steps per second."""
        return self.workflows_per_s * self.steps_per_workflow

    @property
    def stored_per_workflow(self) -> float:
        """JetStream messages (stream and KV writes) stored per workflow."""
        return self.stored_messages / self.workflows if self.workflows else 0.0

    def latency_ms(self, q: float) -> float:
        """The ``q``-th percentile latency in milliseconds."""
        return percentile(self.latencies, q) * 1000


def _configs(base: WorkflowConfig, name: str, n: int) -> list[WorkflowConfig]:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    run = uuid.uuid4().hex[:8]
    return [base.model_copy(update={"id": f"{slug}-{run}-{i}"}) for i in range(n)]


def _sender(client: NatsflowClient, via: str) -> Callable[[WorkflowConfig], Awaitable[Any]]:
    if via == "create":
        return client.create
    if via == "submit":
        return client.submit
    raise ValueError(f"unknown submission path {via!r}")


async def run_load(client: NatsflowClient, tracker: Tracker, *, name: str,
                   base: WorkflowConfig, n: int, concurrency: int, via: str,
                   timeout: float) -> PhaseResult:
    """Submit ``n`` workflows with at most ``concurrency`` calls in flight; await them all.

    Configs (with client-chosen ids) are built before the clock starts, so the cost
    of building them is not charged to natsflow.
    """
    configs = {c.id: c for c in _configs(base, name, n) if c.id is not None}
    send = _sender(client, via)
    return await run_calls(tracker, name=name, ids=list(configs),
                           call=lambda wid: send(configs[wid]), concurrency=concurrency,
                           timeout=timeout, steps_per_workflow=len(base.steps))


async def run_calls(tracker: Tracker, *, name: str, ids: list[str],
                    call: Callable[[str], Awaitable[Any]], concurrency: int, timeout: float,
                    steps_per_workflow: int = 1) -> PhaseResult:
    """``call`` each workflow id, at most ``concurrency`` calls in flight, and await every
    id's event (``tracker``'s): a load phase of creates, submits, signals or stops."""
    result = PhaseResult(name=name, workflows=len(ids), steps_per_workflow=steps_per_workflow,
                         ids=ids)
    futures: list[asyncio.Future[float]] = []
    todo = iter(ids)

    async def lane() -> None:
        for wid in todo:
            futures.append(tracker.expect(wid))
            await call(wid)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, len(ids)))))
    result.submit_elapsed = time.perf_counter() - start
    done, _ = await asyncio.wait(futures, timeout=max(1.0, timeout - result.submit_elapsed))
    result.elapsed = (tracker.last_done if done else time.perf_counter()) - start
    _collect(result, tracker, done)
    return result


async def run_sequential(client: NatsflowClient, tracker: Tracker, *, name: str,
                         base: WorkflowConfig, n: int, via: str,
                         timeout: float) -> PhaseResult:
    """Run ``n`` workflows one after another (each awaited): latency at no load."""
    send = _sender(client, via)
    result = PhaseResult(name=name, workflows=n, steps_per_workflow=len(base.steps))
    done: set[asyncio.Future[float]] = set()
    start = time.perf_counter()
    for config in _configs(base, name, n):
        assert config.id is not None
        fut = tracker.expect(config.id)
        await send(config)
        left = timeout - (time.perf_counter() - start)
        finished, _ = await asyncio.wait([fut], timeout=max(0.0, left))
        if not finished:
            break
        done |= finished
    result.elapsed = time.perf_counter() - start
    _collect(result, tracker, done)
    return result


def _collect(result: PhaseResult, tracker: Tracker,
             done: Iterable[asyncio.Future[float]]) -> None:
    result.latencies = [f.result() for f in done]
    result.completed = len(result.latencies)
    result.failed = tracker.failed
    tracker.failed = 0
    # Whatever did not finish in time is forgotten, so it cannot skew the next phase.
    tracker.pending.clear()


async def await_ready(client: NatsflowClient, alive: Callable[[], bool], *,
                      timeout: float = 60.0) -> None:
    """Until the orchestrator answers a ping; fails when ``alive()`` turns False."""
    deadline = time.monotonic() + timeout
    while not await client.ping():
        if time.monotonic() > deadline or not alive():
            raise RuntimeError("the orchestrator did not come up")
        await asyncio.sleep(0.2)


async def warm_up(client: NatsflowClient, tracker: Tracker, *, steps: Iterable[int],
                  task: str, n: int) -> None:
    """``n`` chains of each length one at a time: the worker's consumer and anything
    else made once per deployment exist before anything is counted."""
    for k in steps:
        warm = await run_sequential(client, tracker, name="warmup", n=n, via="create",
                                    base=chain_config(k, task), timeout=60)
        if warm.completed < warm.workflows:
            raise RuntimeError("the warm-up did not finish")
