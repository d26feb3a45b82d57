"""``natsflow ls|watch|bulk|pause|resume|retry|rerun|verify``: find, follow and control
workflows over the NATS API (``watch`` also through a gateway)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from contracts.errors import InvalidRequest, ValidationFailed
from contracts.errors import validation_failed as errors_of
from contracts.messages import ListWorkflowsRequest, WorkflowList, WorkflowReply
from contracts.models import WorkflowState, WorkflowStatus
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings

from ._cli_common import console, fail, run, with_settings
from ._cli_namespace import NamespaceOpt, scope

__all__ = ["app"]

_Id = Annotated[str, typer.Argument(metavar="ID", help="The workflow's id.")]
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _json_object(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        fail(InvalidRequest(f"{option} is not a JSON object: {exc}", field=option))
    if not isinstance(data, dict):
        fail(InvalidRequest(f"{option} must be a JSON object", field=option))
    return data


def _call(settings: NatsSettings, as_json: bool,
          op: Callable[[NatsflowClient], Awaitable[WorkflowReply]]) -> None:
    from ._cli_client import nats_client, require_status

    async def _go() -> WorkflowStatus:
        async with nats_client(settings) as client:
            return require_status(await op(client))

    status = run(_go())
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
    else:
        console.print(f"workflow [bold]{status.id}[/] {status.state.value}")


def _labels(items: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            fail(InvalidRequest(f"--label {item!r} is not key:value", field="label"))
        labels[key] = value
    return labels


#: ``natsflow ls|watch|bulk|pause|resume|retry|rerun|verify`` (top-level commands).
app = typer.Typer()

@app.command("ls")
@with_settings
def ls(
    state: Annotated[list[str] | None, typer.Option(
        help="Only these states (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Only this workflow name.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        help="key:value; all must match (repeatable).")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's members.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Rows.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue after a page.")] = None,
    as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *, settings: NatsSettings,
) -> None:
    """List workflows, newest first (of every namespace, or of --namespace)."""
    from ._cli_client import nats_client

    labels = _labels(label)
    try:
        query = ListWorkflowsRequest.model_validate({
            "state": state or [], "name": name, "labels": labels, "batch_id": batch,
            "namespace": namespace, "limit": limit, "cursor": cursor})
    except ValidationError as exc:
        fail(errors_of(exc))

    async def _ls() -> WorkflowList:
        async with nats_client(settings) as client:
            return await client.list_workflows(query)

    page = run(_ls())
    if as_json:
        typer.echo(page.model_dump_json(indent=2, exclude_none=True))
        return
    table = Table("id", "namespace", "name", "state", "created", "finished")
    for w in page.items:
        table.add_row(w.id, w.namespace, w.name, w.state.value,
                      w.created_at.isoformat(timespec="seconds"),
                      w.finished_at.isoformat(timespec="seconds") if w.finished_at else "")
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")

@app.command()
@with_settings
def watch(
    workflow_id: _Id,
    gateway_url: Annotated[str | None, typer.Option(
        "--gateway", envvar="NATSFLOW_GATEWAY",
        help="Follow this gateway over HTTP instead of NATS.")] = None,
    namespace: NamespaceOpt = None, *, settings: NatsSettings,
) -> None:
    """Show a workflow's steps live until it ends; exit 0 if it completes, else 1."""
    from ._cli_client import cli_client
    from ._cli_watch import watch_live

    async def _watch() -> WorkflowStatus:
        async with cli_client(settings, gateway_url) as client:
            return await watch_live(client, workflow_id, namespaces=scope(namespace))

    if run(_watch()).state != WorkflowState.COMPLETED:
        raise typer.Exit(1)

@app.command()
@with_settings
def bulk(
    operation: Annotated[str, typer.Argument(help="stop, pause, resume or retry.")],
    state: Annotated[list[str] | None, typer.Option(
        help="Only these states (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Only this workflow name.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        help="key:value; all must match (repeatable).")] = None,
    batch: Annotated[str | None, typer.Option(help="Only this batch's members.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be "
                                          "touched.")] = False,
    all_workflows: Annotated[bool, typer.Option(
        "--all", help="Every workflow: required without a filter.")] = False,
    as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *, settings: NatsSettings,
) -> None:
    """Apply an operation to every workflow the filters select (see --dry-run).

    Without a filter nothing is touched unless --all says every workflow is meant
    (every one in --namespace, with it).
    """
    from ._cli_client import nats_client

    if operation not in ("stop", "pause", "resume", "retry"):
        fail(InvalidRequest(f"unknown operation {operation!r}", field="operation"))
    labels = _labels(label)
    if not (state or name or labels or batch or all_workflows):
        fail(ValidationFailed(f"no filter: give --state, --name, --label or --batch, "
                              f"or --all to {operation} every workflow", field="--all"))

    async def _bulk() -> Any:
        async with nats_client(settings) as client:
            return await client.bulk(operation, dry_run=dry_run, state=state or [],
                                     name=name, labels=labels, batch_id=batch,
                                     all_workflows=all_workflows,
                                     namespaces=scope(namespace))

    result = run(_bulk())
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    verb = "would" if dry_run else "did"
    console.print(f"{result.matched} workflows matched; {verb} {operation} "
                  f"{result.matched if dry_run else result.done}"
                  + (f", {len(result.refused)} refused" if result.refused else ""))
    for wid in result.ids[:20]:
        console.print(f"  {wid}" + (f"  [red]{result.refused[wid]}[/]"
                                    if wid in result.refused else ""))

@app.command()
@with_settings
def pause(workflow_id: _Id, as_json: _JsonOpt = False, namespace: NamespaceOpt = None,
          *, settings: NatsSettings) -> None:
    """Pause a running workflow: nothing new starts and timers wait until resumed."""
    _call(settings, as_json, lambda c: c.pause(workflow_id, namespaces=scope(namespace)))

@app.command()
@with_settings
def resume(workflow_id: _Id, as_json: _JsonOpt = False, namespace: NamespaceOpt = None,
           *, settings: NatsSettings) -> None:
    """Resume a paused workflow."""
    _call(settings, as_json, lambda c: c.resume(workflow_id, namespaces=scope(namespace)))

@app.command()
@with_settings
def retry(
    workflow_id: _Id,
    inputs: Annotated[str | None, typer.Option(
        help='New inputs of retried steps: {"<step>": {...}} as JSON, or @FILE.')] = None,
    as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *, settings: NatsSettings,
) -> None:
    """Run a failed or stopped workflow again from its unfinished steps."""
    data = _json_object(inputs, "inputs")
    _call(settings, as_json, lambda c: c.retry(workflow_id, inputs=data,
                                               namespaces=scope(namespace)))

@app.command()
@with_settings
def rerun(
    workflow_id: _Id,
    input_: Annotated[str | None, typer.Option(
        "--input", help="A new input (JSON object or @FILE); default: the same.")] = None,
    from_step: Annotated[str | None, typer.Option(
        help="Run only this step and those after it; reuse the other outputs.")] = None,
    new_id: Annotated[str | None, typer.Option("--id", help="The new workflow's id.")
                      ] = None,
    as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *, settings: NatsSettings,
) -> None:
    """Start a new workflow from the same config (and input), in its namespace."""
    data = _json_object(input_, "input")
    _call(settings, as_json, lambda c: c.rerun(workflow_id, input=data,
                                               from_step=from_step, new_id=new_id,
                                               namespaces=scope(namespace)))

@app.command()
@with_settings
def verify(
    workflow_ids: Annotated[list[str] | None, typer.Argument(
        metavar="[ID]...", help="Only these workflows (default: every one with events).")
                            ] = None,
    join_any: Annotated[bool, typer.Option(
        help="Some steps join 'any': a step may begin once one dependency "
             "succeeded.")] = False,
    as_json: _JsonOpt = False, *, settings: NatsSettings,
) -> None:
    """Check natsflow's promises on stored events and states; exit 1 on a violation.

    A workflow created with `start: false` and never started is listed as not
    started, which is no violation.
    """
    from natsflow.promises import Report, verify

    from ._cli_client import nats_client

    async def _verify() -> Report:
        async with nats_client(settings) as client:
            return await verify(client, workflow_ids or None, join_all=not join_any)

    report: Report = run(_verify())
    violations = report.violations
    if as_json:
        typer.echo(json.dumps({"checked": report.checked, "violations": [
            {"workflow_id": v.workflow_id, "promise": v.promise, "message": v.message}
            for v in violations], "not_started": report.not_started}, indent=2))
    else:
        for v in violations:
            console.print(f"[red]{v}[/]", highlight=False)
        for wid in report.not_started:
            console.print(f"{wid}: not started (created with start: false)",
                          markup=False, highlight=False)
        waiting = f", {len(report.not_started)} not started" if report.not_started else ""
        console.print(f"{report.checked} workflows checked, {len(violations)} "
                      f"violations{waiting}")
    if violations:
        raise typer.Exit(1)
