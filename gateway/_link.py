"""The gateway's link to NATS: an injected connection, or one made in the background.

The gateway starts whether or not NATS is up; until the connection exists (or while it
is reconnecting) every call answers ``Unavailable``, which the gateway turns into 503
(``NatsAuthFailed`` while NATS refuses the gateway's credentials). :meth:`NatsLink.readiness`
reports each service the gateway needs: NATS, the orchestrator and the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Literal

from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import NatsAuthFailed, NatsflowError, Unavailable
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings, connect

__all__ = ["CLIENT_NAME", "Dependency", "NatsLink", "Readiness"]

#: How the gateway's connection is named on the server.
CLIENT_NAME: Final = "natsflow-gateway"
_RETRY_SECONDS: Final = 1.0

_log = logging.getLogger("natsflow.gateway")


class Dependency(BaseModel):
    """How one service the gateway needs stands."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    detail: str = Field(description="What was found, e.g. `no index answers on NATS`.")
    code: str | None = Field(default=None, description="The error code when not ok.")


class Readiness(BaseModel):
    """``GET /readyz``: each dependency, ready only when all of them are."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ready", "not-ready"]
    nats: Dependency = Field(description="The gateway's NATS connection.")
    orchestrator: Dependency = Field(description="An orchestrator answers its API.")
    index: Dependency = Field(description="An index answers `workflow.list` and "
                                          "`workflow.bulk` (`natsflow index`).")

    def missing(self) -> dict[str, Dependency]:
        """The dependencies that are not ok, by name."""
        return {name: dep for name, dep in (("nats", self.nats),
                                            ("orchestrator", self.orchestrator),
                                            ("index", self.index)) if not dep.ok}


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
        self._made = asyncio.Event()  # set once the client exists
        if self._client is not None:
            self._made.set()
        self._refused: NatsAuthFailed | None = None  # NATS refuses our credentials

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
            if self._refused is not None:
                raise NatsAuthFailed(self._refused.message)
            raise Unavailable("not connected to NATS yet")
        if not self._client.nc.is_connected:
            raise Unavailable("the connection to NATS is down; reconnecting")
        return self._client

    async def connection(self) -> Client:
        """The NATS connection, once there is one (it may be reconnecting later)."""
        await self._made.wait()
        assert self._client is not None
        return self._client.nc

    def start(self) -> None:
        """Begin connecting in the background, unless a connection was injected."""
        if self._client is None and self._task is None:
            self._task = asyncio.create_task(self._connect(), name="natsflow-gateway-connect")

    async def _connect(self) -> None:
        said = ""
        while True:
            try:
                nc = await connect(self._settings, name=CLIENT_NAME, timeout=None)
            except Exception as exc:
                # connect() normally retries forever by itself; whatever else escapes
                # (refused credentials, a bad credentials file, ...) must not end the
                # gateway's attempts: they may be fixed on the server. One log line per
                # cause, not one per attempt.
                self._refused = exc if isinstance(exc, NatsAuthFailed) else None
                if str(exc) != said:
                    said = str(exc)
                    _log.warning("cannot connect to NATS (%s); retrying", exc)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            self._refused = None
            self._client = self._client_for(nc)
            self._made.set()
            _log.info("connected to NATS at %s", nc.connected_url.netloc
                      if nc.connected_url else "?")
            return

    async def readiness(self, *, timeout: float = 1.0) -> Readiness:
        """Ping each service the gateway needs (at once) and report how each stands.

        Args:
            timeout: Seconds to wait for each ping's first answer.
        """
        try:
            client = self.client()
        except NatsflowError as exc:
            unknown = Dependency(ok=False, detail="not known: no NATS connection",
                                 code=Unavailable.code)
            return Readiness(status="not-ready",
                             nats=Dependency(ok=False, detail=exc.message, code=exc.code),
                             orchestrator=unknown, index=unknown)
        subjects = client.subjects
        orchestrator, index = await asyncio.gather(
            client.ping(timeout), client.ping(timeout, service=subjects.index_service_name))
        url = client.nc.connected_url
        report = Readiness(
            status="ready" if orchestrator and index else "not-ready",
            nats=Dependency(ok=True, detail=f"connected to {url.netloc if url else '?'}"),
            orchestrator=_pinged(orchestrator, "orchestrator", subjects.service_name),
            index=_pinged(index, "index", subjects.index_service_name,
                          hint=" (`natsflow index` answers workflow.list and workflow.bulk)"))
        return report

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
            self._made.clear()  # a later start connects again


def _pinged(answered: bool, what: str, service: str, *, hint: str = "") -> Dependency:
    if answered:
        return Dependency(ok=True, detail=f"{what} answers $SRV.PING.{service}")
    return Dependency(ok=False, detail=f"no {what} answers on NATS ($SRV.PING.{service})"
                                       f"{hint}", code=Unavailable.code)
