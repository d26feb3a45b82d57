"""How every natsflow service connects to NATS: one settings model, read from the env.

Environment variables (each also a CLI option of the services):

    NATS_URL          server URL(s), comma-separated for a cluster (default nats://127.0.0.1:4222)
    NATS_USER         user name           NATS_PASSWORD   password
    NATS_TOKEN        auth token          NATS_CREDS      path to a .creds file
    NATS_NKEY         path to an nkey seed file (a user's ``SU...`` seed)
    NATS_TLS_CA       CA certificate      NATS_TLS_CERT / NATS_TLS_KEY  client certificate
    NATS_INBOX_PREFIX prefix of this client's reply inboxes (default ``_INBOX``); with
                      per-user permissions (``natsflow nats-config``) ``_INBOX.<user>``
    NATSFLOW_PREFIX   subject prefix of the deployment (default natsflow)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import NatsAuthFailed, Unavailable
from contracts.subjects import DEFAULT_PREFIX, Subjects

__all__ = ["NatsSettings", "connect", "is_auth_error", "is_permission_error"]

log = logging.getLogger("natsflow.connect")


class NatsSettings(BaseModel):
    """Connection settings for NATS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey: str | None = Field(default=None, description="Path to an nkey seed file.")
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    prefix: str = DEFAULT_PREFIX
    inbox_prefix: str | None = Field(
        default=None, description="Prefix of reply inboxes (nats-py's `_INBOX` if None).")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> NatsSettings:
        """Settings from environment variables; ``overrides`` that are not None win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("NATS_URL"):
            values["servers"] = [u.strip() for u in env["NATS_URL"].split(",") if u.strip()]
        for field, var in (("user", "NATS_USER"), ("password", "NATS_PASSWORD"),
                           ("token", "NATS_TOKEN"), ("creds", "NATS_CREDS"),
                           ("nkey", "NATS_NKEY"), ("tls_ca", "NATS_TLS_CA"),
                           ("tls_cert", "NATS_TLS_CERT"), ("tls_key", "NATS_TLS_KEY"),
                           ("prefix", "NATSFLOW_PREFIX"),
                           ("inbox_prefix", "NATS_INBOX_PREFIX")):
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
_PERMISSIONS = "permissions violation"


def is_auth_error(exc: BaseException) -> bool:
    """True when ``exc`` is NATS refusing the connection's credentials."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    return isinstance(exc, nats.errors.Error) and any(
        text in str(exc).lower() for text in _AUTH_REFUSALS)


def is_permission_error(exc: BaseException) -> bool:
    """True when ``exc`` is NATS refusing one publish or subscribe (the permissions of
    the connection's user), which leaves the connection up."""
    return isinstance(exc, nats.errors.Error) and _PERMISSIONS in str(exc).lower()


def _auth_failed(settings: NatsSettings) -> NatsAuthFailed:
    where = f"NATS at {', '.join(settings.servers)}"
    how = ("user " + repr(settings.user) if settings.user
           else "the token" if settings.token
           else f"the creds file {settings.creds}" if settings.creds
           else f"the nkey {settings.nkey}" if settings.nkey
           else None)
    if how is None:
        return NatsAuthFailed(f"{where} requires credentials (authorization violation); "
                              f"give --user/--password, --token, --creds or --nkey")
    return NatsAuthFailed(f"{where} refused {how} (authorization violation); check "
                          f"--user/--password, --token, --creds or --nkey")


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
        if is_permission_error(exc):
            # The server refused one publish or subscription and said so only here:
            # the caller sees a timeout (a request) or silence (a subscription).
            log.warning("NATS refused %s (%s): %s", name,
                        settings.user or settings.nkey or settings.creds or "anonymous", exc)
            return
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
    if settings.nkey:
        kwargs["nkeys_seed"] = settings.nkey
    if settings.inbox_prefix:
        # Replies (API answers, JetStream acks) come under it: with per-user
        # permissions, only this user may subscribe there.
        kwargs["inbox_prefix"] = settings.inbox_prefix
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
