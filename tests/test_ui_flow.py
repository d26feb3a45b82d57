"""The web UI's schedules, triggers and limits pages in headless Chromium: a schedule
with its next fire times and last runs, paused from its button with a note; a trigger
with its counters, paused and resumed; a limit with its permits in use and who waits.
Each test leaves a screenshot in docs/ui/ for docs/ui.md."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Page, expect
from ui_browser import Ui, browser_fixture, ui_fixture  # noqa: F401  (fixtures)

from contracts.keys import CreateKeyRequest, Scope
from contracts.models import WorkflowState
from natsflow.schedule_client import ScheduleClient
from natsflow.trigger_client import TriggerClient
from transport.keys import KeyStore
from transport.streams import Topology

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "ui"


async def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


async def test_schedules_show_fire_times_and_runs_and_pause_with_a_note(ui: Ui) -> None:
    schedules = ScheduleClient(ui.client)
    name = "nightly-report"  # each test has a deployment (a prefix) of its own
    await schedules.create({"name": name, "spec": {"cron": "30 2 * * *",
                                                    "timezone": "Europe/Paris"},
                            "workflow": {"config": {"name": "report", "input": {"scope": "all"},
                                                    "steps": [{"id": "note", "kind": "transform",
                                                               "output": "${input.scope}"}]}}})
    fired = await schedules.trigger(name)
    done = (await ui.client.wait(fired.workflow_id, timeout=20)).status
    assert done is not None and done.state == WorkflowState.COMPLETED
    page = await ui.goto("/ui/schedules.html")
    row = page.locator(f'#nf-schedules tr[data-schedule="{name}"]')
    await expect(row).to_contain_text("cron 30 2 * * * (Europe/Paris)")
    await expect(row.locator('[data-role="next"] li')).to_have_count(3)
    run = row.locator(f'[data-role="recent"] li[data-workflow-id="{fired.workflow_id}"]')
    await expect(run.locator('[data-state="completed"]')).to_be_visible()
    await expect(run.locator("a")).to_have_attribute(
        "href", f"/ui/run.html?id={fired.workflow_id}")
    await _shot(page, "schedules")
    # Pause from the button, with a note: the row says paused, and why.
    await row.locator('[data-action="pause"]').click()
    dialog = page.locator("#nf-pause-dialog")
    # The API's refusal, naming the field, in the dialog (the page checks nothing itself).
    await dialog.locator('input[name="note"]').fill("x" * 501)
    await dialog.locator('button[type="submit"]').click()
    await expect(dialog.locator('[role="alert"]')).to_contain_text("note")
    await dialog.locator('input[name="note"]').fill("warehouse migration")
    await dialog.locator('button[type="submit"]').click()
    await expect(row).to_have_attribute("data-paused", "true")
    await expect(row.locator('[data-state="paused"]')).to_be_visible()
    await expect(row.locator('[data-role="note"]')).to_have_text("warehouse migration")
    info = await schedules.get(name)
    assert info.schedule.paused and info.schedule.note == "warehouse migration"
    # The runs list filtered by the schedule shows its run, and no other.
    await ui.client.create({"name": "report", "id": f"{name}-by-hand", "steps": [
        {"id": "note", "kind": "transform", "output": "x"}]})
    await ui.client.wait(f"{name}-by-hand", timeout=20)
    await row.locator('[data-role="runs"]').click()
    await expect(page.locator('[data-filter="schedule"]')).to_have_value(name)
    await expect(page.locator("#nf-runs tbody tr")).to_have_count(1)
    await expect(page.locator(f'tr[data-workflow-id="{fired.workflow_id}"]')).to_be_visible()
    # Delete, after a confirmation: the row goes, and so does the schedule.
    await page.goto(ui.url + "/ui/schedules.html")
    # Fire now, paused or not: the message names the new run.
    await row.locator('[data-action="trigger"]').click()
    await expect(page.locator("#nf-messages")).to_contain_text(f"{name}: fired as {name}-")
    await row.locator('[data-action="delete"]').click()
    await page.locator('#nf-delete-dialog button[type="submit"]').click()
    await expect(row).to_have_count(0)
    assert name not in [s.name for s in (await schedules.list()).schedules]


async def test_triggers_show_their_counters_and_pause_and_resume(ui: Ui) -> None:
    triggers = TriggerClient.of(ui.client)
    name = "orders"
    # Core NATS subjects are the server's, not the deployment's: one of its own.
    subject = f"shop{uuid.uuid4().hex[:4]}.orders.*"
    await triggers.create_trigger({
        "name": name, "subject": subject, "when": "msg.data.total >= 100",
        "config": {"name": "fulfil", "steps": [{"id": "r", "kind": "transform",
                                                 "output": "${input.total}"}]},
        "input": {"total": "${msg.data.total}"}, "id": name + "-${msg.data.id}"})
    for i, total in enumerate([250, 5, 120]):
        await ui.nc.publish(subject.replace("*", "created"),
                            json.dumps({"id": i, "total": total}).encode())
    for _ in range(100):
        stats = await triggers.trigger_stats(name)
        if stats.started == 2 and stats.skipped == 1:
            break
        await asyncio.sleep(0.1)
    assert (stats.started, stats.skipped) == (2, 1)
    page = await ui.goto("/ui/triggers.html")
    row = page.locator(f'#nf-triggers tr[data-trigger="{name}"]')
    await expect(row.locator('[data-counter="received"]')).to_have_text("3")
    await expect(row.locator('[data-counter="matched"]')).to_have_text("2")
    await expect(row.locator('[data-counter="skipped"]')).to_have_text("1")
    await expect(row.locator('[data-counter="started"]')).to_have_text("2")
    await expect(row.locator('[data-counter="failed"]')).to_have_text("0")
    await _shot(page, "triggers")
    await row.locator('[data-action="pause"]').click()
    dialog = page.locator("#nf-pause-dialog")
    await dialog.locator('input[name="note"]').fill("supplier outage")
    await dialog.locator('button[type="submit"]').click()
    await expect(row).to_have_attribute("data-paused", "true")
    await expect(row.locator('[data-role="note"]')).to_have_text("supplier outage")
    assert (await triggers.get_trigger(name)).trigger.paused
    await row.locator('[data-action="resume"]').click()
    await expect(row).to_have_attribute("data-paused", "false")
    assert not (await triggers.get_trigger(name)).trigger.paused
    await triggers.delete_trigger(name)


async def test_limits_show_permits_in_use_and_who_waits(ui: Ui) -> None:
    name = "invoice"
    config = {"name": name, "concurrency": {"key": "${input.customer}", "limit": 1},
              "steps": [{"id": "bill", "task": "demo.sleep",
                         "input": {"seconds": 30, "steps": 30}}]}
    first, second = f"{name}-1", f"{name}-2"
    await ui.client.create({**config, "id": first, "input": {"customer": "acme"}})
    await ui.client.create({**config, "id": second, "input": {"customer": "acme"}})
    try:
        for _ in range(100):
            limits = (await ui.client.list_limits(limit=f"wf:{name}")).limits
            if limits and limits[0].in_use == 1 and limits[0].waiting == 1:
                break
            await asyncio.sleep(0.1)
        assert [(x.key, x.in_use, x.waiting) for x in limits] == [("acme", 1, 1)]
        page = await ui.goto("/ui/limits.html")
        row = page.locator(f'#nf-limits tr[data-limit="wf:{name}"][data-key="acme"]')
        await expect(row.locator('[data-role="in-use"]')).to_have_text("1 / 1")
        await expect(row.locator('[data-role="waiting"]')).to_have_text("1")
        await expect(row.locator(f'a[data-workflow-id="{first}"]')).to_be_visible()
        await expect(row.locator(f'a[data-workflow-id="{second}"]')).to_be_visible()
        await _shot(page, "limits")
    finally:
        await ui.client.stop(first)
        await ui.client.stop(second)


@pytest.mark.parametrize("ui", [{"auth": True}], indirect=True)
async def test_with_a_read_only_key_the_pages_show_and_the_api_refuses_pausing(
        ui: Ui) -> None:
    store = await KeyStore.open(ui.nc.jetstream(), Topology(ui.settings.subjects))
    made = await store.create(CreateKeyRequest(
        name="ui-flow-read", scopes=[Scope.WORKFLOWS_READ, Scope.DEFINITIONS_READ],
        namespaces=["*"]), now=datetime.now(UTC))
    triggers = TriggerClient.of(ui.client)
    await triggers.create_trigger({
        "name": "orders", "subject": f"shop{uuid.uuid4().hex[:4]}.orders.*",
        "config": {"name": "fulfil", "steps": [{"id": "r", "kind": "transform",
                                                 "output": "x"}]}, "id": "o-${msg.data.id}"})
    page = await ui.goto("/ui/triggers.html")
    key = page.locator("#nf-key-dialog")
    await key.locator("input").fill(made.key)
    await key.locator('button[type="submit"]').click()
    row = page.locator('#nf-triggers tr[data-trigger="orders"]')
    await expect(row).to_have_attribute("data-paused", "false")
    await row.locator('[data-action="pause"]').click()
    dialog = page.locator("#nf-pause-dialog")
    await dialog.locator('button[type="submit"]').click()
    await expect(dialog.locator('[role="alert"]')).to_contain_text("403")
    assert not (await triggers.get_trigger("orders")).trigger.paused
    await triggers.delete_trigger("orders")
