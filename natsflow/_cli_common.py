"""What every CLI command shares: connection options, error output, running coroutines."""

from __future__ import annotations

import asyncio
import functools
import inspect
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from contracts.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NatsAuthFailed,
    NatsflowError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from transport.connect import NatsSettings

from ._gc import tune_gc
from ._loop import loop_factory, run_served

__all__ = [
    "EXIT_AUTH_FAILED",
    "EXIT_CLIENT_ERROR",
    "EXIT_UNAVAILABLE",
    "console",
    "err_console",
    "exit_code_for",
    "fail",
    "format_error",
    "run",
    "run_until_signal",
    "settings_env",
    "with_settings",
]

#: Exit code for errors of the request: invalid input, unknown id, conflicts.
EXIT_CLIENT_ERROR = 2
#: Exit code when NATS, the orchestrator or the gateway cannot be reached.
EXIT_UNAVAILABLE = 3
#: Exit code when NATS refuses the credentials (``nats-auth-failed``), or the gateway the
#: API key (``unauthenticated``, ``forbidden``).
EXIT_AUTH_FAILED = 4

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

_T = TypeVar("_T")
_PANEL = "Connection"


def _opt(name: str, envvar: str, help: str) -> Any:
    return typer.Option(name, envvar=envvar, help=help, rich_help_panel=_PANEL,
                        show_envvar=True)


# The shared connection options, added to a command's signature by `with_settings`.
_CONNECTION_PARAMS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, _opt(flag, env, help)])
    for name, flag, env, help in (
        ("nats_url", "--nats-url", "NATS_URL", "NATS server URL(s), comma-separated."),
        ("user", "--user", "NATS_USER", "NATS user name."),
        ("password", "--password", "NATS_PASSWORD", "NATS password."),
        ("token", "--token", "NATS_TOKEN", "NATS auth token."),
        ("creds", "--creds", "NATS_CREDS", "Path to a NATS .creds file."),
        ("nkey", "--nkey", "NATS_NKEY", "Path to an nkey seed file."),
        ("tls_ca", "--tls-ca", "NATS_TLS_CA", "CA certificate for TLS."),
        ("tls_cert", "--tls-cert", "NATS_TLS_CERT", "Client certificate for TLS."),
        ("tls_key", "--tls-key", "NATS_TLS_KEY", "Client key for TLS."),
        ("prefix", "--prefix", "NATSFLOW_PREFIX", "Subject prefix of the deployment."),
        ("inbox_prefix", "--inbox-prefix", "NATS_INBOX_PREFIX",
         "Prefix of reply inboxes (_INBOX.<user> with per-user permissions)."),
    )
]


def with_settings(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Give a command the shared connection options, passed to it as ``settings``.

    The command declares ``settings: NatsSettings`` (keyword-only) and receives the
    settings built from the options, which typer also reads from the environment.
    """
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "settings"]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        conn = {p.name: kwargs.pop(p.name, None) for p in _CONNECTION_PARAMS}
        try:
            settings = NatsSettings.from_env(
                {}, servers=conn.pop("nats_url"), **conn)
        except ValueError as exc:
            fail(InvalidRequest(f"invalid connection options: {exc}"))
        return fn(*args, settings=settings, **kwargs)

    new_sig = sig.replace(parameters=[*own, *_CONNECTION_PARAMS])
    wrapper.__signature__ = new_sig  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in new_sig.parameters.values()}
    if sig.return_annotation is not inspect.Signature.empty:
        wrapper.__annotations__["return"] = sig.return_annotation
    return wrapper


def settings_env(settings: NatsSettings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in a child process."""
    env = {"NATS_URL": ",".join(settings.servers), "NATSFLOW_PREFIX": settings.prefix}
    for field, var in (("user", "NATS_USER"), ("password", "NATS_PASSWORD"),
                       ("token", "NATS_TOKEN"), ("creds", "NATS_CREDS"),
                       ("nkey", "NATS_NKEY"), ("tls_ca", "NATS_TLS_CA"),
                       ("tls_cert", "NATS_TLS_CERT"), ("tls_key", "NATS_TLS_KEY"),
                       ("inbox_prefix", "NATS_INBOX_PREFIX")):
        value = getattr(settings, field)
        if value:
            env[var] = value
    return env


def exit_code_for(err: NatsflowError) -> int:
    """The process exit code for an error: 2 client error, 3 unavailable, 4 NATS refused
    the credentials or the gateway the API key, else 1."""
    if (isinstance(err, NatsAuthFailed | Unauthenticated | Forbidden)
            or err.code == NatsAuthFailed.code):
        return EXIT_AUTH_FAILED
    if isinstance(err, Unavailable):
        return EXIT_UNAVAILABLE
    if isinstance(err, InvalidRequest | NotFound | Conflict):
        return EXIT_CLIENT_ERROR
    if err.code.startswith("invalid-") or err.code.endswith(("not-found", "conflict")):
        return EXIT_CLIENT_ERROR
    return 1


def format_error(err: NatsflowError) -> str:
    """``error[<code>]: <message>``, naming the step, field and per-field errors."""
    where = ", ".join(f"{k} {v}" for k, v in (("step", err.step), ("field", err.field)) if v)
    text = f"error[{err.code}]: {err.message}"
    if where:
        text += f" ({where})"
    for fe in err.errors or []:
        text += f"\n  {fe.loc}: {fe.message}"
    return text


def fail(err: NatsflowError) -> NoReturn:
    """Print ``err`` on stderr and exit with its code."""
    err_console.print(format_error(err), markup=False, soft_wrap=True)
    raise typer.Exit(exit_code_for(err))


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a command's coroutine; natsflow errors end the process with their code."""
    try:
        return asyncio.run(coro)
    except NatsflowError as err:
        fail(err)


def run_until_signal(make: Callable[[], Awaitable[Any]], *, grace: float = 8.0) -> None:
    """Run a service until SIGINT/SIGTERM, then give it ``grace`` seconds to clean up.

    The process's garbage collector is tuned for serving first (see :mod:`natsflow._gc`),
    and it runs on uvloop where installed (see :mod:`natsflow._loop`).

    Exits 0 after a signal, also when the clean-up overruns (it is then cut short).
    """

    try:
        tune_gc()
        factory = loop_factory()
    except NatsflowError as err:
        fail(err)

    async def main() -> None:
        task = asyncio.ensure_future(make())
        signalled = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, signalled.set)
        waiter = asyncio.ensure_future(signalled.wait())
        try:
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # the service ended by itself: surface why
                return
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=grace)
            if not done:
                err_console.print(f"clean-up took over {grace:.0f}s; cutting it short")
            elif not task.cancelled() and task.exception() is not None:
                task.result()
        finally:
            waiter.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        run_served(main(), factory)
    except KeyboardInterrupt:
        pass
    except NatsflowError as err:
        fail(err)
    sys.stdout.flush()
