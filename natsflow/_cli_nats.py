"""``natsflow nats-config|asyncapi``: the NATS side of a deployment, a nats-server
configuration with one user per role, and the AsyncAPI document of its subjects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contracts.errors import InvalidRequest
from contracts.subjects import DEFAULT_PREFIX, Subjects

from ._cli_common import console, fail
from ._nats_config import (
    DEFAULT_USERS,
    Auth,
    User,
    make_credentials,
    nsc_commands,
    parse_user,
    write_config,
)

__all__ = ["app", "nats_config"]

#: ``natsflow nats-config`` and ``natsflow asyncapi`` (top-level commands).
app = typer.Typer()


@app.command("nats-config")
def nats_config(
    out: Annotated[Path, typer.Option(
        "--out", help="Directory to write nats-server.conf and the users' env files to."
    )] = Path("natsflow-nats"),
    auth: Annotated[Auth, typer.Option(
        case_sensitive=False,
        help="password: random passwords (bcrypt in the server config); nkeys: an nkey "
             "seed per user (the server holds public keys only).")] = Auth.PASSWORD,
    users: Annotated[list[str] | None, typer.Option(
        "--user", help="A user as ROLE[:NAME][=TASK,...], repeatable (e.g. "
        "worker:mailer=email.send, submitter:ci); default: one of each role, the worker "
        "serving demo.*. Roles: orchestrator, index, gateway, worker, submitter, watcher.")
    ] = None,
    egress: Annotated[list[str] | None, typer.Option(
        "--egress", help="A subject the orchestrator's request/publish steps may reach "
        "(repeatable; give the orchestrator the same with --allow-subject where needed).")
    ] = None,
    prefix: Annotated[str, typer.Option(
        "--prefix", envvar="NATSFLOW_PREFIX", show_envvar=True,
        help="The deployment's subject prefix.")] = DEFAULT_PREFIX,
    nats_url: Annotated[str, typer.Option(
        "--nats-url", help="The URL(s) services connect to, written into the env files."
    )] = "nats://127.0.0.1:4222",
    listen: Annotated[str | None, typer.Option(
        help="host:port the server listens on (default: its own, 0.0.0.0:4222).")] = None,
    store_dir: Annotated[str | None, typer.Option(
        help="JetStream's store directory (default: beside the config, in jetstream/).")
    ] = None,
    nsc: Annotated[bool, typer.Option(
        "--nsc", help="Print `nsc add user` commands for an operator/account (JWT) setup "
                      "instead, and write nothing.")] = False,
) -> None:
    """Write a nats-server config with one user per natsflow role, least privilege each.

    Then: `nats-server -c OUT/nats-server.conf`, and start each service with its own
    env file, e.g. `set -a; . OUT/orchestrator.env; natsflow orchestrator`.
    """
    try:
        subjects = Subjects(prefix)
        chosen: list[User] = ([parse_user(u) for u in users] if users
                              else list(DEFAULT_USERS))
    except ValueError as exc:
        fail(InvalidRequest(str(exc), field="--user"))
    if nsc:
        for command in nsc_commands(chosen, subjects, egress=egress or ()):
            typer.echo(command + "\n")
        return
    try:
        credentials = make_credentials(chosen, auth)
    except ValueError as exc:
        fail(InvalidRequest(str(exc), field="--user"))
    store = store_dir or str((out / "jetstream").resolve())
    servers = [u.strip() for u in nats_url.split(",") if u.strip()]
    written = write_config(out, credentials, subjects, servers=servers, store_dir=store,
                           listen=listen, egress=egress or ())
    console.print(f"wrote {len(written)} files to {out} (readable by you only):")
    for path in written:
        console.print(f"  {path}", markup=False)
    console.print(f"start the server:  nats-server -c {out / 'nats-server.conf'}",
                  markup=False)
    console.print(f"start each service with its own user's env file:  set -a; "
                  f". {out}/<user>.env; set +a; natsflow <service>", markup=False)


@app.command()
def asyncapi(
    prefix: Annotated[str, typer.Option(
        "--prefix", help="The deployment's subject prefix, for the subjects in the document.")
    ] = DEFAULT_PREFIX,
) -> None:
    """Print the AsyncAPI document of natsflow's subjects (JSON; needs no NATS)."""
    from natsflow.asyncapi import asyncapi_json

    try:
        subjects = Subjects(prefix)
    except ValueError as exc:
        fail(InvalidRequest(str(exc), field="prefix"))
    typer.echo(asyncapi_json(subjects), nl=False)
