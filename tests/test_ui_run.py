"""The run page in a real headless Chromium, against the real services and nats-server.

Each test starts the orchestrator and the demo worker (conftest), serves the gateway with
uvicorn on a free port and opens ``/ui/run.html?id=...`` as a person would; assertions are
on what the page shows (node classes and texts, the chosen step's panel, messages).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from nats.aio.client import Client
from ui_browser import require_chromium, serve_gateway

from contracts.keys import CreateKeyRequest, Scope
from gateway import KeyAuth, create_app
from natsflow.embedded import EmbeddedNats, free_port
from transport.connect import NatsSettings, connect
from transport.keys import KeyStore
from transport.streams import Topology

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = require_chromium(module=True)

pytestmark = pytest.mark.asyncio(loop_scope="module")
expect = playwright_api.expect
expect.set_options(timeout=15_000)  # a loaded CI machine: what a person would wait
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "ui" / "run.png"


@dataclass
class Site:
    url: str
    http: httpx.AsyncClient
    page: Any  # playwright Page
    requests: list[str]

    async def open_run(self, workflow_id: str) -> None:
        await self.page.goto(f"{self.url}/ui/run.html?id={workflow_id}")
        await expect(self.page.locator("body[data-ready='1']")).to_have_count(1)

    def node(self, step_id: str) -> Any:
        return self.page.locator(f"#graph g.node[data-step='{step_id}']")

    async def submit(self, body: dict[str, Any]) -> str:
        resp = await self.http.post("/workflows", json=body)
        assert resp.status_code in (200, 202), resp.text
        return str(resp.json()["id"])


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


@dataclass
class Services:
    """The gateway's URL, an HTTP client of it and the browser."""

    url: str
    http: httpx.AsyncClient
    browser: Any
    settings: NatsSettings
    nc: Client


# One deployment and one browser for the module (a page per test): starting them per
# test would be most of the file's time.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory,
                   ) -> AsyncIterator[Services]:
    settings = NatsSettings(servers=[nats_server.url], prefix="t" + uuid.uuid4().hex[:10])
    # The orchestrator and the demo worker as a user starts them, each its own process;
    # the gateway in this process (it serves the page's files and the API).
    env = {**os.environ, "NATS_URL": nats_server.url, "NATSFLOW_PREFIX": settings.prefix}
    logs = tmp_path_factory.mktemp("ui-run-logs")
    natsflow = str(Path(sys.executable).parent / "natsflow")
    procs = [_start([natsflow, "orchestrator"], env, logs / "orchestrator.log"),
             _start([natsflow, "worker", "natsflow.demo:worker"], env, logs / "worker.log")]
    nc = await connect(settings, name="test-ui-run")
    port = free_port()
    app = create_app(settings, auth=None, nc=nc, heartbeat=0.5)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        async with playwright_api.async_playwright() as pw, \
                httpx.AsyncClient(base_url=url, timeout=30) as http:
            browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                               args=["--no-sandbox"])
            deadline = time.monotonic() + 30
            # Ready when the orchestrator answers (an unknown workflow is its 404).
            while (await http.get("/workflows/none-yet")).status_code != 404:
                assert all(p.poll() is None for p in procs), (logs / "orchestrator.log")
                assert time.monotonic() < deadline, "the orchestrator never answered"
                await asyncio.sleep(0.1)
            yield Services(url, http, browser, settings, nc)
            await browser.close()
    finally:
        server.should_exit = True
        await serving
        await nc.close()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest_asyncio.fixture(loop_scope="module")
async def site(services: Services) -> AsyncIterator[Site]:
    page = await services.browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    yield Site(services.url, services.http, page, requests)
    await page.close()
    assert not errors, errors


TOUR = {
    "name": "tour", "input": {"tier": "gold", "amount": 10, "pages": ["a", "b", "c", "d"]},
    "steps": [
        {"id": "fetch", "task": "demo.sleep", "input": {"seconds": 1.5, "steps": 3}},
        {"id": "flaky", "task": "demo.flaky", "input": {"fail_times": 1},
         "retry": {"max_attempts": 3, "initial_interval": 0}},
        {"id": "fraud-check", "task": "demo.echo", "when": "input.amount > 1000"},
        {"id": "route", "kind": "switch", "value": "input.tier", "depends_on": ["fetch"],
         "cases": {"gold": ["fast-lane"], "silver": ["standard"]}, "default": ["standard"]},
        {"id": "fast-lane", "task": "demo.echo", "depends_on": ["route"]},
        {"id": "standard", "task": "demo.echo", "depends_on": ["route"]},
        {"id": "pages", "kind": "map", "items": "input.pages", "depends_on": ["flaky"],
         "step": {"task": "demo.echo", "input": {"page": "${item}"}}},
        {"id": "invoice", "kind": "workflow", "definition": "ui-child", "depends_on": ["flaky"]},
        {"id": "done", "kind": "transform", "join": "any",
         "depends_on": ["fast-lane", "standard", "pages", "invoice", "fraud-check"],
         "output": {"lane": "${steps.route.output.case}"}},
    ],
}


async def test_nodes_change_colour_as_steps_finish(site: Site) -> None:
    put = await site.http.put("/definitions/ui-child", json={
        "steps": [{"id": "hi", "task": "demo.echo", "input": {"text": "child"}}]})
    assert put.status_code in (200, 201), put.text
    wid = await site.submit({**TOUR, "id": "tour_1", "start": False})
    await site.open_run(wid)
    page = site.page
    await expect(site.node("fetch")).to_have_class(re.compile(r"\bst-pending\b"))
    assert (await site.http.post(f"/workflows/{wid}/start")).status_code == 200
    # While the slow step runs it is drawn as running; when it ends, as succeeded.
    await expect(site.node("fetch")).to_have_class(re.compile(r"\bst-running\b"))
    running = await site.node("fetch").locator("rect").first.evaluate(
        "r => getComputedStyle(r).stroke")
    await expect(site.node("fetch")).to_have_class(re.compile(r"\bst-succeeded\b"))
    done = await site.node("fetch").locator("rect").first.evaluate(
        "r => getComputedStyle(r).stroke")
    assert running != done  # the colour a person sees changed
    await expect(page.locator("#run-state")).to_have_text("completed")
    # A `when` skip, the switch's branch taken and the one not taken.
    await expect(site.node("fraud-check")).to_have_class(re.compile(r"\bst-skipped\b"))
    await expect(site.node("fraud-check").locator(".line")).to_contain_text("condition is false")
    await expect(site.node("route").locator(".line")).to_have_text("case gold")
    await expect(site.node("fast-lane")).to_have_class(re.compile(r"\bst-succeeded\b"))
    await expect(site.node("standard")).to_have_class(re.compile(r"\bst-skipped\b"))
    edge = page.locator("path.edge[data-from='route'][data-to='standard']")
    await expect(edge).to_have_class(re.compile(r"\bskipped\b"))
    # A step that failed once, then succeeded: marked, and both attempts on the timeline.
    await expect(site.node("flaky")).to_have_class(re.compile(r"\bretried\b"))
    await expect(site.node("flaky").locator(".badge")).to_have_text("↻1")
    bars = page.locator(".tl-row[data-step='flaky'] .tl-bar")
    await expect(bars).to_have_count(2)
    await expect(bars.nth(0)).to_have_class(re.compile(r"o-failed"))
    await expect(bars.nth(1)).to_have_class(re.compile(r"o-succeeded"))
    await site.node("flaky").click()
    await expect(page.locator("#detail table.attempts tbody tr")).to_have_count(2)
    await expect(page.locator("#detail table.attempts")).to_contain_text("planned failures")
    # The map: one node with its progress.
    await expect(site.node("pages").locator(".counts")).to_have_text(
        "4 done · 0 running · 0 failed of 4")
    # The event log shows every event, replayed then live, in order and without gaps.
    last = int(await page.locator("body").get_attribute("data-seq") or 0)
    status = (await site.http.get(f"/workflows/{wid}")).json()
    assert last == status["last_seq"]
    seqs = [int(s) for s in await page.locator(".log-row").evaluate_all(
        "rows => rows.map(r => r.dataset.seq)")]
    assert seqs == list(range(1, last + 1))
    await site.node("fetch").click()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    # The page asked nothing of any host but the gateway.
    assert all(u.startswith(site.url) for u in site.requests), site.requests
    # The child workflow: linked to its own run page, which links back.
    child = site.node("invoice").locator("a.child")
    await expect(child).to_have_attribute("href", re.compile(r"run\.html\?id=tour_1-invoice-"))
    await child.click()
    await expect(page.locator("#run-title")).to_have_text(re.compile(r"^tour_1-invoice-"))
    await expect(page.locator("#run-links a")).to_have_text("parent: tour_1")
    await expect(site.node("hi")).to_have_class(re.compile(r"\bst-succeeded\b"))


async def test_a_failed_steps_error_is_readable(site: Site) -> None:
    wid = await site.submit({"name": "doomed", "id": "doomed_1", "steps": [
        {"id": "prepare", "task": "demo.noop"},
        {"id": "explode", "task": "demo.fail", "depends_on": ["prepare"]},
        {"id": "never", "task": "demo.noop", "depends_on": ["explode"]}]})
    await site.open_run(wid)
    page = site.page
    await expect(site.node("explode")).to_have_class(re.compile(r"\bst-failed\b"))
    await expect(site.node("explode").locator(".line")).to_have_text("failed: demo-failure")
    await expect(page.locator("#run-state")).to_have_text("failed")
    await expect(page.locator("#run-error")).to_contain_text("demo.fail always fails")
    await site.node("explode").click()
    await expect(page.locator("#detail .error-box")).to_contain_text(
        "demo-failure: demo.fail always fails")
    # A refusal of the API is shown as its message: a failed workflow cannot be paused.
    await page.locator("#actions button[data-action='pause']").click()
    await expect(page.locator("#nf-messages .nf-message-error")).to_contain_text("409")


async def test_signal_from_the_button(site: Site) -> None:
    wid = await site.submit({"name": "expense", "id": "expense_ui", "steps": [
        {"id": "approval", "kind": "wait", "signal": "approval"},
        {"id": "pay", "task": "demo.echo", "depends_on": ["approval"],
         "input": {"by": "${steps.approval.output.by}"}}]})
    await site.open_run(wid)
    page = site.page
    await expect(site.node("approval")).to_have_class(re.compile(r"\bst-waiting\b"))
    await expect(site.node("approval").locator(".line")).to_have_text(
        "waiting for signal approval")
    await page.locator("#actions button[data-action='signal']").click()
    dialog = page.locator("#nf-signal-dialog")
    await expect(dialog.locator("input[name='name']")).to_have_value("approval")
    await dialog.locator("textarea[name='payload']").fill('{"decision": "approved", "by": "ada"}')
    await dialog.locator("[data-role='submit']").click()
    await expect(page.locator("#nf-messages .nf-message-ok")).to_contain_text("signal sent")
    await expect(site.node("pay")).to_have_class(re.compile(r"\bst-succeeded\b"))
    await site.node("pay").click()
    await expect(page.locator("#detail pre.output")).to_contain_text('"ada"')
    # Signalling a finished workflow is refused with the API's message.
    await page.locator("#actions button[data-action='signal']").click()
    await dialog.locator("input[name='name']").fill("approval")
    await dialog.locator("textarea[name='payload']").fill("{}")
    await dialog.locator("[data-role='submit']").click()
    await expect(dialog.locator(".nf-message-error")).to_contain_text("409")


async def test_a_map_of_10000_items_shows_its_progress_and_stops(site: Site) -> None:
    wid = await site.submit({"name": "big-map", "id": "map_10k",
                             "input": {"items": list(range(10_000))},
                             "steps": [{"id": "fan", "kind": "map", "items": "input.items",
                                        "max_concurrency": 1000,
                                        "step": {"task": "demo.noop"}}]})
    await site.open_run(wid)
    page = site.page
    node = site.node("fan")
    counts = node.locator(".counts")
    await expect(counts).to_contain_text("of 10000")

    async def done() -> int:
        return int(await node.get_attribute("data-done") or 0)

    # Progress moves on live, without a reload.
    await expect(node).to_have_attribute("data-done", re.compile(r"^[1-9]\d*$"))
    first = await done()
    deadline = time.monotonic() + 20
    while await done() <= first:
        assert time.monotonic() < deadline, "the map's progress never moved"
        await asyncio.sleep(0.2)
    await expect(counts).to_contain_text(re.compile(r"[1-9]\d* running"))
    # The drill-down: a window of rows over the items, never 10,000 elements.
    await node.click()
    rows = page.locator("#detail .item-row")
    await expect(rows.first).to_be_visible()
    assert await rows.count() < 40
    await page.locator("#detail .map-filter button[data-filter='running']").click()
    await expect(rows.first).to_contain_text("running")
    await expect(rows.first).to_contain_text("attempt 1")
    await page.locator("#detail .map-filter button[data-filter='all']").click()
    await page.locator("#detail .item-window").evaluate("w => { w.scrollTop = w.scrollHeight; }")
    await expect(page.locator("#detail .item-row[data-index='9999']")).to_be_visible()
    assert await rows.count() < 40
    assert await page.evaluate("document.getElementsByTagName('*').length") < 2000
    # Stop from the button: the map is cancelled and the workflow ends stopped.
    await page.locator("#actions button[data-action='stop']").click()
    await expect(page.locator("#nf-messages .nf-message-ok")).to_contain_text("map_10k: stopping")
    await expect(page.locator("#run-state")).to_have_text("stopped", timeout=20_000)
    await expect(node).to_have_class(re.compile(r"\bst-cancelled\b"))


async def test_200_steps_render_and_stay_live(site: Site) -> None:
    steps = [{"id": f"s{i:03d}", "task": "demo.noop",
              "depends_on": [f"s{i - 10:03d}"] if i >= 10 else []} for i in range(200)]
    wid = await site.submit({"name": "wide", "id": "wide_200", "start": False, "steps": steps})
    began = time.perf_counter()
    await site.open_run(wid)
    opened = time.perf_counter() - began
    page = site.page
    await expect(page.locator("#graph g.node")).to_have_count(200)
    assert (await site.http.post(f"/workflows/{wid}/start")).status_code == 200
    began = time.perf_counter()
    await expect(page.locator("#run-state")).to_have_text("completed", timeout=40_000)
    await expect(page.locator("#graph g.node.st-succeeded")).to_have_count(200)
    finished = time.perf_counter() - began
    stats = await page.evaluate("window.natsflowRun.stats")
    print(f"\n200 steps: page ready in {opened * 1000:.0f} ms (layout "
          f"{stats['layoutMs']:.0f} ms, draw {stats['drawMs']:.0f} ms); run shown "
          f"completed {finished:.1f} s after start; {stats['events']} events in "
          f"{stats['batches']} batches, longest batch {stats['maxBatchMs']:.1f} ms")
    # Smoke bounds only (real figures: docs/ui-run.md).
    assert opened < 10
    assert stats["maxBatchMs"] < 1000


async def test_retry_from_the_button_follows_the_new_run(site: Site) -> None:
    wid = await site.submit({"name": "second-go", "id": "retry_ui", "steps": [
        {"id": "wobbly", "task": "demo.flaky", "input": {"fail_times": 1}},
        {"id": "after", "task": "demo.noop", "depends_on": ["wobbly"]}]})
    await site.open_run(wid)
    page = site.page
    await expect(page.locator("#run-state")).to_have_text("failed")
    await expect(site.node("wobbly")).to_have_class(re.compile(r"\bst-failed\b"))
    await expect(page.locator("#live")).to_have_text("finished")
    # The stream ended with the run; a retry from the page follows the new run live.
    await page.locator("#actions button[data-action='retry']").click()
    await page.locator("#nf-retry-dialog [data-role='submit']").click()
    await expect(page.locator("#run-state")).to_have_text("completed")
    await expect(site.node("wobbly")).to_have_class(re.compile(r"\bst-succeeded\b"))
    await expect(site.node("after")).to_have_class(re.compile(r"\bst-succeeded\b"))
    await expect(site.node("wobbly").locator(".badge")).to_have_text("↻1")
    await expect(page.locator(".tl-row[data-step='wobbly'] .tl-bar")).to_have_count(2)


async def test_with_keys_the_run_page_asks_once_and_stays_live(services: Services,
                                                               site: Site) -> None:
    store = await KeyStore.open(services.nc.jetstream(), Topology(services.settings.subjects))
    made = await store.create(CreateKeyRequest(name="ui-run", scopes=[Scope.WORKFLOWS_READ],
                                               namespaces=["*"]), now=datetime.now(UTC))
    wid = await site.submit({"name": "keyed", "id": "keyed_1", "start": False,
                             "steps": [{"id": "only", "task": "demo.noop"}]})
    async with serve_gateway(services.settings, services.nc, auth=KeyAuth()) as url:
        page = site.page
        await page.goto(f"{url}/ui/run.html?id={wid}")
        dialog = page.locator("#nf-key-dialog")
        await dialog.locator("input").fill(made.key)
        await dialog.locator('button[type="submit"]').click()
        await expect(page.locator("body[data-ready='1']")).to_have_count(1)
        await expect(site.node("only")).to_have_class(re.compile(r"\bst-pending\b"))
        # The event stream carries the key too: the page follows the run live.
        assert (await site.http.post(f"/workflows/{wid}/start")).status_code == 200
        await expect(site.node("only")).to_have_class(re.compile(r"\bst-succeeded\b"))
        # A read-only key: the API refuses the action, and the page says so.
        await page.locator("#actions button[data-action='rerun']").click()
        await page.locator("#nf-rerun-dialog [data-role='submit']").click()
        await expect(page.locator("#nf-rerun-dialog .nf-message-error")).to_contain_text("403")


async def test_a_maps_failed_items_are_listed_with_their_errors(site: Site) -> None:
    wid = await site.submit({"name": "some-fail", "id": "map_fail", "on_failure": "continue",
                             "input": {"items": [0, 1, 2, 3, 4]},
                             "steps": [{"id": "fan", "kind": "map", "items": "input.items",
                                        "step": {"task": "demo.fail"}}]})
    await site.open_run(wid)
    page = site.page
    node = site.node("fan")
    await expect(node).to_have_class(re.compile(r"\bst-failed\b"))
    await expect(node.locator(".counts")).to_have_text("0 done · 0 running · 5 failed of 5")
    await node.click()
    await expect(page.locator("#detail .error-box").first).to_contain_text("items-failed")
    await page.locator("#detail .map-filter button[data-filter='failed']").click()
    rows = page.locator("#detail .item-row")
    await expect(rows).to_have_count(5)
    await expect(rows.first).to_contain_text("demo-failure: demo.fail always fails")
