"""How the CLI shows workflows and events: rich tables for people, JSON for programs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from contracts.models import (
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


def workflow_view(status: WorkflowStatus, *, now: datetime | None = None) -> Group:
    """A header line and a table of the workflow's steps."""
    header = Text.assemble(
        ("workflow ", "bold"), (status.id, "bold"), f"  {status.name}  ",
        _styled(status.state),
    )
    table = Table(show_edge=False, pad_edge=False)
    for col in ("step", "task / kind", "state", "attempts", "duration", "output / error"):
        table.add_column(col, no_wrap=col != "output / error")
    for step in status.steps:
        detail = (Text(f"{step.error.code}: {step.error.message}", style="red")
                  if step.error else Text(short_json(step.output)))
        # Steps the engine runs itself (sleep, wait, switch, ...) show their kind.
        what = Text(step.task) if step.task else Text(step.kind.value, style="italic")
        table.add_row(step.id, what, _styled(step.state), str(step.attempts),
                      step_duration(step, now), detail)
    parts: list[Any] = [header, table]
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
