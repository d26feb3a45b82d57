"""``natsflow dev|orchestrator|index|gateway|worker|webhook-secret``: run natsflow's
services (each until SIGINT/SIGTERM), or all of them locally with ``dev``."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.errors import InvalidRequest, NatsflowError
from transport.connect import NatsSettings
from transport.streams import ENGINE_ACK_WAIT

from ._cli_common import fail, run_until_signal, with_settings
from ._logging import LogFormat, setup_logging

__all__ = ["app"]

#: The service commands (top-level: ``natsflow orchestrator``, ...).
app = typer.Typer()

_LogFormatOpt = Annotated[LogFormat, typer.Option(
    "--log-format", envvar="NATSFLOW_LOG_FORMAT", show_envvar=True, case_sensitive=False,
    help="Log lines as text, or as one JSON object per line (with workflow_id when known).")]
# One deployment-wide setting: a service that creates a stream or bucket first creates
# it at this count, so every service of a cluster deployment takes it (one env var for
# all), and no stream is created at one count and scaled to another by start order.
_ReplicasOpt = Annotated[int, typer.Option(
    "--replicas", envvar="NATSFLOW_REPLICAS", show_envvar=True, min=1,
    help="JetStream replicas of the streams and buckets it creates (3 on a cluster); "
         "give every service of a deployment the same value.")]
_OtelOpt = Annotated[bool, typer.Option(
    "--otel", envvar="NATSFLOW_OTEL", show_envvar=True,
    help="Make OpenTelemetry spans (needs natsflow[otel]; see docs/operations.md).")]


def _setup_tracing(otel: bool, service: str) -> None:
    """Turn tracing on for this service when asked (off, trace headers still pass)."""
    if not otel:
        return
    from transport import tracing

    try:
        tracing.configure(service)
    except RuntimeError as exc:
        fail(InvalidRequest(str(exc), field="--otel"))


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    host: Annotated[str, typer.Option(
        help="Gateway interface; anything but loopback needs --auth.")] = "127.0.0.1",
    nats_port: Annotated[int | None, typer.Option(
        help="Port of the embedded nats-server (default 4222 if free, else any).")] = None,
    data_dir: Annotated[Path, typer.Option(
        help="Where the embedded nats-server keeps its data and the services their logs."
    )] = Path(".natsflow"),
    ephemeral: Annotated[bool, typer.Option(
        help="Keep nothing: data in a temporary directory removed at exit.")] = False,
    worker: Annotated[bool, typer.Option(help="Run the demo worker.")] = True,
    nats_url: Annotated[str | None, typer.Option(
        envvar="NATS_URL", show_envvar=True,
        help="Use this NATS instead of starting one.")] = None,
    prefix: Annotated[str | None, typer.Option(
        envvar="NATSFLOW_PREFIX", show_envvar=True, help="Subject prefix.")] = None,
    auth: Annotated[bool, typer.Option(
        "--auth", help="Gateway with API keys: make an admin key and print it in the "
                       "banner. Without it the gateway is open, so it listens on loopback "
                       "only.")] = False,
    secure: Annotated[bool, typer.Option(
        "--secure", help="Run the embedded nats-server with one user per service, each "
        "with its role's least privilege (as `natsflow nats-config` writes it).")] = False,
) -> None:
    """Run everything locally: nats-server, orchestrator, index, gateway and the demo worker."""
    from .dev import DevOptions, run_dev

    if secure and nats_url:
        fail(InvalidRequest("--secure runs its own nats-server: leave out --nats-url "
                            "(for your own server, see `natsflow nats-config`)",
                            field="--secure"))
    code = run_dev(DevOptions(host=host, port=port, nats_port=nats_port, data_dir=data_dir,
                              ephemeral=ephemeral, worker=worker, nats_url=nats_url,
                              prefix=prefix, auth=auth, secure=secure))
    raise typer.Exit(code)


@app.command()
@with_settings
def orchestrator(
    replicas: _ReplicasOpt = 1,
    builtins: Annotated[bool, typer.Option(
        help="Serve the built-in steps natsflow.request, natsflow.http and natsflow.publish."
    )] = True,
    metrics_port: Annotated[int | None, typer.Option(
        envvar="NATSFLOW_METRICS_PORT", show_envvar=True, min=0, max=65535,
        help="Serve Prometheus metrics on http://HOST:PORT/metrics, HOST being "
             "--metrics-host (default: off).")
    ] = None,
    metrics_host: Annotated[str, typer.Option(
        envvar="NATSFLOW_METRICS_HOST", show_envvar=True,
        help="Interface the metrics server listens on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    ack_wait: Annotated[float, typer.Option(
        envvar="NATSFLOW_ACK_WAIT", show_envvar=True, min=0.5,
        help="Seconds before a message a crashed orchestrator held is redelivered. Give "
             "every replica the same value.")] = ENGINE_ACK_WAIT,
    worker_grace: Annotated[float | None, typer.Option(
        envvar="NATSFLOW_WORKER_GRACE", show_envvar=True, min=0,
        help="Seconds a dispatched task may wait for a worker before its step is marked "
             "waiting_for_worker (event step.waiting_for_worker); 0: never. Default: 30.")
    ] = None,
    log_format: _LogFormatOpt = LogFormat.TEXT,
    webhooks: Annotated[bool, typer.Option(
        help="Deliver webhooks in this process (see docs/webhooks.md).")] = True,
    webhook_secret: Annotated[str | None, typer.Option(
        envvar="NATSFLOW_WEBHOOK_SECRET", show_envvar=True,
        help="Sign webhooks with this key (Natsflow-Signature header); unset: unsigned.")
    ] = None,
    webhook_max_deliveries: Annotated[int, typer.Option(
        envvar="NATSFLOW_WEBHOOK_MAX_DELIVERIES", show_envvar=True, min=1,
        help="Attempts at one webhook delivery before it is dead-lettered.")] = 8,
    webhook_timeout: Annotated[float, typer.Option(
        min=0.1, max=60.0, help="Seconds one webhook POST may take.")] = 10.0,
    allow_egress: Annotated[str | None, typer.Option(
        envvar="NATSFLOW_EGRESS_ALLOW", show_envvar=True,
        help="Hosts and CIDRs http steps and webhooks may call although they are "
             "loopback, private, link-local... (comma-separated, e.g. "
             "10.0.0.0/8,internal.example,*.corp.example).")] = None,
    allow_subject: Annotated[str | None, typer.Option(
        envvar="NATSFLOW_SUBJECTS_ALLOW", show_envvar=True,
        help="Subject patterns request and publish steps may use although they are the "
             "server's or natsflow's (comma-separated, e.g. '$SRV.>,natsflow.api.>').")
    ] = None,
    otel: _OtelOpt = False,
    *,
    settings: NatsSettings,
) -> None:
    """Run the orchestrator until SIGINT/SIGTERM."""
    from contracts.egress import EgressPolicy
    from orchestrator import Orchestrator, faults
    from orchestrator.service import WORKER_GRACE
    from orchestrator.webhooks import WebhookSettings

    setup_logging(log_format)
    try:
        # fault-injection tests only: off unless NATSFLOW_CRASH_AT is set
        crash_points = faults.plan_from_env(os.environ) or faults.NO_CRASHES
        egress = EgressPolicy.parse([allow_egress or ""], [allow_subject or ""])
    except NatsflowError as err:
        fail(err)
    hooks = WebhookSettings(secret=webhook_secret or None,
                            max_deliveries=webhook_max_deliveries, timeout=webhook_timeout)
    _setup_tracing(otel, "natsflow-orchestrator")
    run_until_signal(lambda: Orchestrator(settings, replicas=replicas, builtins=builtins,
                                          metrics_port=metrics_port,
                                          metrics_host=metrics_host, webhooks=webhooks,
                                          webhook_settings=hooks, ack_wait=ack_wait,
                                          egress=egress, crash_points=crash_points,
                                          worker_grace=WORKER_GRACE if worker_grace is None
                                          else worker_grace).run())


@app.command("webhook-secret")
def webhook_secret_command(
    url: Annotated[str, typer.Argument(help="The webhook's URL, as workflows give it.")],
    secret: Annotated[str | None, typer.Option(
        "--webhook-secret", envvar="NATSFLOW_WEBHOOK_SECRET", show_envvar=True,
        help="The orchestrators' webhook secret.")] = None,
) -> None:
    """Print the secret a receiver checks signatures with (derived from the orchestrators'
    secret and its URL; see docs/webhooks.md)."""
    from pydantic import ValidationError

    from contracts.errors import validation_failed
    from contracts.webhooks import derive_secret

    if not secret:
        fail(InvalidRequest("give the orchestrators' secret: --webhook-secret or "
                            "NATSFLOW_WEBHOOK_SECRET", field="--webhook-secret"))
    try:
        print(derive_secret(secret, url))
    except ValidationError as exc:
        fail(validation_failed(exc))


@app.command()
@with_settings
def index(
    replicas: _ReplicasOpt = 1,
    *,
    settings: NatsSettings,
) -> None:
    """Run the workflow index (answers `workflow.list`) until SIGINT/SIGTERM."""
    from orchestrator.index import IndexService

    run_until_signal(lambda: IndexService(settings, replicas=replicas).run())


@app.command()
@with_settings
def gateway(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="Serve without API keys: anyone who reaches the port may do "
                          "anything (warned at start). Without it, every route but health, "
                          "docs and metrics needs a key (natsflow keys create).")] = False,
    replicas: _ReplicasOpt = 1,
    log_format: _LogFormatOpt = LogFormat.TEXT,
    otel: _OtelOpt = False,
    *,
    settings: NatsSettings,
) -> None:
    """Run the HTTP gateway until SIGINT/SIGTERM (its metrics at GET /metrics)."""
    from gateway import KeyAuth, serve

    setup_logging(log_format)
    _setup_tracing(otel, "natsflow-gateway")
    auth = None if no_auth else KeyAuth(replicas=replicas)
    run_until_signal(lambda: serve(settings, host=host, port=port, auth=auth,
                                   configure_logging=False))


@app.command("worker")
@with_settings
def worker_command(
    target: Annotated[str, typer.Argument(
        metavar="MODULE:OBJ", help="The Worker to run, e.g. natsflow.demo:worker.")],
    replicas: _ReplicasOpt = 1,
    log_format: _LogFormatOpt = LogFormat.TEXT,
    otel: _OtelOpt = False,
    *,
    settings: NatsSettings,
) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    setup_logging(log_format)
    _setup_tracing(otel, "natsflow-worker")
    obj = _load_object(target)
    if not callable(getattr(obj, "run", None)):
        fail(InvalidRequest(f"{target} is not a natsflow Worker (it has no run method)"))
    # Room for the worker's own grace (running handlers finish, the rest are handed back).
    run_until_signal(lambda: obj.run(settings, replicas=replicas),
                     grace=float(getattr(obj, "stop_grace", 10.0)) + 5.0)


def _load_object(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        fail(InvalidRequest(f"expected MODULE:OBJ, got {target!r}", field="MODULE:OBJ"))
    # Like uvicorn: modules next to where the command runs are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(InvalidRequest(f"cannot import {module_name}: {exc}"))
    try:
        return getattr(module, attr)
    except AttributeError:
        fail(InvalidRequest(f"module {module_name} has no attribute {attr!r}"))
