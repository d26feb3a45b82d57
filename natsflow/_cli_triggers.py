"""``natsflow triggers create|ls|get|pause|resume|delete|stats``: subjects that start
workflows (see docs/triggers.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from contracts.errors import NatsflowError
from contracts.triggers import Trigger, TriggerInfo, TriggerStats
from natsflow.trigger_client import TriggerClient
from transport.connect import NatsSettings

from ._cli_common import console, fail, run, with_settings
from ._cli_namespace import NamespaceOpt, scope

__all__ = ["triggers_app"]

triggers_app = typer.Typer(name="triggers", no_args_is_help=True,
                           help="Triggers: a NATS subject whose messages start workflows.")

_JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
_Name = Annotated[str, typer.Argument(help="The trigger's name.")]
_T = TypeVar("_T")


def _call(settings: NatsSettings, fn: Callable[[TriggerClient], Awaitable[_T]]) -> _T:
    from ._cli_client import nats_client

    async def go() -> _T:
        async with nats_client(settings) as client:
            return await fn(TriggerClient.of(client))
    return run(go())


def _stats_line(st: TriggerStats) -> str:
    return (f"received {st.received}, matched {st.matched}, skipped {st.skipped}, "
            f"started {st.started}, duplicates {st.duplicates}, failed {st.failed}")


def _show(trigger: Trigger, stats: TriggerStats | None = None) -> None:
    s = trigger.spec
    workflow = (f"definition {s.definition}" + (f" v{s.version}" if s.version else "")
                if s.definition else "inline config")
    source = f"stream {s.stream}" if s.stream else "core NATS"
    state = "paused" + (f" ({trigger.note})" if trigger.note else "") if trigger.paused \
        else "active"
    console.print(f"trigger [bold]{s.name}[/] ({s.namespace}): {s.subject} on {source} "
                  f"-> {workflow}, {state}")
    if s.when:
        console.print(f"  when  {s.when}")
    console.print(f"  id    {s.id}")
    if stats is not None:
        console.print(f"  {_stats_line(stats)}")


@triggers_app.command("create")
@with_settings
def create(
    file: Annotated[Path, typer.Argument(help="The trigger as YAML or JSON (name, subject, "
                                         "definition or config, when, input, id).")],
    paused: Annotated[bool, typer.Option(help="Make it paused.")] = False,
    as_json: _JsonOpt = False,
    namespace: NamespaceOpt = None,
    *,
    settings: NatsSettings,
) -> None:
    """Make a trigger (the same one again changes nothing), in --namespace (default: the
    file's `namespace`, else `default`)."""
    from ._cli_files import load_mapping

    try:
        spec = load_mapping(file)
    except NatsflowError as err:
        fail(err)
    if namespace is not None:
        spec.setdefault("namespace", namespace)
    if paused:
        spec["paused"] = True
    reply = _call(settings, lambda c: c.create_trigger(spec, namespaces=scope(namespace)))
    if as_json:
        typer.echo(reply.model_dump_json(indent=2))
        return
    _show(reply.trigger)
    if not reply.created:
        console.print("  (unchanged: it was there already)")


@triggers_app.command("ls")
@with_settings
def ls(as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
       settings: NatsSettings) -> None:
    """List the triggers with their counters (of every namespace, or of --namespace)."""
    listed = _call(settings, lambda c: c.list_triggers(namespace=namespace))
    if as_json:
        typer.echo(listed.model_dump_json(indent=2))
        return
    table = Table("name", "namespace", "subject", "state", "matched", "started",
                  "skipped", "failed")
    for info in listed.triggers:
        s, st = info.trigger.spec, info.stats
        table.add_row(s.name, s.namespace, s.subject,
                      "paused" if info.trigger.paused else "active", str(st.matched),
                      str(st.started), str(st.skipped), str(st.failed))
    console.print(table)


def _by_name(settings: NatsSettings, fn: Callable[[TriggerClient], Awaitable[Any]],
             as_json: bool) -> None:
    result = _call(settings, fn)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    elif isinstance(result, TriggerInfo):
        _show(result.trigger, result.stats)
    elif isinstance(result, TriggerStats):
        console.print(_stats_line(result))
    else:
        _show(result.trigger)


@triggers_app.command("get")
@with_settings
def get(name: _Name, as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
        settings: NatsSettings) -> None:
    """A trigger and its counters."""
    _by_name(settings, lambda c: c.get_trigger(name, namespace=namespace), as_json)


@triggers_app.command("stats")
@with_settings
def stats(name: _Name, as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
          settings: NatsSettings) -> None:
    """A trigger's counters."""
    _by_name(settings, lambda c: c.trigger_stats(name, namespace=namespace), as_json)


@triggers_app.command("pause")
@with_settings
def pause(name: _Name, note: Annotated[str | None, typer.Option(help="Why.")] = None,
          as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
          settings: NatsSettings) -> None:
    """Stop consuming its messages; they wait for the resume."""
    _by_name(settings, lambda c: c.pause_trigger(name, note=note, namespace=namespace),
             as_json)


@triggers_app.command("resume")
@with_settings
def resume(name: _Name, as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
           settings: NatsSettings) -> None:
    """Consume its messages again, from where it stopped."""
    _by_name(settings, lambda c: c.resume_trigger(name, namespace=namespace), as_json)


@triggers_app.command("delete")
@with_settings
def delete(name: _Name, as_json: _JsonOpt = False, namespace: NamespaceOpt = None, *,
           settings: NatsSettings) -> None:
    """Delete a trigger, its consumer and its counters."""
    _by_name(settings, lambda c: c.delete_trigger(name, namespace=namespace), as_json)
