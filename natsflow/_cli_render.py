"""How the CLI shows workflows and events: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from contracts.models import (
    STEP_TERMINAL,
    Event,
    StepState,
    StepStatus,
    WorkflowState,
    WorkflowStatus,
)

__all__ = ["event_line", "short_json", "step_duration", "workflow_view"]

_STATE_STYLE = {
    WorkflowState.CREATED: "dim",
    WorkflowState.RUNNING: "cyan",
    WorkflowState.COMPLETED: "green",
    WorkflowState.FAILED: "red",
    WorkflowState.STOPPING: "yellow",
    WorkflowState.STOPPED: "yellow",
    WorkflowState.COMPENSATING: "magenta",
    WorkflowState.QUEUED: "blue",
    StepState.THROTTLED: "blue",
    StepState.PENDING: "dim",
    StepState.DISPATCHED: "blue",
    StepState.RUNNING: "cyan",
    StepState.WAITING: "blue",
    StepState.RETRYING: "yellow",
    StepState.SUCCEEDED: "green",
    StepState.FAILED: "red",
    StepState.CANCELLED: "yellow",
    StepState.SKIPPED: "dim",
}


def short_json(value: Any, limit: int = 60) -> str:
    """Compact JSON of ``value``, cut to ``limit`` characters."""
    if value is None:
        return ""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def step_duration(step: StepStatus, now: datetime | None = None) -> str:
    """How long the step ran (or has been running), e.g. ``1.25s``."""
    start = step.started_at or step.dispatched_at
    if start is None:
        return ""
    end = step.finished_at or now
    if end is None:
        return ""
    return f"{max(0.0, (end - start).total_seconds()):.2f}s"


def _styled(state: WorkflowState | StepState) -> Text:
    return Text(state.value, style=_STATE_STYLE.get(state, ""))


def _fraction(step: StepStatus) -> tuple[float, str] | None:
    """(done, label) for a bar: a map's items, or a worker's ``{done, of}`` progress."""
    if step.map is not None and step.map.total:
        items = step.map.succeeded + len(step.map.failed)
        return items / step.map.total, f"{items}/{step.map.total} items"
    p = step.progress
    if not isinstance(p, dict):
        return None
    total = p.get("of", p.get("total"))
    done = p.get("done")
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        return min(1.0, done / total), f"{done:g}/{total:g}"
    percent = p.get("percent")
    if isinstance(percent, int | float):
        return min(1.0, percent / 100), f"{percent:g}%"
    return None


def _parents(status: WorkflowStatus, depends: dict[str, list[str]]) -> dict[str, str | None]:
    """Where each step hangs in the tree.

    A compensation under the step it undoes; any other step under the dependency that
    finished last (the one it waited for), so each branch reads as a critical path.
    """
    by_id = {s.id: s for s in status.steps}
    far_past = datetime.min.replace(tzinfo=UTC)
    out: dict[str, str | None] = {}
    for step in status.steps:
        if step.compensates in by_id:
            out[step.id] = step.compensates
            continue
        deps = [d for d in depends.get(step.id, []) if d in by_id]
        out[step.id] = max(deps, key=lambda d: by_id[d].finished_at or far_past,
                           default=None)
    return out


def _step_label(step: StepStatus, parent: str | None, deps: list[str],
                now: datetime | None) -> RenderableType:
    # Steps the engine runs itself (sleep, wait, switch, ...) show their kind.
    what = Text(step.task) if step.task else Text(step.kind.value, style="italic")
    cells: list[Text] = [Text(step.id, style="bold"), what, _styled(step.state)]
    if step.attempts > 1:
        cells.append(Text(f"attempt {step.attempts}", style="yellow"))
    duration = step_duration(step, now)
    if duration:
        cells.append(Text(duration))
    others = [d for d in deps if d != parent]
    if others:
        cells.append(Text("after " + ", ".join(others), style="dim"))
    if step.child_id:
        cells.append(Text(f"child {step.child_id}", style="dim"))
    if step.reused_from:
        cells.append(Text(f"reused from {step.reused_from}", style="dim"))
    if step.waiting_for_worker is not None:
        cells.append(Text(f"waiting for a worker ({step.waiting_for_worker.value})",
                          style="yellow"))
    if step.error is not None:
        cells.append(Text(f"{step.error.code}: {step.error.message}", style="red"))
    elif step.output is not None:
        cells.append(Text(short_json(step.output)))
    line = Text("  ").join(cells)
    bar = _fraction(step) if step.state not in STEP_TERMINAL else None
    if bar is None:
        return line
    row = Table.grid(padding=(0, 1))
    row.add_row(ProgressBar(total=1.0, completed=bar[0], width=24), Text(bar[1]))
    return Group(line, row)


def _since(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{max(0.0, (end - start).total_seconds()):.2f}s"


def workflow_view(status: WorkflowStatus, *, now: datetime | None = None,
                  depends_on: dict[str, list[str]] | None = None) -> Group:
    """The workflow's header, an overall bar, and its steps as a tree with durations.

    Args:
        status: What to show.
        now: The time running things are measured to (None: show no running times).
        depends_on: Each step's dependencies (default: as the status records them).
    """
    depends = depends_on if depends_on is not None else {
        s.id: list(s.depends_on) for s in status.steps}
    header = Text.assemble(
        ("workflow ", "bold"), (status.id, "bold"), f"  {status.name}  ",
        _styled(status.state))
    took = _since(status.started_at or status.created_at, status.finished_at or now)
    if took:
        header.append(f"  {took}")
    done = sum(1 for s in status.steps if s.state in STEP_TERMINAL)
    overall = Table.grid(padding=(0, 1))
    overall.add_row(ProgressBar(total=max(1, len(status.steps)), completed=done, width=40),
                    Text(f"{done}/{len(status.steps)} steps finished"))
    parents = _parents(status, depends)
    tree = Tree(header, guide_style="dim")
    nodes: dict[str, Tree] = {}

    def place(step_id: str) -> Tree:
        if step_id in nodes:
            return nodes[step_id]
        parent_id = parents.get(step_id)
        parent = place(parent_id) if parent_id is not None else tree
        step = status.step(step_id)
        nodes[step_id] = parent.add(_step_label(step, parent_id, depends.get(step_id, []), now))
        return nodes[step_id]

    for step in status.steps:
        place(step.id)
    parts: list[RenderableType] = [tree, overall]
    if status.error is not None:
        parts.append(Text(f"error[{status.error.code}]: {status.error.message}", style="red"))
    if status.output is not None:
        parts.append(Text("output: " + short_json(status.output, limit=400)))
    return Group(*parts)


def event_line(event: Event) -> str:
    """One event as a line: seq, time, type, step (``#attempt``) and data."""
    step = event.step_id or "-"
    if event.attempt is not None and event.step_id:
        step += f"#{event.attempt}"
    data = json.dumps(event.data, separators=(",", ":"), default=str) if event.data else ""
    return (f"{event.seq:>4}  {event.time.isoformat(timespec='milliseconds')}  "
            f"{event.type.value:<18}  {step:<14}  {data}").rstrip()
