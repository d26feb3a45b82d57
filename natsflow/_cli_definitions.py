"""``natsflow definitions apply|ls|show`` and ``natsflow run``: the definitions registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from contracts.errors import InvalidRequest, NatsflowError
from contracts.models import WorkflowState, WorkflowStatus
from contracts.namespaces import DEFAULT_NAMESPACE
from transport.connect import NatsSettings

from ._cli_common import console, fail, run, with_settings
from ._cli_namespace import NamespaceOpt, scope

__all__ = ["definitions_app", "run_command"]

definitions_app = typer.Typer(name="definitions", no_args_is_help=True,
                              help="Stored, versioned workflow definitions.")

_JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@definitions_app.command("apply")
@with_settings
def apply(
    file: Annotated[Path, typer.Argument(help="A definition (WorkflowConfig without id) "
                                         "as YAML or JSON; its `name` names it.")],
    name: Annotated[str | None, typer.Option(help="Store under this name instead.")] = None,
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Store a file as the next version of its definition (unchanged if identical), in
    --namespace (default: the file's `namespace`, else `default`)."""
    from ._cli_client import nats_client
    from ._cli_files import load_mapping

    try:
        data = load_mapping(file)
        target = name or data.get("name")
        if not isinstance(target, str) or not target:
            raise InvalidRequest(f"{file} has no `name`; give --name", field="name")
    except NatsflowError as err:
        fail(err)
    body = {k: v for k, v in data.items() if k != "name"}
    where = namespace or body.get("namespace")
    if where is not None and not isinstance(where, str):
        fail(InvalidRequest(f"{file}: `namespace` must be a string", field="namespace"))

    async def _apply() -> Any:
        async with nats_client(settings) as client:
            return await client.put_definition(target, body, namespace=where,
                                               namespaces=scope(namespace))

    reply = run(_apply())
    if as_json:
        typer.echo(reply.model_dump_json(indent=2))
        return
    d = reply.definition
    what = "stored as version" if reply.created else "unchanged, latest is version"
    suffix = "" if d.namespace == DEFAULT_NAMESPACE else f" in namespace {d.namespace}"
    console.print(f"definition [bold]{d.name}[/] {what} {d.version}{suffix}")


@definitions_app.command("ls")
@with_settings
def ls(as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
       settings: NatsSettings) -> None:
    """List the stored definitions (of every namespace, or of --namespace)."""
    from ._cli_client import nats_client

    async def _ls() -> Any:
        async with nats_client(settings) as client:
            return await client.list_definitions(namespace=namespace)

    listed = run(_ls())
    if as_json:
        typer.echo(listed.model_dump_json(indent=2))
        return
    table = Table("namespace", "name", "latest", "updated")
    for d in listed.definitions:
        table.add_row(d.namespace, d.name, str(d.latest_version),
                      d.updated_at.isoformat(timespec="seconds"))
    console.print(table)


@definitions_app.command("show")
@with_settings
def show(
    name: Annotated[str, typer.Argument(help="The definition's name.")],
    version: Annotated[int | None, typer.Option(min=1, help="This version (default: the "
                                                "latest, with the list of versions).")] = None,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Print a definition (JSON) of --namespace (default: `default`)."""
    from ._cli_client import nats_client

    async def _show() -> Any:
        async with nats_client(settings) as client:
            if version is not None:
                return await client.get_definition_version(name, version,
                                                           namespace=namespace)
            return await client.get_definition(name, namespace=namespace)

    typer.echo(run(_show()).model_dump_json(indent=2, exclude_none=True))


def _input(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        data = json.loads(text)
    except ValueError as exc:
        fail(InvalidRequest(f"--input is not JSON: {exc}", field="input"))
    if not isinstance(data, dict):
        fail(InvalidRequest("--input must be a JSON object", field="input"))
    return data


@with_settings
def run_command(
    name: Annotated[str, typer.Argument(metavar="DEFINITION", help="A stored definition.")],
    input_: Annotated[str | None, typer.Option(
        "--input", help="The input: a JSON object, or @FILE.")] = None,
    version: Annotated[int | None, typer.Option(min=1, help="Pin a version (default: the "
                                                "latest).")] = None,
    workflow_id: Annotated[str | None, typer.Option("--id", help="Workflow id.")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Show live progress; exit 0 if it completes, 1 if not.")] = False,
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Start a workflow from a stored definition of --namespace (default: `default`)
    with just its input; it runs in that namespace."""
    from ._cli_client import nats_client, require_status
    from ._cli_watch import watch_live

    data = _input(input_)

    async def _run() -> WorkflowStatus:
        async with nats_client(settings) as client:
            reply = await client.run(name, data, version=version, workflow_id=workflow_id,
                                     namespace=namespace)
            status = require_status(reply)
            if not as_json:
                console.print(f"workflow [bold]{status.id}[/] {status.state.value} "
                              f"({name} v{status.definition_version})")
            if watch:
                if as_json:
                    with console.capture():
                        return await watch_live(client, reply.id)
                return await watch_live(client, reply.id)
            return status

    status = run(_run())
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
    if watch and status.state != WorkflowState.COMPLETED:
        raise typer.Exit(1)
