"""Benchmark: one map step over N no-op items with 1 KB outputs, end to end.

Usage::

    uv run python bench/map.py                     # 10,000 items, max_concurrency 1000
    uv run python bench/map.py --items 2000 --concurrency 200 --json

Starts its own nats-server (temporary store), an orchestrator and an SDK worker as
separate processes (``bench/_serve.py``), measures the raw JetStream floor in the same
run, then runs ``--runs`` workflows of one map step, one after the other. Each item's
task returns a 1 KB output; the join collects them (a blob of N KB). Prints the seconds
per map, items/s and items/s over the floor. Exit status 0 when every map completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._load import raw_floor
from bench._procs import Service, cpu_seconds
from bench._serve import KB_TASK
from contracts.models import WorkflowState
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=10_000, help="items per map (10000)")
    p.add_argument("--concurrency", type=int, default=1000, help="max_concurrency (1000)")
    p.add_argument("--runs", type=int, default=2, help="maps run one after the other (2)")
    p.add_argument("--floor-seconds", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per map (300)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p.parse_args(argv)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log")
    settings = NatsSettings(servers=[server.url], prefix="bmap" + uuid.uuid4().hex[:6])
    server.start()
    services: list[Service] = []
    report: dict[str, Any] = {"items": args.items, "max_concurrency": args.concurrency,
                              "runs": []}
    try:
        nc = await connect(settings, name="bench-map")
        report["floor_msgs_per_s"] = await raw_floor(nc, seconds=args.floor_seconds)
        env = {"NATS_URL": server.url, "NATSFLOW_PREFIX": settings.prefix}
        orch = Service("orchestrator", env, workdir / "orchestrator.log").start()
        worker = Service("worker", env, workdir / "worker.log").start()
        services += [orch, worker]
        client = NatsflowClient(nc, settings.subjects, timeout=30.0)
        deadline = time.monotonic() + 60
        while not await client.ping():
            if time.monotonic() > deadline:
                raise RuntimeError("the orchestrator did not come up")
            await asyncio.sleep(0.2)
        records = f"KV_{settings.subjects.workflows_bucket}"

        async def record_saves() -> int:
            return (await nc.jetstream().stream_info(records)).state.last_seq

        # The item list is built from the input so that the config stays small.
        for run in range(args.runs):
            wid = f"map-{run}-{uuid.uuid4().hex[:6]}"
            config = {"name": "bench-map", "id": wid, "input": {"xs": list(range(args.items))},
                      "steps": [{"id": "m", "kind": "map", "items": "input.xs",
                                 "max_concurrency": args.concurrency,
                                 "step": {"task": KB_TASK, "input": {"i": "${index}"}}}]}
            assert server.proc is not None
            cpu0 = {"orchestrator": cpu_seconds(orch.pid), "worker": cpu_seconds(worker.pid),
                    "nats": cpu_seconds(server.proc.pid)}
            saves0 = await record_saves()
            began = time.perf_counter()
            await client.create(config)
            reply = await client.wait(wid, timeout=args.timeout)
            elapsed = time.perf_counter() - began
            status = reply.status
            ok = status is not None and status.state == WorkflowState.COMPLETED
            row = {"workflow": wid, "completed": ok, "seconds": round(elapsed, 2),
                   "items_per_s": round(args.items / elapsed),
                   "orchestrator_cpu_s": round(cpu_seconds(orch.pid) - cpu0["orchestrator"], 2),
                   "worker_cpu_s": round(cpu_seconds(worker.pid) - cpu0["worker"], 2),
                   "nats_cpu_s": round(cpu_seconds(server.proc.pid) - cpu0["nats"], 2),
                   # Transitions stored: one compare-and-set save of the record each.
                   "record_saves": await record_saves() - saves0}
            row["items_per_s_over_floor"] = round(row["items_per_s"]
                                                  / report["floor_msgs_per_s"], 3)
            report["runs"].append(row)
            if not args.json:
                print(f"map of {args.items:,} items: {'completed' if ok else 'NOT completed'}"
                      f" in {elapsed:.2f}s ({row['items_per_s']:,} items/s, "
                      f"{row['items_per_s_over_floor']:.3f} of the raw floor of "
                      f"{report['floor_msgs_per_s']:,.0f} msgs/s; {row['record_saves']:,} "
                      "record saves)", flush=True)
        await nc.drain()
    finally:
        for svc in reversed(services):
            svc.stop()
        server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="natsflow-bench-map-") as tmp:
        report = asyncio.run(bench(args, Path(tmp)))
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if report["runs"] and all(r["completed"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
