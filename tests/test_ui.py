"""The web UI's runs list and actions, in headless Chromium against the real services.

What a person sees: a new run appears in the list without a reload and its state changes
live; Stop works from its button and a refusal (409) is shown; with API keys on, the key
is asked for once; and no page reaches anything but loopback (the ``ui`` fixture refuses
and records every other request, and fails the test if there was one).
"""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
from playwright.async_api import Route, expect
from ui_browser import Ui, browser_fixture, ui_fixture  # noqa: F401  (fixtures)

from contracts.models import WorkflowState

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

NAP = {"id": "sleep", "task": "demo.sleep", "input": {"seconds": 60, "steps": 60}}


def _row(ui: Ui, wid: str) -> str:
    return f'#nf-runs tr[data-workflow-id="{wid}"]'


async def _open_list(ui: Ui) -> None:
    page = await ui.goto("/ui/")
    await expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    await expect(page.locator("#nf-live.nf-on")).to_have_count(1)


async def test_root_leads_to_the_ui_and_every_file_is_served(ui: Ui) -> None:
    async with httpx.AsyncClient(base_url=ui.url) as http:
        root = await http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        for path in ("/ui/", "/ui/js/api.js", "/ui/css/app.css"):
            assert (await http.get(path)).status_code == 200, path
        assert (await http.get("/ui/nothing.js")).status_code == 404


async def test_a_new_run_appears_and_changes_state_without_a_reload(ui: Ui) -> None:
    await _open_list(ui)
    page = ui.page
    reloads: list[str] = []
    page.on("framenavigated", lambda frame: reloads.append(frame.url))
    wid = "ui-" + uuid.uuid4().hex[:8]
    await ui.client.create({"name": "greet", "id": wid,
                            "steps": [{"id": "s", "task": "demo.echo", "input": {"x": 1}}]})
    row = page.locator(_row(ui, wid))
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-state", "completed")
    await expect(row.locator("a.nf-run-link")).to_have_attribute(
        "href", f"/ui/run.html?id={wid}")
    await expect(page.locator('[data-count="completed"] b')).to_have_text("1")
    assert reloads == [], reloads

    # The filters: a name that matches nothing empties the list; the address keeps them.
    await page.fill('input[name="name"]', "no-such-name")
    await page.click('#nf-filters button[type="submit"]')
    await expect(page.locator(".nf-empty")).to_have_text("No runs match.")
    assert "name=no-such-name" in page.url
    await page.click('[data-role="reset"]')
    await expect(row).to_have_count(1)


async def test_a_run_that_ends_before_the_live_stream_opens_is_shown(ui: Ui) -> None:
    # The page reads the list, then opens the event stream: a run created and finished
    # in between sends no event the page will see, so the page must read the list again
    # once the stream is open (CI: a run created right after a reload never appeared).
    opened = asyncio.Event()

    async def hold(route: Route) -> None:
        await opened.wait()
        await route.continue_()

    await ui.page.route("**/events?*", hold)
    page = await ui.goto("/ui/")
    await expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    wid = "gap-" + uuid.uuid4().hex[:8]
    await ui.client.create({"name": "greet", "id": wid,
                            "steps": [{"id": "s", "task": "demo.noop"}]})
    for _ in range(200):
        status = await ui.client.get(wid)
        if status.status is not None and status.status.state == WorkflowState.COMPLETED:
            break
        await asyncio.sleep(0.05)
    assert status.status is not None and status.status.state == WorkflowState.COMPLETED
    await expect(page.locator(_row(ui, wid))).to_have_count(0)  # read before it existed
    opened.set()
    await expect(page.locator("#nf-live.nf-on")).to_have_count(1)
    await expect(page.locator(_row(ui, wid))).to_have_attribute("data-state", "completed")


async def test_stop_from_its_button_and_a_refusal_is_shown(ui: Ui) -> None:
    wid = "nap-" + uuid.uuid4().hex[:8]
    await ui.client.create({"name": "nap", "id": wid, "steps": [NAP]})
    await _open_list(ui)
    row = ui.page.locator(_row(ui, wid))
    await expect(row).to_have_attribute("data-state", "running")
    await row.locator('[data-action="stop"]').click()
    await expect(row).to_have_attribute("data-state", "stopped")
    assert (await ui.client.get(wid)).status is not None
    # Stopping it again: the API answers 409 already-finished, and the page says so.
    await row.locator('[data-action="stop"]').click()
    alert = ui.page.locator('#nf-messages [role="alert"]')
    await expect(alert).to_contain_text("409")
    await expect(alert).to_contain_text(re.compile("finished", re.I))


@pytest.mark.parametrize("ui", [{"auth": True}], indirect=True)
async def test_with_keys_the_key_is_asked_for_once(ui: Ui) -> None:
    assert ui.key is not None
    page = await ui.goto("/ui/")
    dialog = page.locator("#nf-key-dialog")
    await expect(dialog).to_be_visible()
    # A key that is no good is refused, and asked for again.
    await dialog.locator("input").fill("nfk_000000000000_nope")
    await dialog.locator('button[type="submit"]').click()
    await expect(dialog).to_contain_text("refused")
    await dialog.locator("input").fill(ui.key)
    await dialog.locator('button[type="submit"]').click()
    await expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    await expect(page.locator("#nf-live.nf-on")).to_have_count(1)
    # Kept for the tab: a reload asks nothing, and the live stream carries the key too.
    await page.reload()
    await expect(page.locator("body[data-loaded=true]")).to_have_count(1)
    await expect(page.locator("#nf-key-dialog")).to_have_count(0)
    wid = "k-" + uuid.uuid4().hex[:8]
    await ui.client.create({"name": "greet", "id": wid,
                            "steps": [{"id": "s", "task": "demo.noop"}]})
    await expect(page.locator(_row(ui, wid))).to_have_attribute("data-state", "completed")


async def test_a_request_beyond_loopback_is_refused_and_recorded(ui: Ui) -> None:
    # The guard of every UI test: it must catch what it is there to catch.
    await _open_list(ui)
    failed = await ui.page.evaluate(
        "fetch('http://example.com/x.js').then(() => 'reached', e => 'refused: ' + e)")
    assert failed.startswith("refused"), failed
    assert ui.refused == ["http://example.com/x.js"]
    ui.refused.clear()


async def test_signal_with_a_json_payload_and_pause_resume_from_buttons(ui: Ui) -> None:
    wid = "sig-" + uuid.uuid4().hex[:8]
    await ui.client.create({"name": "expense", "id": wid, "steps": [
        {"id": "approval", "kind": "wait", "signal": "approval"},
        {"id": "pay", "task": "demo.echo", "depends_on": ["approval"],
         "input": {"by": "${steps.approval.output.by}"}}]})
    await _open_list(ui)
    row = ui.page.locator(_row(ui, wid))
    await expect(row).to_have_attribute("data-state", "running")
    await row.locator('[data-action="pause"]').click()
    await expect(row).to_have_attribute("data-state", "paused")
    await row.locator('[data-action="resume"]').click()
    await expect(row).to_have_attribute("data-state", "running")

    await row.locator('[data-action="signal"]').click()
    dialog = ui.page.locator("#nf-signal-dialog")
    await dialog.locator('input[name="name"]').fill("approval")
    # Not JSON: named in the dialog, nothing sent.
    await dialog.locator('textarea[name="payload"]').fill("{by: ada}")
    await dialog.locator('button[type="submit"]').click()
    await expect(dialog.locator('[role="alert"]')).to_contain_text("payload: not JSON")
    await dialog.locator('textarea[name="payload"]').fill('{"by": "ada"}')
    await dialog.locator('button[type="submit"]').click()
    await expect(row).to_have_attribute("data-state", "completed")
    done = (await ui.client.get(wid)).status
    assert done is not None and done.output == {"pay": {"by": "ada"}}, done


async def test_retry_with_an_input_override_and_rerun_as_a_new_run(ui: Ui) -> None:
    wid = "fl-" + uuid.uuid4().hex[:8]
    await ui.client.create({"name": "flaky", "id": wid, "steps": [
        {"id": "s", "task": "demo.flaky", "input": {"fail_times": 5},
         "retry": {"max_attempts": 1}}]})
    await _open_list(ui)
    row = ui.page.locator(_row(ui, wid))
    await expect(row).to_have_attribute("data-state", "failed")
    await row.locator('[data-action="retry"]').click()
    dialog = ui.page.locator("#nf-retry-dialog")
    await dialog.locator('textarea[name="inputs"]').fill('{"s": {"fail_times": 0}}')
    await dialog.locator('button[type="submit"]').click()
    await expect(row).to_have_attribute("data-state", "completed")

    again = "again-" + uuid.uuid4().hex[:6]
    await row.locator('[data-action="rerun"]').click()
    dialog = ui.page.locator("#nf-rerun-dialog")
    await dialog.locator('input[name="new_id"]').fill(again)
    await dialog.locator('button[type="submit"]').click()
    await expect(ui.page.locator('#nf-messages [role="status"]').last).to_contain_text(
        f"rerun as {again}")
    await expect(ui.page.locator(_row(ui, again))).to_have_count(1)
