"""How the CLI draws a workflow: steps as a tree with states, durations and progress."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from contracts.models import MapProgress, StepStatus, WorkflowStatus
from natsflow._cli_render import workflow_view

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _draw(status: WorkflowStatus, now: datetime | None = None) -> list[str]:
    console = Console(width=140, record=True, color_system=None)
    console.print(workflow_view(status, now=now))
    return console.export_text().splitlines()


def _line(lines: list[str], step: str) -> tuple[int, list[str]]:
    """(depth, fields) of the line drawing ``step``."""
    for line in lines:
        body = line.lstrip("│├└─ ")
        cells = re.split(r"\s{2,}", body)
        if cells[0] == step:
            return (len(line) - len(body)) // 4, cells[1:]
    raise AssertionError(f"no line for {step!r} in {lines}")


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _order(workflow_id: str) -> WorkflowStatus:
    return WorkflowStatus(
        id=workflow_id, name="order", state="running", input={}, created_at=T0, started_at=T0,
        steps=[
            StepStatus(id="charge", task="pay.charge", state="succeeded", attempts=2,
                       dispatched_at=_at(0), finished_at=_at(1.25), output={"ok": True}),
            StepStatus(id="reserve", task="stock.reserve", state="succeeded", attempts=1,
                       dispatched_at=_at(0), finished_at=_at(0.5)),
            StepStatus(id="ship", task="ship.it", state="running", attempts=1,
                       depends_on=["reserve", "charge"], dispatched_at=_at(1.3),
                       progress={"done": 3, "of": 10}),
            StepStatus(id="refund", task="pay.refund", compensates="charge"),
            StepStatus(id="notify", kind="wait", depends_on=["ship"]),
        ])


def test_steps_hang_under_the_dependency_they_waited_for_longest() -> None:
    lines = _draw(_order("wf-1"), now=_at(3))
    assert lines[0] == "workflow wf-1  order  running  3.00s"
    assert _line(lines, "charge") == (1, ["pay.charge", "succeeded", "attempt 2", "1.25s",
                                          '{"ok":true}'])
    assert _line(lines, "reserve") == (1, ["stock.reserve", "succeeded", "0.50s"])
    # charge finished last, so ship hangs under it and names the other dependency.
    assert _line(lines, "ship") == (2, ["ship.it", "running", "1.70s", "after reserve"])
    assert _line(lines, "notify") == (3, ["wait", "pending"])
    assert _line(lines, "refund") == (2, ["pay.refund", "pending"])  # under what it undoes
    bar = lines[lines.index(next(x for x in lines if "ship.it" in x)) + 1]
    assert "━" in bar and bar.rstrip().endswith("3/10")
    assert lines[-1].rstrip().endswith("2/5 steps finished")


def test_the_tree_in_the_cli_doc_is_what_the_cli_draws() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    blocks = re.findall(r"^```text\n(.*?)^```", doc, flags=re.S | re.M)
    (drawn,) = [b for b in blocks if b.startswith("workflow ")]
    assert drawn.splitlines() == [line.rstrip() for line in _draw(_order("01JD..."),
                                                                    now=_at(3))]


def test_a_finished_workflow_shows_its_total_time_its_error_and_no_running_bars() -> None:
    status = WorkflowStatus(
        id="wf-2", name="fan", state="failed", input={}, created_at=T0, started_at=_at(1),
        finished_at=_at(5.5), error={"code": "step-failed", "message": "each failed"},
        steps=[StepStatus(id="each", kind="map", task="demo.add", state="failed",
                          attempts=1, dispatched_at=_at(1), finished_at=_at(5.5),
                          map=MapProgress(total=4, next=4),
                          error={"code": "item-failed", "message": "item 2 failed"})])
    lines = _draw(status)
    assert lines[0] == "workflow wf-2  fan  failed  4.50s"
    assert _line(lines, "each") == (1, ["demo.add", "failed", "4.50s",
                                        "item-failed: item 2 failed"])
    assert "error[step-failed]: each failed" in lines
    assert not any("items" in line for line in lines)


def test_a_running_map_draws_its_items_as_a_bar() -> None:
    status = WorkflowStatus(
        id="wf-3", name="fan", state="running", input={}, created_at=T0, started_at=T0,
        steps=[StepStatus(id="each", kind="map", task="demo.add", state="running",
                          attempts=1, dispatched_at=T0,
                          map=MapProgress(total=10, next=6, running={"4": 1, "5": 1},
                                          succeeded=3, failed=[1]))])
    lines = _draw(status, now=_at(2))
    assert any(line.rstrip().endswith("4/10 items") for line in lines), lines
