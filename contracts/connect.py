"""How every natsflow service connects to NATS: one settings model, read from the env.

Environment variables (each also a CLI option of the services):

    NATS_URL          server URL(s), comma-separated for a cluster (default nats://127.0.0.1:4222)
    NATS_USER         user name           NATS_PASSWORD   password
    NATS_TOKEN        auth token          NATS_CREDS      path to a .creds file
    NATS_TLS_CA       CA certificate      NATS_TLS_CERT / NATS_TLS_KEY  client certificate
    NATSFLOW_PREFIX   subject prefix of the deployment (default natsflow)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field

from .errors import NatsAuthFailed, Unavailable
from .subjects import DEFAULT_PREFIX, Subjects

__all__ = ["NatsSettings", "connect", "is_auth_error"]


class NatsSettings(BaseModel):
    """Connection settings for NATS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> NatsSettings:
        """Settings from environment variables; ``overrides`` that are not None win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("NATS_URL"):
            values["servers"] = [u.strip() for u in env["NATS_URL"].split(",") if u.strip()]
        for field, var in (("user", "NATS_USER"), ("password", "NATS_PASSWORD"),
                           ("token", "NATS_TOKEN"), ("creds", "NATS_CREDS"),
                           ("tls_ca", "NATS_TLS_CA"), ("tls_cert", "NATS_TLS_CERT"),
                           ("tls_key", "NATS_TLS_KEY"), ("prefix", "NATSFLOW_PREFIX")):
            if env.get(var):
                values[field] = env[var]
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "servers" and isinstance(value, str):
                value = [u.strip() for u in value.split(",") if u.strip()]
            values[key] = value
        return cls(**values)

    @property
    def subjects(self) -> Subjects:
        """The names of this deployment."""
        return Subjects(self.prefix)

    def tls_context(self) -> ssl.SSLContext | None:
        """An SSL context when TLS files are configured."""
        if not (self.tls_ca or self.tls_cert):
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx


#: Seconds between client pings; three unanswered ones mean the server is gone.
PING_INTERVAL = 10.0

# What nats-server says when it refuses credentials (nats-py raises AuthorizationError
# only after a connection; while connecting, a plain Error carrying the server's text).
_AUTH_REFUSALS = ("authorization violation", "authentication expired",
                  "authentication revoked")


def is_auth_error(exc: BaseException) -> bool:
    """True when ``exc`` is NATS refusing the connection's credentials."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    return isinstance(exc, nats.errors.Error) and any(
        text in str(exc).lower() for text in _AUTH_REFUSALS)


def _auth_failed(settings: NatsSettings) -> NatsAuthFailed:
    where = f"NATS at {', '.join(settings.servers)}"
    how = ("user " + repr(settings.user) if settings.user
           else "the token" if settings.token
           else f"the creds file {settings.creds}" if settings.creds
           else None)
    if how is None:
        return NatsAuthFailed(f"{where} requires credentials (authorization violation); "
                              f"give --user/--password, --token or --creds")
    return NatsAuthFailed(f"{where} refused {how} (authorization violation); check "
                          f"--user/--password, --token or --creds")


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    timeout: float | None = 5.0,
    on_state: Callable[[str], Awaitable[None]] | None = None,
) -> Client:
    """Connect, and keep reconnecting forever once connected (services never give up).

    Args:
        settings: Where and how to connect.
        name: Client name shown by the server (``nats server report connections``).
        timeout: Seconds to wait for the first connection; None waits forever.
        on_state: Called with ``"disconnected"``/``"reconnected"``/``"closed"``.

    Raises:
        NatsAuthFailed: the servers refused the credentials (as many refusals as there
            are servers, and no connection), also when ``timeout`` is None.
        Unavailable: no server answered within ``timeout``.
    """

    def _cb(state: str) -> Callable[[], Awaitable[None]]:
        async def handler() -> None:
            if on_state is not None:
                await on_state(state)
        return handler

    nc = Client()
    refusals = 0
    refused = asyncio.Event()

    async def _error_cb(exc: Exception) -> None:
        # Connection errors are expected while the server is away; the client retries.
        # A refusal of the credentials is not going away: once every server has
        # refused them, the first connection gives up (see below).
        nonlocal refusals
        if not nc.is_connected and is_auth_error(exc):
            refusals += 1
            if refusals >= len(settings.servers):
                refused.set()

    kwargs: dict[str, Any] = {
        "servers": settings.servers,
        "name": name,
        "connect_timeout": 2.0,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        # A server that hangs (paused, partitioned) keeps the socket open: only missed
        # pongs tell. nats-py's default (every 120 s, 2 missed) takes minutes; this
        # notices in about 30 s and moves to another server of the cluster.
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": 3,
        "error_cb": _error_cb,
        "disconnected_cb": _cb("disconnected"),
        "reconnected_cb": _cb("reconnected"),
        "closed_cb": _cb("closed"),
    }
    if settings.user:
        kwargs["user"] = settings.user
        kwargs["password"] = settings.password
    if settings.token:
        kwargs["token"] = settings.token
    if settings.creds:
        kwargs["user_credentials"] = settings.creds
    tls = settings.tls_context()
    if tls is not None:
        kwargs["tls"] = tls
    connecting = asyncio.ensure_future(nc.connect(**kwargs))
    giving_up = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, giving_up}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if connecting.done() and connecting.exception() is None:
            return nc
    except BaseException:
        await _abandon(nc, connecting)
        raise
    finally:
        giving_up.cancel()
    await _abandon(nc, connecting)
    if refusals:
        raise _auth_failed(settings)
    raise Unavailable(f"cannot reach NATS at {', '.join(settings.servers)}")


async def _abandon(nc: Client, connecting: asyncio.Future[None]) -> None:
    """Stop a first connection still trying (or failed), leaving nothing open."""
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await connecting
    with contextlib.suppress(Exception):
        await nc.close()
