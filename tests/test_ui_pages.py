"""The web UI's other pages in headless Chromium: definitions (versions, a diff, "Run"
with a form made from the input JSON Schema), batches with their progress, dead letters
with their reasons. Each test leaves a screenshot in docs/ui/ for docs/ui.md, so the
pictures there are of the UI as it is."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from helpers import read_dead_letters
from playwright.async_api import Page, expect
from ui_browser import Ui, browser_fixture, ui_fixture  # noqa: F401  (fixtures)

from contracts.models import WorkflowState

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "ui"

GREET = {
    "name": "greet",
    "input_schema": {"type": "object", "required": ["who"], "properties": {
        "who": {"type": "string", "title": "Who", "description": "Whom to greet"},
        "times": {"type": "integer", "minimum": 1, "default": 1},
        "loud": {"type": "boolean"}}},
    "steps": [{"id": "hello", "task": "demo.echo", "input": {"text": "${input.who}"}}],
}


async def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


async def test_definitions_versions_diff_and_run_from_the_schema_form(ui: Ui) -> None:
    await ui.client.put_definition("greet", GREET)
    await ui.client.put_definition("greet", {**GREET, "steps": [
        *GREET["steps"], {"id": "shout", "task": "demo.echo", "depends_on": ["hello"],
                          "input": {"text": "${steps.hello.output.text}"}}]})
    page = await ui.goto("/ui/definitions.html")
    await expect(page.locator('#nf-definitions tr[data-definition="greet"]')).to_contain_text("v2")
    await _shot(page, "definitions")
    await page.click('#nf-definitions a:text("greet")')
    await expect(page.locator("#nf-versions tbody tr")).to_have_count(2)
    # The diff of v1 -> v2 shows the added step.
    await expect(page.locator("#nf-diff .nf-add").first).to_be_visible()
    await expect(page.locator("#nf-diff")).to_contain_text('"id": "shout"')
    await _shot(page, "definition")
    # Run: the form has the schema's fields; a missing required one is named.
    await page.click('[data-action="run"]')
    dialog = page.locator("#nf-run-dialog")
    await expect(dialog.locator('[data-field="input.who"]')).to_be_visible()
    await expect(dialog.locator('[data-field="input.times"]')).to_have_value("1")
    await dialog.locator('[data-field="input.times"]').fill("")
    await dialog.locator('[data-field="input.who"]').fill("")
    wid = "run-" + uuid.uuid4().hex[:6]
    await dialog.locator('input[name="wid"]').fill(wid)
    await dialog.locator('button[type="submit"]').click()
    # The API's answer, naming the field: `who` is required by the schema.
    await expect(dialog.locator('[role="alert"]')).to_contain_text("who")
    await dialog.locator('[data-field="input.who"]').fill("ada")
    await dialog.locator('[data-field="input.loud"]').check()
    await dialog.locator('button[type="submit"]').click()
    await page.wait_for_url(f"**/ui/run.html?id={wid}")
    done = (await ui.client.wait(wid, timeout=30)).status
    assert done is not None and done.state == WorkflowState.COMPLETED
    assert done.input == {"who": "ada", "loud": True}
    assert done.definition is not None and done.definition.startswith("greet")


async def test_a_batch_shows_its_progress_live(ui: Ui) -> None:
    bid = "b" + uuid.uuid4().hex[:6]
    await ui.client.create_batch({"id": bid, "max_concurrency": 2, "workflow": {
        "name": "nap", "steps": [{"id": "s", "task": "demo.sleep",
                                  "input": {"seconds": 0.3, "steps": 1}}]},
        "inputs": [{} for _ in range(4)]})
    page = await ui.goto(f"/ui/batches.html?id={bid}")
    await expect(page.locator("#nf-members tbody tr")).to_have_count(4)
    await expect(page.locator('#nf-batch-progress [data-role="done"]')).to_have_text(
        "4 / 4 finished")
    await expect(page.locator('#nf-members tr[data-state="completed"]')).to_have_count(4)
    await page.goto(ui.url + "/ui/batches.html")
    await expect(page.locator(f'#nf-batches tr[data-batch="{bid}"]')).to_contain_text(
        "4 / 4 finished")
    await _shot(page, "batches")


async def test_dead_letters_show_their_reasons(ui: Ui) -> None:
    await ui.nc.jetstream().publish(ui.settings.subjects.submit, b"not json at all")
    await read_dead_letters(ui.nc, ui.settings.subjects, count=1, timeout=20)
    page = await ui.goto("/ui/dead-letters.html")
    row = page.locator("#nf-letters tbody tr").first
    await expect(row).to_contain_text(ui.settings.subjects.submit)
    assert await row.get_attribute("data-reason")
    await row.locator("summary").click()
    await expect(row.locator("pre")).to_have_text("not json at all")
    await _shot(page, "dead-letters")


async def test_the_runs_list_screenshot(ui: Ui) -> None:
    await ui.client.put_definition("greet", GREET)
    for i, who in enumerate(["ada", "grace", "edsger"]):
        await ui.client.run("greet", {"who": who}, labels={"team": "docs"},
                            workflow_id=f"greet-{i}")
    await ui.client.create({"name": "flaky", "id": "report-7",
                            "steps": [{"id": "s", "task": "demo.fail"}]})
    await ui.client.create({"name": "nap", "id": "nightly-3", "steps": [
        {"id": "s", "task": "demo.sleep", "input": {"seconds": 60, "steps": 60}}]})
    for wid in ("greet-0", "greet-1", "greet-2", "report-7"):
        await ui.client.wait(wid, timeout=30)
    page = await ui.goto("/ui/")
    await expect(page.locator("#nf-runs tbody tr")).to_have_count(5)
    await expect(page.locator('tr[data-workflow-id="nightly-3"]')).to_have_attribute(
        "data-state", "running")
    await expect(page.locator('[data-count="all"] b')).to_have_text("5")
    await asyncio.sleep(0.3)  # the row flash fades
    await _shot(page, "runs")
    await ui.client.stop("nightly-3")
