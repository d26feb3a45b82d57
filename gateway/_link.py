"""The gateway's link to NATS: an injected connection, or one made in the background.

The gateway starts whether or not NATS is up; until the connection exists (or while it
is reconnecting) every call answers ``Unavailable``, which the gateway turns into 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from nats.aio.client import Client

from contracts.client import NatsflowClient
from contracts.connect import NatsSettings, connect
from contracts.errors import Unavailable

__all__ = ["CLIENT_NAME", "NatsLink"]

#: How the gateway's connection is named on the server.
CLIENT_NAME: Final = "natsflow-gateway"
_RETRY_SECONDS: Final = 1.0

_log = logging.getLogger("natsflow.gateway")


class NatsLink:
    """Holds the gateway's :class:`NatsflowClient`.

    Args:
        settings: Where NATS is and which deployment to talk to.
        request_timeout: Seconds to wait for an orchestrator reply.
        nc: An already-connected client to use (not closed by :meth:`close`).
    """

    def __init__(self, settings: NatsSettings, *, request_timeout: float,
                 nc: Client | None = None) -> None:
        self._settings = settings
        self._request_timeout = request_timeout
        self._owned = nc is None
        self._client = None if nc is None else self._client_for(nc)
        self._task: asyncio.Task[None] | None = None

    def _client_for(self, nc: Client) -> NatsflowClient:
        return NatsflowClient(nc, self._settings.subjects, timeout=self._request_timeout)

    @property
    def connected(self) -> bool:
        """True while the NATS connection is up."""
        return self._client is not None and bool(self._client.nc.is_connected)

    def client(self) -> NatsflowClient:
        """The client, if connected.

        Raises:
            Unavailable: not connected to NATS (yet, or for now).
        """
        if self._client is None:
            raise Unavailable("not connected to NATS yet")
        if not self._client.nc.is_connected:
            raise Unavailable("the connection to NATS is down; reconnecting")
        return self._client

    def start(self) -> None:
        """Begin connecting in the background, unless a connection was injected."""
        if self._client is None and self._task is None:
            self._task = asyncio.create_task(self._connect(), name="natsflow-gateway-connect")

    async def _connect(self) -> None:
        while True:
            try:
                nc = await connect(self._settings, name=CLIENT_NAME, timeout=None)
            except Exception as exc:
                # connect() normally retries forever by itself; whatever else escapes
                # (bad credentials file, ...) must not end the gateway's attempts.
                _log.warning("cannot connect to NATS (%s); retrying", exc)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            self._client = self._client_for(nc)
            _log.info("connected to NATS at %s", nc.connected_url.netloc
                      if nc.connected_url else "?")
            return

    async def close(self) -> None:
        """Stop connecting, and close the connection if this link made it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owned and self._client is not None:
            await self._client.nc.close()
            self._client = None
