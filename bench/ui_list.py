"""Benchmark: the web UI's runs page with 100,000 workflows stored, in headless Chromium.

Usage::

    uv run python bench/ui_list.py                    # 100,000 workflows, 10 page loads
    uv run python bench/ui_list.py --workflows 5000 --loads 5 --json

Seeds the summaries bucket as ``bench/list.py`` does, starts the index service
(``natsflow index``) as its own process and the gateway (uvicorn, in this process), then
opens ``/ui/`` in Debian's Chromium (``/usr/bin/chromium``) ``--loads`` times and reports
when the first page of 50 runs was on screen: the page's ``nf:first-page`` mark, in ms
from the start of the navigation (the HTML, the scripts, the API request and the
rendering), and when the counts by state were shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn
from playwright.async_api import async_playwright

from bench._load import percentile
from bench._procs import Service
from bench.list import seed
from gateway import create_app
from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats, free_port
from transport.connect import NatsSettings, connect
from transport.streams import Topology


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workflows", type=int, default=100_000)
    p.add_argument("--loads", type=int, default=10)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log")
    settings = NatsSettings(servers=[server.url], prefix="bui" + uuid.uuid4().hex[:6])
    server.start()
    index: Service | None = None
    report: dict[str, Any] = {"workflows": args.workflows, "loads": args.loads}
    try:
        nc = await connect(settings, name="bench-ui")
        js = nc.jetstream()
        s = settings.subjects
        await js.create_key_value(Topology(s).summaries_kv())
        # What the orchestrator declares (none runs here): the page follows the events.
        await js.add_stream(Topology(s).events())
        await seed(js, s, args.workflows)
        env = {"NATS_URL": server.url, "NATSFLOW_PREFIX": settings.prefix}
        index = Service("index", env, workdir / "index.log").start()
        client = NatsflowClient(nc, s, timeout=60.0)
        began = time.perf_counter()
        while True:  # until the index holds the oldest summary too
            try:
                oldest = await client.list_workflows(created_before=datetime(
                    2026, 1, 1, 0, 0, 1, tzinfo=UTC), limit=1)
                if oldest.items:
                    break
            except Exception:
                pass
            if time.perf_counter() - began > 180:
                raise RuntimeError("the index did not fill in 180 s")
            await asyncio.sleep(0.5)
        port = free_port()
        app = create_app(settings, auth=None, nc=nc)
        web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                            lifespan="on", log_level="warning", ws="none"))
        serving = asyncio.create_task(web.serve())
        while not web.started:
            if serving.done():
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}/ui/"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium",
                                               args=["--no-sandbox", "--disable-gpu"])
            page = await browser.new_page()
            await page.goto(url)  # once, to warm the browser's cache as a person's is
            await page.wait_for_selector('[data-count="all"] b', timeout=60_000)
            report["counted"] = int(await page.inner_text('[data-count="all"] b'))
            first, counts = [], []
            for _ in range(args.loads):
                t = time.perf_counter()
                await page.goto(url)
                await page.wait_for_selector("#nf-runs tbody tr:nth-child(50)")
                await page.wait_for_selector('[data-count="all"] b')
                counts.append((time.perf_counter() - t) * 1000)
                first.append(await page.evaluate(
                    "performance.getEntriesByName('nf:first-page')[0].startTime"))
            await browser.close()
        report["first_page_ms"] = {"p50": round(percentile(first, 50), 1),
                                   "max": round(max(first), 1)}
        report["with_counts_ms"] = {"p50": round(percentile(counts, 50), 1),
                                    "max": round(max(counts), 1)}
        web.should_exit = True
        await serving
        await nc.drain()
    finally:
        if index is not None:
            index.stop()
        server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="natsflow-bench-ui-") as tmp:
        report = asyncio.run(bench(args, Path(tmp)))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['workflows']} workflows stored, {report['loads']} loads of /ui/: "
              f"first page of 50 on screen p50 {report['first_page_ms']['p50']} ms "
              f"(max {report['first_page_ms']['max']}); with the counts p50 "
              f"{report['with_counts_ms']['p50']} ms (max {report['with_counts_ms']['max']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
