"""``natsflow submit|status|stop|signal|events``: create a workflow and follow it, over
NATS (or, for submit, status and signal, through a gateway with ``--gateway``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.errors import NatsflowError
from contracts.models import WorkflowState, WorkflowStatus
from transport.connect import NatsSettings

from ._cli_common import console, fail, run, with_settings
from ._cli_files import load_config, load_mapping, parse_payload
from ._cli_namespace import NamespaceOpt, in_namespace, scope
from ._cli_render import event_line, workflow_view

# load_mapping: read the files the commands take (also by the definitions group).
__all__ = ["app", "load_mapping"]

#: The workflow commands (top-level: ``natsflow submit``, ...).
app = typer.Typer()

_GatewayOpt = Annotated[str | None, typer.Option(
    "--gateway", envvar="NATSFLOW_GATEWAY", show_envvar=True,
    help="Talk to this gateway over HTTP (e.g. http://127.0.0.1:8000) instead of NATS.")]
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@app.command()
@with_settings
def submit(
    file: Annotated[Path, typer.Argument(help="A WorkflowConfig as YAML or JSON.")],
    watch: Annotated[bool, typer.Option(
        "--watch", help="Show live progress; exit 0 if it completes, 1 if not.")] = False,
    gateway_url: _GatewayOpt = None,
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Create a workflow from a file (in --namespace, if the file names none)."""

    try:
        config = in_namespace(load_config(file), namespace)
    except NatsflowError as err:
        fail(err)
    status: WorkflowStatus = run(_submit(config, settings, gateway_url, watch=watch,
                                         as_json=as_json))
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
    if watch and status.state != WorkflowState.COMPLETED:
        raise typer.Exit(1)


async def _submit(config: Any, settings: NatsSettings, gateway_url: str | None, *,
                  watch: bool, as_json: bool) -> WorkflowStatus:
    from ._cli_client import cli_client, require_status
    from ._cli_watch import watch_live

    async with cli_client(settings, gateway_url) as client:
        reply = await client.create(config)
        status = require_status(reply)
        if not as_json:
            note = "" if reply.created else " (already existed)"
            console.print(f"workflow [bold]{status.id}[/] {status.state.value}{note}")
        return await _quiet(watch_live(client, reply.id), as_json) if watch else status


async def _quiet(coro: Any, quiet: bool) -> WorkflowStatus:
    # --json --watch: wait for the end without drawing the live table.
    if not quiet:
        return await coro  # type: ignore[no-any-return]
    with console.capture():
        return await coro  # type: ignore[no-any-return]


@app.command()
@with_settings
def status(
    workflow_id: Annotated[str, typer.Argument(metavar="ID", help="The workflow's id.")],
    gateway_url: _GatewayOpt = None,
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Show a workflow's state and its steps."""
    result = run(_get(workflow_id, settings, gateway_url, namespace))
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        console.print(workflow_view(result, now=datetime.now(UTC)))


async def _get(workflow_id: str, settings: NatsSettings,
               gateway_url: str | None, namespace: str | None) -> WorkflowStatus:
    from ._cli_client import cli_client, require_status

    # Through a gateway its key decides what is shown; -n narrows it further.
    async with cli_client(settings, gateway_url) as client:
        return require_status(await client.get(workflow_id, namespaces=scope(namespace)))


@app.command()
@with_settings
def stop(
    workflow_id: Annotated[str, typer.Argument(metavar="ID", help="The workflow's id.")],
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Stop a workflow: running steps are cancelled and it ends `stopped`."""
    from ._cli_client import nats_client, require_status

    async def _stop() -> WorkflowStatus:
        async with nats_client(settings) as client:
            return require_status(await client.stop(workflow_id,
                                                    namespaces=scope(namespace)))

    result = run(_stop())
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        console.print(f"workflow [bold]{result.id}[/] {result.state.value}")


@app.command()
@with_settings
def signal(
    workflow_id: Annotated[str, typer.Argument(metavar="ID", help="The workflow's id.")],
    name: Annotated[str, typer.Argument(metavar="NAME",
                                        help="The signal's name (a wait step's `signal`).")],
    payload: Annotated[str | None, typer.Option(
        "--payload", metavar="JSON|@FILE",
        help="The payload: JSON, or @path of a JSON file. It becomes the wait step's "
             "output.")] = None,
    gateway_url: _GatewayOpt = None,
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Send a signal: a wait step waiting for it takes it, or it is kept until one does."""
    from ._cli_client import cli_client, require_status

    try:
        value = parse_payload(payload)
    except NatsflowError as err:
        fail(err)

    async def _signal() -> WorkflowStatus:
        async with cli_client(settings, gateway_url) as client:
            return require_status(await client.signal(workflow_id, name, value,
                                                      namespaces=scope(namespace)))

    result = run(_signal())
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        console.print(f"signal [bold]{name}[/] sent to workflow [bold]{result.id}[/] "
                      f"({result.state.value})")


@app.command()
@with_settings
def events(
    workflow_id: Annotated[str, typer.Argument(metavar="ID", help="The workflow's id.")],
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Wait for new events until the workflow ends.")] = False,
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Print a workflow's events (seq, time, type, step, data)."""
    from ._cli_client import nats_client

    async def _events() -> int:
        count = 0
        async with nats_client(settings) as client:
            # An unknown id fails with workflow-not-found instead of printing nothing.
            await client.get(workflow_id, namespaces=scope(namespace))
            async for event in client.events(workflow_id, follow=follow,
                                             namespaces=scope(namespace)):
                count += 1
                if as_json:
                    typer.echo(event.model_dump_json())
                else:
                    console.print(event_line(event), markup=False, soft_wrap=True)
        return count

    run(_events())
