"""Runs one natsflow service as its own process for the benchmark.

Usage::

    NATS_URL=... NATSFLOW_PREFIX=... python bench/_serve.py orchestrator
    NATS_URL=... NATSFLOW_PREFIX=... python bench/_serve.py worker        # SDK, bench.noop
    NATS_URL=... NATSFLOW_PREFIX=... python bench/_serve.py demo-worker   # natsflow.demo
    NATS_URL=... NATSFLOW_PREFIX=... python bench/_serve.py raw-worker    # bare nats-py
    NATS_URL=... NATSFLOW_PREFIX=... SOAK_LEDGER=... python bench/_serve.py soak-worker

``NATSFLOW_BENCH_PROFILE=<file>`` runs the service under cProfile and writes the stats
to ``<file>`` when it stops (SIGTERM or SIGINT). ``NATSFLOW_BENCH_WORKER_CONCURRENCY``
sets the SDK worker's concurrency (default 256).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from contracts.headers import MSG_ID
from natsflow._gc import tune_gc
from natsflow._loop import loop_factory, run_served
from transport.connect import NatsSettings, connect
from transport.streams import Topology, declare_stream, ensure_consumer

#: The task type every benchmark step runs.
NOOP_TASK = "bench.noop"
#: The soak benchmark's step: records each execution of an idempotency key.
SOAK_TASK = "soak.step"
#: A no-op whose output is 1 KB (the map benchmark's items).
KB_TASK = "bench.kb"
_KB = "x" * 1000


def _orchestrator(settings: NatsSettings) -> Awaitable[None]:
    from orchestrator import Orchestrator

    return Orchestrator(settings).run()


def _sdk_worker(settings: NatsSettings) -> Awaitable[None]:
    from natsflow.worker import TaskContext, Worker

    concurrency = int(os.environ.get("NATSFLOW_BENCH_WORKER_CONCURRENCY", "256"))
    worker = Worker(concurrency=concurrency, name="bench-worker")

    @worker.task(NOOP_TASK)
    async def noop(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    @worker.task(KB_TASK)
    async def kb(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        return {"pad": _KB}

    return worker.run(settings)


def _soak_worker(settings: NatsSettings) -> Awaitable[None]:
    """Serves ``soak.step``; appends each execution's idempotency key to $SOAK_LEDGER."""
    from natsflow.worker import TaskContext, Worker

    worker = Worker(concurrency=64, name="soak-worker")
    ledger = os.open(os.environ["SOAK_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @worker.task(SOAK_TASK)
    async def step(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
        os.write(ledger, f"{ctx.idempotency_key}\n".encode())  # unbuffered: survives a kill
        if data.get("sleep"):
            await asyncio.sleep(float(data["sleep"]))
        return {"n": data.get("n", 0)}

    return worker.run(settings)


def _demo_worker(settings: NatsSettings) -> Awaitable[None]:
    from natsflow.demo import worker

    return worker.run(settings)


async def _raw_worker(settings: NatsSettings) -> None:
    """The documented worker contract with nothing but nats-py: a floor for the SDK."""
    nc = await connect(settings, name="bench-raw-worker")
    js = nc.jetstream()
    s = settings.subjects
    topology = Topology(s)
    await declare_stream(js, topology.tasks())
    await ensure_consumer(js, s.tasks_stream, topology.worker_consumer(NOOP_TASK))
    sub = await js.pull_subscribe_bind(s.worker_consumer(NOOP_TASK), stream=s.tasks_stream)
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=1.0)
            except TimeoutError:
                continue
            acks = []
            for msg in msgs:
                task = json.loads(msg.data)
                result = {"kind": "succeeded", "workflow_id": task["workflow_id"],
                          "step_id": task["step_id"], "attempt": task["attempt"],
                          "token": task.get("token"), "output": {}}
                acks.append(await js.publish_async(
                    task["reply_to"], json.dumps(result).encode(),
                    headers={MSG_ID: (f"{task['idempotency_key']}:result:"
                                      f"{task.get('token')}")}))
            await asyncio.gather(*acks)
            for msg in msgs:
                await msg.ack()
    finally:
        await nc.close()


def _index(settings: NatsSettings) -> Awaitable[None]:
    from orchestrator.index import IndexService

    return IndexService(settings).run()


_ROLES: dict[str, Callable[[NatsSettings], Awaitable[None]]] = {
    "orchestrator": _orchestrator,
    "index": _index,
    "worker": _sdk_worker,
    "demo-worker": _demo_worker,
    "soak-worker": _soak_worker,
    "raw-worker": _raw_worker,
}


async def _serve(role: str) -> None:
    service = _ROLES[role](NatsSettings.from_env())  # imports what it serves with
    tune_gc()  # then, as `natsflow orchestrator|worker` do
    task = asyncio.ensure_future(service)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main() -> None:
    """Entry point: ``python bench/_serve.py ROLE``."""
    if len(sys.argv) != 2 or sys.argv[1] not in _ROLES:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(_ROLES)}}}")
    factory = loop_factory()  # uvloop where installed, as the CLI's services run
    profile_path = os.environ.get("NATSFLOW_BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_path else None
    if profiler is not None:
        profiler.enable()
    try:
        run_served(_serve(sys.argv[1]), factory)
    finally:
        if profiler is not None and profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)


if __name__ == "__main__":
    main()
