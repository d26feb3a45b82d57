"""The ``natsflow`` command: run the services, and create and watch workflows.

Every command that talks to NATS takes the connection options ``--nats-url``,
``--user``, ``--password``, ``--token``, ``--creds``, ``--tls-ca``, ``--tls-cert``,
``--tls-key`` and ``--prefix``, each also read from its environment variable (see
:mod:`transport.connect`). Errors print as ``error[<code>]: <message>`` and exit with 2
(the request is wrong: invalid input, unknown id, conflict), 3 (NATS, the orchestrator
or the gateway cannot be reached) or 4 (NATS refused the credentials).
"""

from __future__ import annotations

import typer

from . import _cli_control, _cli_limits, _cli_nats, _cli_services, _cli_workflows
from ._cli_definitions import definitions_app, run_command
from ._cli_keys import keys_app
from ._cli_schedules import schedules_app
from ._cli_triggers import triggers_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="natsflow",
    help="natsflow: workflows on NATS. Start with `natsflow dev`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each group is a module of its own; unnamed groups add top-level commands.
app.add_typer(_cli_services.app)    # dev, orchestrator, webhook-secret, index, gateway, worker
app.add_typer(_cli_workflows.app)   # submit, status, stop, signal, events
app.add_typer(_cli_nats.app)        # asyncapi, nats-config
app.add_typer(definitions_app)      # definitions apply|ls|show
app.add_typer(keys_app)             # keys create|ls|revoke
app.add_typer(schedules_app)        # schedules create|ls|get|pause|unpause|trigger|backfill|delete
app.add_typer(triggers_app)         # triggers create|ls|get|stats|pause|resume|delete
app.add_typer(_cli_control.app)     # ls, watch, bulk, pause, resume, retry, rerun, verify
app.add_typer(_cli_limits.app)      # limits
app.command("run")(run_command)     # a stored definition: with the definitions group


def main() -> None:
    """Entry point of the ``natsflow`` script."""
    app()


if __name__ == "__main__":
    main()
