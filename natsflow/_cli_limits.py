"""``natsflow limits``: the concurrency and rate limits in use (docs/flow-control.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from transport.connect import NatsSettings

from ._cli_common import console, run, with_settings

__all__ = ["app"]

app = typer.Typer()


@app.command("limits")
@with_settings
def limits_command(
    limit: Annotated[str | None, typer.Argument(
        help="Only this limit, e.g. wf:checkout or step:billing.charge.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")
                       ] = False,
    *,
    settings: NatsSettings,
) -> None:
    """Show every limit in use per key: permits held, runs waiting, a rate limit's next
    free time."""
    from ._cli_client import nats_client

    async def _list() -> Any:
        async with nats_client(settings) as client:
            return await client.list_limits(limit=limit)

    listed = run(_list())
    if as_json:
        typer.echo(listed.model_dump_json(indent=2))
        return
    table = Table("limit", "key", "max", "in use", "waiting", "next in line / next free")
    for s in listed.limits:
        if s.kind == "rate":
            table.add_row(s.limit, s.key, f"{s.max}/{s.per:g}s", "", "",
                          s.next_free.isoformat(timespec="milliseconds")
                          if s.next_free else "")
        else:
            table.add_row(s.limit, s.key, str(s.max), str(s.in_use), str(s.waiting),
                          s.queue[0] if s.queue else "")
    console.print(table)
