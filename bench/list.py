"""Benchmark: a filtered page of the workflow list with 100,000 workflows stored.

Usage::

    uv run python bench/list.py                       # 100,000 workflows, 300 queries
    uv run python bench/list.py --workflows 5000 --queries 50 --json

Starts its own nats-server and the index service (`natsflow index`) as its own process,
stores N workflow summaries in the summaries bucket directly (what the engine writes
when a workflow changes state; running 100,000 real workflows first would only make the
benchmark slow), waits until the index holds them all, then times `workflow.list`
requests (limit 50) through the NATS API and `GET /workflows` through the gateway (in
this process, over ASGI), with several filters. Prints p50/p99 per filter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from nats.js.client import JetStreamContext

from bench._load import percentile
from bench._procs import Service
from contracts.ids import new_id
from contracts.messages import ListWorkflowsRequest
from contracts.models import WorkflowState, WorkflowSummary
from contracts.subjects import Subjects
from gateway import create_app
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect
from transport.streams import Topology

FILTERS: dict[str, dict[str, Any]] = {
    "no filter": {},
    "state=failed (10%)": {"state": ["failed"]},
    "name=billing (1 in 4)": {"name": "billing"},
    "label team=red (1 in 8)": {"labels": {"team": "red"}},
    "state=failed + name=billing": {"state": ["failed"], "name": "billing"},
    # The web UI's runs page asks for its first page with the counts by state.
    "UI first page: counts": {"counts": True},
    "UI: name=billing + counts": {"name": "billing", "counts": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workflows", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300, help="per filter and path")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def summaries(n: int) -> list[WorkflowSummary]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    names = ["billing", "orders", "reports", "emails"]
    teams = ["red", "blue", "green", "amber", "teal", "pink", "gray", "navy"]
    out = []
    for i in range(n):
        failed = i % 10 == 0
        out.append(WorkflowSummary(
            id=new_id(), name=names[i % 4], labels={"team": teams[i % 8]},
            state=WorkflowState.FAILED if failed else WorkflowState.COMPLETED,
            created_at=t0 + timedelta(seconds=i), finished_at=t0 + timedelta(seconds=i + 1),
            error_code="boom" if failed else None))
    return out


async def seed(js: JetStreamContext, s: Subjects, n: int) -> None:
    """Store :func:`summaries` of ``n`` workflows in the summaries bucket (it exists)."""
    pending = []
    for sm in summaries(n):
        pending.append(await js.publish_async(
            s.kv_put(s.summaries_bucket, sm.id), sm.model_dump_json().encode()))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log")
    settings = NatsSettings(servers=[server.url], prefix="blist" + uuid.uuid4().hex[:6])
    server.start()
    orch: Service | None = None
    report: dict[str, Any] = {"workflows": args.workflows, "limit": 50, "results": []}
    try:
        nc = await connect(settings, name="bench-list")
        js = nc.jetstream()
        s = settings.subjects
        await js.create_key_value(Topology(s).summaries_kv())
        began = time.perf_counter()
        await seed(js, s, args.workflows)
        report["seed_seconds"] = round(time.perf_counter() - began, 1)
        env = {"NATS_URL": server.url, "NATSFLOW_PREFIX": settings.prefix}
        orch = Service("index", env, workdir / "index.log").start()
        client = NatsflowClient(nc, s, timeout=60.0)
        began = time.perf_counter()
        while True:
            try:
                page = await client.list_workflows(limit=1)
                if page.items and page.items[0].created_at.year == 2026:
                    # full once the oldest is in: ask for the count by paging the tail
                    first = await client.list_workflows(created_before=datetime(
                        2026, 1, 1, 0, 0, 1, tzinfo=UTC), limit=5)
                    if first.items:
                        break
            except Exception:
                pass
            if time.perf_counter() - began > 120:
                raise RuntimeError("the index did not fill in 120 s")
            await asyncio.sleep(0.2)
        report["index_fill_seconds"] = round(time.perf_counter() - began, 1)
        transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for label, filters in FILTERS.items():
                query = ListWorkflowsRequest.model_validate({**filters, "limit": 50})
                params: dict[str, Any] = {"limit": 50}
                if "state" in filters:
                    params["state"] = filters["state"]
                if "name" in filters:
                    params["name"] = filters["name"]
                if filters.get("counts"):
                    params["counts"] = "true"
                if "labels" in filters:
                    params["label"] = [f"{k}:{v}" for k, v in filters["labels"].items()]
                for path in ("nats", "http"):
                    times = []
                    for _ in range(args.queries):
                        t = time.perf_counter()
                        if path == "nats":
                            page = await client.list_workflows(query)
                            got = len(page.items)
                        else:
                            resp = await http.get("/workflows", params=params)
                            got = len(resp.json()["items"])
                        times.append((time.perf_counter() - t) * 1000)
                    row = {"filter": label, "path": path, "items": got,
                           "p50_ms": round(percentile(times, 50), 2),
                           "p99_ms": round(percentile(times, 99), 2)}
                    report["results"].append(row)
                    if not args.json:
                        print(f"{label:30} {path:4} {got:3} items  p50 {row['p50_ms']:6.2f} ms"
                              f"  p99 {row['p99_ms']:6.2f} ms", flush=True)
        await nc.drain()
    finally:
        if orch is not None:
            orch.stop()
        server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="natsflow-bench-list-") as tmp:
        report = asyncio.run(bench(args, Path(tmp)))
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if report["results"] else 1


if __name__ == "__main__":
    sys.exit(main())
