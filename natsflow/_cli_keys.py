"""``natsflow keys create|ls|revoke``: the gateway's API keys.

These commands write the keys bucket directly over NATS, with the CLI's own NATS
credentials: making a key is an act of whoever administers the deployment's NATS, not
of an HTTP client. The key is printed once, by ``create``; NATS keeps only its hash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.table import Table

from contracts.errors import InvalidRequest, validation_failed
from contracts.keys import DEFAULT_NAMESPACE, ApiKeyInfo, CreatedKey, CreateKeyRequest, Scope
from transport.connect import NatsSettings, connect
from transport.keys import KeyStore
from transport.streams import Topology

from ._cli_common import console, err_console, fail, run, with_settings

__all__ = ["create_key", "keys_app", "parse_duration"]

keys_app = typer.Typer(name="keys", no_args_is_help=True,
                       help="API keys of the HTTP gateway (shown once, stored as a hash).")

_T = TypeVar("_T")
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` as a timedelta.

    Raises:
        InvalidRequest: anything else.
    """
    found = _DURATION_RE.match(text.strip())
    if not found or int(found.group(1)) == 0:
        raise InvalidRequest(f"--expires {text!r}: give a number and a unit, e.g. 12h, "
                             "30d, 2w (s, m, h, d, w)", field="--expires")
    return timedelta(seconds=int(found.group(1)) * _UNIT_SECONDS[found.group(2)])


async def _with_store(settings: NatsSettings, replicas: int,
                      work: Callable[[KeyStore], Awaitable[_T]]) -> _T:
    nc = await connect(settings, name="natsflow-cli")
    try:
        store = await KeyStore.open(nc.jetstream(),
                                    Topology(settings.subjects, replicas=replicas))
        return await work(store)
    finally:
        await nc.close()


async def create_key(settings: NatsSettings, request: CreateKeyRequest, *,
                     replicas: int = 1) -> CreatedKey:
    """Make a key in the deployment of ``settings`` (``natsflow dev --auth`` uses it)."""
    return await _with_store(settings, replicas,
                             lambda store: store.create(request, now=datetime.now(UTC)))


def _scopes_text(info: ApiKeyInfo) -> str:
    return ",".join(str(s) for s in info.scopes)


@keys_app.command("create")
@with_settings
def create(
    name: Annotated[str, typer.Option(help="Unique among live keys, e.g. `ci`.")],
    scope: Annotated[list[Scope], typer.Option(
        "--scope", case_sensitive=False,
        help="What the key may do (repeat the option); admin: everything.")],
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", help=f"A namespace it may touch (repeat; `*`: all). Default: "
                            f"{DEFAULT_NAMESPACE}.")] = None,
    expires: Annotated[str | None, typer.Option(
        help="Expire after this long: 90m, 12h, 30d, 2w (default: never).")] = None,
    replicas: Annotated[int, typer.Option(
        "--replicas", envvar="NATSFLOW_REPLICAS", show_envvar=True, min=1,
        help="JetStream replicas of the keys bucket, if this creates it.")] = 1,
    as_json: _JsonOpt = False,
    *,
    settings: NatsSettings,
) -> None:
    """Make an API key and print it: the only time it is shown."""
    try:
        expires_at = None if expires is None else datetime.now(UTC) + parse_duration(expires)
        request = CreateKeyRequest(name=name, scopes=scope,
                                   namespaces=namespace or [DEFAULT_NAMESPACE],
                                   expires_at=expires_at)
    except InvalidRequest as err:
        fail(err)
    except ValidationError as exc:
        fail(validation_failed(exc))
    made = run(create_key(settings, request, replicas=replicas))
    if as_json:
        typer.echo(made.model_dump_json(indent=2))
        return
    info = made.info
    until = f", expires {info.expires_at:%Y-%m-%d %H:%M}Z" if info.expires_at else ""
    err_console.print(f"key {info.id} ({info.name}): {_scopes_text(info)}; namespaces "
                      f"{','.join(info.namespaces)}{until}. It is shown this once: "
                      "store it now.", markup=False, soft_wrap=True)
    # Alone on stdout, so that KEY=$(natsflow keys create ...) takes it.
    typer.echo(made.key)


@keys_app.command("ls")
@with_settings
def ls(as_json: _JsonOpt = False, *, settings: NatsSettings) -> None:
    """List the live keys (never the keys themselves)."""

    async def _ls(store: KeyStore) -> list[ApiKeyInfo]:
        return [s.key.info() for s in await store.keys()]

    infos = run(_with_store(settings, 1, _ls))
    if as_json:
        typer.echo(json.dumps([i.model_dump(mode="json") for i in infos], indent=2))
        return
    table = Table()
    for header in ("id", "name"):  # whole, so that they copy into `keys revoke`
        table.add_column(header, no_wrap=True)
    for header in ("scopes", "namespaces", "created", "expires", "last used"):
        table.add_column(header)

    def when(t: datetime | None) -> str:
        return t.strftime("%Y-%m-%d %H:%M") if t else "-"

    for i in infos:
        table.add_row(i.id, i.name, _scopes_text(i), ",".join(i.namespaces),
                      when(i.created_at), when(i.expires_at), when(i.last_used_at))
    console.print(table)


@keys_app.command("revoke")
@with_settings
def revoke(
    key: Annotated[str, typer.Argument(metavar="ID|NAME", help="The key's id or name.")],
    *,
    settings: NatsSettings,
) -> None:
    """Revoke a key: every gateway refuses it within a second."""
    info = run(_with_store(settings, 1, lambda store: store.revoke(key)))
    console.print(f"revoked key {info.id} ({info.name})", markup=False)
