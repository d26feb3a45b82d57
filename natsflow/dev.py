"""``natsflow dev``: the whole system on one machine, started and stopped as one.

It runs a nats-server (unless ``NATS_URL`` points at one), then the orchestrator (with
its metrics on a free local port), the index, the gateway and the demo worker as child
processes started exactly as a user would start them (``python -m natsflow.cli
<service>``), waits until the gateway is ready, and supervises them: Ctrl-C or SIGTERM
stops the children, then the server, and exits 0; a child that dies on its own stops
everything with a non-zero exit.

The gateway is open (no API keys) unless ``--auth`` is given, so without it the gateway
listens on loopback only; with it, an admin key is made (the one from an earlier run
revoked) and printed in the banner.

The banner's CLI commands carry ``--nats-url`` and ``--prefix`` whenever these differ
from the CLI's defaults, so they reach this deployment as printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import httpx
from rich.panel import Panel
from rich.text import Text

from contracts.egress import LOOPBACK
from contracts.errors import NatsflowError, NotFound
from contracts.keys import CreateKeyRequest, Scope
from contracts.subjects import DEFAULT_PREFIX, Subjects
from transport.connect import NatsSettings, connect
from transport.keys import KeyStore
from transport.streams import Topology

from ._cli_common import console, err_console, format_error, settings_env
from ._nats_config import (
    DEFAULT_USERS,
    Auth,
    authorization_block,
    make_credentials,
    user_settings,
    write_config,
)
from .embedded import EmbeddedNats, free_port, port_is_free

__all__ = ["DEMO_WORKFLOW", "DevOptions", "cli_connection_args", "demo_curl", "run_dev"]

#: The workflow ``natsflow dev`` suggests posting; README and examples/hello.yaml match it.
DEMO_WORKFLOW: Final[dict[str, Any]] = {
    "name": "hello",
    "input": {"who": "world", "a": 2, "b": 3},
    "steps": [
        {"id": "greet", "task": "demo.echo", "input": {"message": "hello ${input.who}"}},
        {"id": "add", "task": "demo.add", "input": {"a": "${input.a}", "b": "${input.b}"},
         "depends_on": ["greet"]},
    ],
}

#: The name of the admin key ``natsflow dev --auth`` makes (and revokes the next time).
DEV_KEY_NAME: Final = "dev-admin"
_DEFAULT_NATS_PORT: Final = 4222
_READY_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class DevOptions:
    """What ``natsflow dev`` was asked for."""

    host: str = "127.0.0.1"
    port: int = 8000
    nats_port: int | None = None
    data_dir: Path = Path(".natsflow")
    ephemeral: bool = False
    worker: bool = True
    nats_url: str | None = None  # an existing NATS; None starts one
    prefix: str | None = None
    auth: bool = False  # API keys on the gateway (an admin key is made and printed)
    secure: bool = False  # one NATS user per service, least privilege each


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: TextIO = field(repr=False)


def demo_curl(gateway_url: str, *, api_key: str | None = None) -> str:
    """A ready-to-paste curl that creates the demo workflow (with the key, if given)."""
    body = json.dumps(DEMO_WORKFLOW, separators=(",", ":"))
    auth = f" -H {shlex.quote('authorization: Bearer ' + api_key)}" if api_key else ""
    return (f"curl -s -X POST {gateway_url}/workflows{auth} "
            f"-H 'content-type: application/json' -d {shlex.quote(body)}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback interface (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _dev_key(settings: NatsSettings) -> str:
    """A fresh admin key for this run; the one of an earlier run is revoked."""
    nc = await connect(settings, name="natsflow-dev")
    try:
        store = await KeyStore.open(nc.jetstream(), Topology(settings.subjects))
        with contextlib.suppress(NotFound):
            await store.revoke(DEV_KEY_NAME)
        made = await store.create(CreateKeyRequest(name=DEV_KEY_NAME, scopes=[Scope.ADMIN],
                                                   namespaces=["*"]), now=datetime.now(UTC))
    finally:
        await nc.close()
    return made.key


def cli_connection_args(settings: NatsSettings) -> str:
    """The ``--nats-url``/``--prefix`` options a CLI command needs to reach ``settings``'
    deployment: those that differ from the CLI's defaults (empty when none do)."""
    defaults = NatsSettings()
    args = []
    if settings.servers != defaults.servers:
        args += ["--nats-url", ",".join(settings.servers)]
    if settings.prefix != DEFAULT_PREFIX:
        args += ["--prefix", settings.prefix]
    return "".join(f" {shlex.quote(a)}" for a in args)


class _StopRequested:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def run_dev(opts: DevOptions) -> int:
    """Run the dev system until Ctrl-C/SIGTERM (exit 0) or a child's death (non-zero)."""
    if not opts.auth and not is_loopback(opts.host):
        err_console.print(f"error[invalid-request]: without --auth the gateway is open, so "
                          f"natsflow dev listens on loopback only, not {opts.host}; add "
                          f"--auth to listen there with API keys", markup=False)
        return 2
    stop = _StopRequested()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    if not port_is_free(opts.port, _probe_host(opts.host)):
        err_console.print(f"error[unavailable]: port {opts.port} is in use; "
                          f"pick another with --port")
        return 3
    base = Path(tempfile.mkdtemp(prefix="natsflow-dev-")) if opts.ephemeral else opts.data_dir
    server: EmbeddedNats | None = None
    children: list[_Child] = []
    try:
        users: dict[str, NatsSettings] = {}
        if opts.nats_url:
            settings = NatsSettings.from_env(servers=opts.nats_url, prefix=opts.prefix)
        elif opts.secure:
            server, settings, users = _start_secure_nats(base, opts)
        else:
            server = _start_nats(base, opts.nats_port)
            settings = NatsSettings.from_env({}, servers=server.url, prefix=opts.prefix)
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        api_key = None
        if opts.auth:
            try:
                api_key = asyncio.run(_dev_key(settings))
            except NatsflowError as err:
                err_console.print(format_error(err), markup=False)
                return 3
        logs = base / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        metrics_url = f"http://127.0.0.1:{(metrics_port := free_port())}/metrics"
        services: list[tuple[str, list[str]]] = [
            # Loopback opened: the demo's http steps and webhooks call this machine.
            ("orchestrator", ["orchestrator", "--allow-egress", ",".join(LOOPBACK),
                              "--metrics-port", str(metrics_port),
                              "--metrics-host", "127.0.0.1"]),
            ("index", ["index"]),
            ("gateway", ["gateway", "--host", opts.host, "--port", str(opts.port),
                         *([] if opts.auth else ["--no-auth"])]),
        ]
        if opts.worker:
            services.append(("worker", ["worker", "natsflow.demo:worker"]))
        for name, args in services:
            # With --secure each service connects as its own user (same names).
            own = {**env, **settings_env(users[name])} if name in users else env
            children.append(_spawn(name, args, env=own, log_path=logs / f"{name}.log"))
        gateway_url = f"http://{_url_host(opts.host)}:{opts.port}"
        if not _wait_ready(gateway_url, children, stop):
            if stop.requested:
                return 0
            return _report_failure(children, "did not become ready")
        _print_banner(gateway_url, metrics_url, settings, logs, server, opts, api_key)
        while not stop.requested:
            dead = next((c for c in children if c.proc.poll() is not None), None)
            if dead is not None:
                return _report_failure(children, f"exited with code {dead.proc.returncode}",
                                       dead)
            time.sleep(0.2)
        console.print("stopping…")
        return 0
    finally:
        _stop_children(children)
        if server is not None:
            server.stop()
        if opts.ephemeral:
            shutil.rmtree(base, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "localhost", "") else host


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _start_nats(base: Path, port: int | None) -> EmbeddedNats:
    if port is None:
        port = _DEFAULT_NATS_PORT if port_is_free(_DEFAULT_NATS_PORT) else free_port()
    server = EmbeddedNats(base / "nats", port=port, log_file=base / "nats.log")
    return server.start()


def _start_secure_nats(base: Path, opts: DevOptions
                       ) -> tuple[EmbeddedNats, NatsSettings, dict[str, NatsSettings]]:
    """The embedded server with one user per service (``natsflow nats-config``'s
    defaults, fresh passwords each start), and each user's settings; the users' env
    files are written to ``<data dir>/nats-users`` (the submitter's and watcher's are
    for you)."""
    port = opts.nats_port
    if port is None:
        port = _DEFAULT_NATS_PORT if port_is_free(_DEFAULT_NATS_PORT) else free_port()
    subjects = Subjects(opts.prefix or DEFAULT_PREFIX)
    creds = make_credentials(DEFAULT_USERS, Auth.PASSWORD)
    server = EmbeddedNats(base / "nats", port=port, log_file=base / "nats.log",
                          config=authorization_block(creds, subjects))
    server.start()
    write_config(base / "nats-users", creds, subjects, servers=[server.url], store_dir=None,
                 listen=None)
    users = {c.user.name: user_settings(c, servers=[server.url], subjects=subjects)
             for c in creds}
    # What the banner's commands use: the watcher reads status and events.
    return server, users["watcher"], users


def _spawn(name: str, args: list[str], *, env: dict[str, str], log_path: Path) -> _Child:
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _stop_children
    # A session of its own: the terminal's Ctrl-C reaches only us, and we stop the
    # children in order.
    proc = subprocess.Popen([sys.executable, "-m", "natsflow.cli", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return _Child(name, proc, log_path, log)


def _wait_ready(url: str, children: list[_Child], stop: _StopRequested) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT
    with httpx.Client(timeout=1.0) as http:
        while time.monotonic() < deadline and not stop.requested:
            if any(c.proc.poll() is not None for c in children):
                return False
            try:
                if http.get(f"{url}/readyz").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    return False


def _stop_children(children: list[_Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    for child in children:
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            err_console.print(f"{child.name} did not stop in {_STOP_TIMEOUT:.0f}s; killing it")
            child.proc.kill()
            child.proc.wait()
        child.log.close()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _report_failure(children: list[_Child], what: str, culprit: _Child | None = None) -> int:
    culprit = culprit or next((c for c in children if c.proc.poll() is not None), None)
    name = culprit.name if culprit else "the gateway"
    err_console.print(f"error[unavailable]: {name} {what}; stopping natsflow dev",
                      markup=False)
    if culprit is not None:
        err_console.print(Text(f"--- last lines of {culprit.log_path} ---\n"
                               + _tail(culprit.log_path), style="dim"))
    return 1


def _print_banner(gateway_url: str, metrics_url: str, settings: NatsSettings, logs: Path,
                  server: EmbeddedNats | None, opts: DevOptions,
                  api_key: str | None) -> None:
    nats_note = ("embedded, ephemeral" if opts.ephemeral else f"embedded, data in {opts.data_dir}"
                 ) if server else "existing server"
    body = Text.assemble(
        ("natsflow is running\n\n", "bold green"),
        ("gateway  ", "bold"), f"{gateway_url}\n",
        ("docs     ", "bold"), f"{gateway_url}/docs\n",
        ("metrics  ", "bold"), f"{metrics_url} (orchestrator)\n",
        ("NATS     ", "bold"), f"{', '.join(settings.servers)} ({nats_note})\n",
        *((("users    ", "bold"), "one per service, least privilege (--secure): "
           f"{logs.parent / 'nats-users'}\n") if opts.secure and server else ()),
        ("logs     ", "bold"), f"{logs}\n",
        ("API key  ", "bold"), (f"{api_key} (admin; revoked at the next start)\n\n"
                                if api_key else "none: the gateway is open (--auth for keys)\n\n"),
        ("Ctrl-C stops everything.", "dim"),
    )
    console.print(Panel(body, title="natsflow dev", expand=False))
    # Outside the panel, so that they copy and paste without box characters.
    console.print("Create a workflow:", style="bold")
    console.print(demo_curl(gateway_url, api_key=api_key), markup=False, soft_wrap=True)
    console.print("Then watch it:", style="bold")
    if opts.secure and server is not None:
        # Anonymous clients are refused: the CLI reads as the watcher.
        console.print(f"set -a; . {logs.parent / 'nats-users' / 'watcher.env'}; set +a",
                      markup=False, soft_wrap=True)
    conn = cli_connection_args(settings)
    console.print(f"uv run natsflow status <id>{conn}\n"
                  f"uv run natsflow events <id> --follow{conn}\n", markup=False,
                  soft_wrap=True)
