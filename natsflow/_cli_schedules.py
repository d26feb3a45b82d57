"""``natsflow schedules create|ls|get|pause|unpause|trigger|backfill|delete``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.table import Table

from contracts.errors import InvalidRequest, NatsflowError, ScheduleNotFound
from contracts.schedules import ScheduleInfo
from natsflow.schedule_client import ScheduleClient
from transport.connect import NatsSettings

from ._cli_common import console, fail, run, with_settings
from ._cli_namespace import NamespaceOpt, scope

__all__ = ["schedules_app"]

schedules_app = typer.Typer(name="schedules", no_args_is_help=True,
                            help="Schedules: workflows that start themselves on a clock.")

_JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
_NameArg = Annotated[str, typer.Argument(help="The schedule's name.")]
_T = TypeVar("_T")


def _call(settings: NatsSettings, call: Callable[[ScheduleClient], Awaitable[_T]]) -> _T:
    from ._cli_client import nats_client

    async def _go() -> _T:
        async with nats_client(settings) as client:
            return await call(ScheduleClient(client))

    return run(_go())


def _print_json(model: BaseModel) -> None:
    typer.echo(model.model_dump_json(indent=2, exclude_none=True))


def _show(info: ScheduleInfo) -> None:
    s = info.schedule
    state = f"paused ({s.note})" if s.paused and s.note else "paused" if s.paused else "active"
    what = s.spec.cron or (f"every {s.spec.every}s" if s.spec.every else "at times")
    console.print(f"schedule [bold]{s.name}[/] ({s.namespace}): {what} in {s.spec.timezone}, "
                  f"overlap {s.overlap}, {state}")
    if info.missed:
        console.print(f"missed (older than the catch-up window): {info.missed}")
    table = Table("next fire times")
    for t in info.next_fire_times:
        table.add_row(t.isoformat())
    console.print(table)
    runs = Table("fire time", "workflow", "outcome", "state")
    for r in info.recent:
        runs.add_row(r.fire_time.isoformat(), r.workflow_id,
                     f"{r.outcome}" + (f" ({r.reason})" if r.reason else ""),
                     str(r.state or ""))
    console.print(runs)


@schedules_app.command("create")
@with_settings
def create(
    file: Annotated[Path, typer.Argument(help="A schedule as YAML or JSON.")],
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Store a schedule (unchanged if the same one exists); it fires from now on."""
    from ._cli_files import load_mapping

    try:
        data: dict[str, Any] = load_mapping(file)
    except NatsflowError as err:
        fail(err)
    if namespace is not None:
        data = {**data, "namespace": namespace}
    info = _call(settings, lambda c: c.create(data, namespaces=scope(namespace)))
    if as_json:
        _print_json(info)
        return
    console.print(f"schedule [bold]{info.schedule.name}[/] "
                  f"{'created' if info.created else 'unchanged'}")
    _show(info)


@schedules_app.command("ls")
@with_settings
def ls(as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
       settings: NatsSettings) -> None:
    """List the schedules (of every namespace, or of --namespace)."""
    reply = _call(settings, lambda c: c.list(namespace=namespace))
    if as_json:
        _print_json(reply)
        return
    table = Table("namespace", "name", "state", "next fire time")
    for s in reply.schedules:
        table.add_row(s.namespace, s.name, "paused" if s.paused else "active",
                      s.next_fire_time.isoformat() if s.next_fire_time else "")
    console.print(table)


@schedules_app.command("get")
@with_settings
def get(name: _NameArg, as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
        settings: NatsSettings) -> None:
    """A schedule: its next 5 fire times and its last runs with their states."""
    info = _call(settings, lambda c: c.get(name, namespace=namespace,
                                           namespaces=scope(namespace)))
    _print_json(info) if as_json else _show(info)


@schedules_app.command("pause")
@with_settings
def pause(name: _NameArg,
          note: Annotated[str, typer.Option(help="Why it is paused.")] = "",
          as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
          settings: NatsSettings) -> None:
    """Fire no more until unpaused."""
    info = _call(settings, lambda c: c.pause(name, note=note, namespace=namespace,
                                             namespaces=scope(namespace)))
    _print_json(info) if as_json else _show(info)


@schedules_app.command("unpause")
@with_settings
def unpause(name: _NameArg, as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
            settings: NatsSettings) -> None:
    """Fire again from now on."""
    info = _call(settings, lambda c: c.unpause(name, namespace=namespace,
                                               namespaces=scope(namespace)))
    _print_json(info) if as_json else _show(info)


@schedules_app.command("trigger")
@with_settings
def trigger(name: _NameArg, as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
            settings: NatsSettings) -> None:
    """Fire now, through the overlap policy."""
    reply = _call(settings, lambda c: c.trigger(name, namespace=namespace,
                                                namespaces=scope(namespace)))
    if as_json:
        _print_json(reply)
        return
    console.print(f"fired {reply.fire_time.isoformat()}: workflow {reply.workflow_id}")


def _when(value: str, field: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(InvalidRequest(f"{value!r} is not an RFC 3339 time", field=field))
    if t.tzinfo is None:
        fail(InvalidRequest("give a time with its UTC offset", field=field))
    return t


@schedules_app.command("backfill")
@with_settings
def backfill(name: _NameArg,
             start: Annotated[str, typer.Option(help="RFC 3339 time, first of the range.")],
             end: Annotated[str, typer.Option(help="RFC 3339 time, last of the range.")],
             as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
             settings: NatsSettings) -> None:
    """Run the schedule's fire times from --start to --end now."""
    first, last = _when(start, "start"), _when(end, "end")
    reply = _call(settings, lambda c: c.backfill(name, first, last, namespace=namespace,
                                                 namespaces=scope(namespace)))
    if as_json:
        _print_json(reply)
        return
    console.print(f"{len(reply.fire_times)} fire times queued")


@schedules_app.command("delete")
@with_settings
def delete(name: _NameArg, namespace: NamespaceOpt = None, *,
           settings: NatsSettings) -> None:
    """Delete a schedule; its runs going on go on."""
    if not _call(settings, lambda c: c.delete(name, namespace=namespace,
                                              namespaces=scope(namespace))):
        fail(ScheduleNotFound(f"no schedule {name!r}", field="name"))
    console.print(f"schedule [bold]{name}[/] deleted")
