"""Benchmark: an urgent workflow behind a backlog of 10,000 low-priority ones, one worker.

Usage::

    uv run python bench/priority.py                      # 10,000 queued, 5 urgent, 20 ms tasks
    uv run python bench/priority.py --backlog 2000 --urgent 3 --task-ms 50 --json

Starts its own nats-server (temporary store) and an orchestrator as a separate process
(``bench/_serve.py``). It submits ``--backlog`` one-step workflows at priority 1 and
waits until all their tasks are queued; then one worker (this process,
``Worker(concurrency=1)``, each task sleeping ``--task-ms``) starts on them. Once it is
busy, ``--urgent`` workflows at priority 5 are submitted one at a time, each after the
one before has started. For each it records when its task was published (a core
subscription on the level's subject), when the worker started it, and how many
low-priority tasks the worker started in between. Exit status 0 when every urgent task
started with at most one low-priority task in between (the one already running is let
finish; nothing is pre-empted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._procs import Service
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from natsflow.worker import TaskContext, Worker
from transport.connect import NatsSettings, connect

TASK = "bench.prio"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backlog", type=int, default=10_000, help="low-priority workflows queued")
    p.add_argument("--urgent", type=int, default=5, help="urgent workflows, one at a time")
    p.add_argument("--task-ms", type=float, default=20.0, help="how long each task runs")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per wait")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    return p.parse_args(argv)


def _workflow(wid: str, priority: int) -> dict[str, Any]:
    return {"name": "bench-prio", "id": wid, "priority": priority,
            "steps": [{"id": "w", "task": TASK}]}


async def _until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log")
    settings = NatsSettings(servers=[server.url], prefix="bprio" + uuid.uuid4().hex[:6])
    s = settings.subjects
    server.start()
    orch: Service | None = None
    report: dict[str, Any] = {"backlog": args.backlog, "task_ms": args.task_ms, "urgent": []}
    try:
        nc = await connect(settings, name="bench-priority")
        env = {"NATS_URL": server.url, "NATSFLOW_PREFIX": settings.prefix}
        orch = Service("orchestrator", env, workdir / "orchestrator.log").start()
        client = NatsflowClient(nc, settings.subjects, timeout=30.0)

        async def up() -> bool:
            return await client.ping()

        await _until("the orchestrator", up, 60)
        began = time.perf_counter()
        for i in range(args.backlog):
            await client.submit(_workflow(f"low{i}", 1))
        js = nc.jetstream()

        async def queued() -> bool:
            return (await js.stream_info(s.tasks_stream)).state.messages >= args.backlog

        await _until("the backlog's tasks", queued, args.timeout)
        report["backlog_queued_s"] = round(time.perf_counter() - began, 2)

        starts: list[tuple[str, float]] = []
        published: dict[str, float] = {}
        worker = Worker(concurrency=1, stop_grace=1.0)

        @worker.task(TASK)
        async def work(ctx: TaskContext, data: dict[str, Any]) -> dict[str, Any]:
            starts.append((ctx.workflow_id, time.monotonic()))
            await asyncio.sleep(args.task_ms / 1000)
            return {}

        async def seen(msg: Any) -> None:
            published[json.loads(msg.data)["workflow_id"]] = time.monotonic()

        await nc.subscribe(s.task(TASK, 5), cb=seen)
        async with worker.running(settings, nc=nc):
            async def busy() -> bool:
                return len(starts) >= 20

            await _until("the worker to be busy", busy, args.timeout)
            for n in range(args.urgent):
                wid = f"urgent{n}"
                submitted = time.monotonic()
                await client.submit(_workflow(wid, 5))

                async def started(wid: str = wid) -> bool:
                    return any(w == wid for w, _ in starts)

                await _until(wid, started, args.timeout)
                at = next(i for i, (w, _) in enumerate(starts) if w == wid)
                start = starts[at][1]
                sent = published.get(wid, submitted)
                jumped = sum(1 for w, t in starts[:at] if t > sent and w.startswith("low"))
                report["urgent"].append({
                    "workflow": wid, "lows_started_before": sum(
                        1 for w, _ in starts[:at] if w.startswith("low")),
                    "lows_started_in_between": jumped,
                    "published_to_start_ms": round((start - sent) * 1000, 1),
                    "submitted_to_start_ms": round((start - submitted) * 1000, 1)})
                await asyncio.sleep(5 * args.task_ms / 1000)  # a few lows in between
            report["lows_left_queued"] = (await js.stream_info(s.tasks_stream)).state.messages
        await nc.drain()
    finally:
        if orch is not None:
            orch.stop()
        server.stop()
    waits = [u["published_to_start_ms"] for u in report["urgent"]]
    report["published_to_start_ms_p50"] = statistics.median(waits)
    report["published_to_start_ms_max"] = max(waits)
    report["ok"] = all(u["lows_started_in_between"] <= 1 for u in report["urgent"])
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="natsflow-bench-prio-") as tmp:
        report = asyncio.run(bench(args, Path(tmp)))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.backlog:,} low-priority tasks queued in {report['backlog_queued_s']} s; "
              f"one worker, {args.task_ms:g} ms per task")
        for u in report["urgent"]:
            print(f"  {u['workflow']}: started {u['published_to_start_ms']} ms after its "
                  f"task was published ({u['submitted_to_start_ms']} ms after the submit), "
                  f"{u['lows_started_in_between']} low task(s) started in between, "
                  f"{u['lows_started_before']} before it in all")
        print(f"  published -> started: p50 {report['published_to_start_ms_p50']} ms, "
              f"max {report['published_to_start_ms_max']} ms; "
              f"{report['lows_left_queued']:,} low tasks still queued at the end")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
