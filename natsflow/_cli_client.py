"""How the CLI reaches natsflow: one :class:`NatsflowClient`, over NATS or a gateway.

Every command talks through :func:`cli_client` (or :func:`nats_client`, for the commands
that only NATS serves). ``--gateway`` (``submit``, ``status``, ``signal``, ``watch``), for
a deployment whose NATS is not reachable from where the CLI runs but whose gateway is
(with an API key), is the same client on the HTTP transport
(:class:`~natsflow.transports.HttpTransport`): the same calls, answering the same replies
and errors, so the commands print and exit alike either way.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from contracts.errors import Unavailable
from contracts.messages import WorkflowReply
from contracts.models import WorkflowStatus
from natsflow.client import NatsflowClient
from natsflow.transports import HttpTransport
from transport.connect import NatsSettings, connect

__all__ = ["API_KEY_ENV", "cli_client", "nats_client", "require_status"]


#: The environment variable the CLI takes the gateway's API key from (``--gateway``).
API_KEY_ENV = "NATSFLOW_API_KEY"


@asynccontextmanager
async def nats_client(settings: NatsSettings) -> AsyncIterator[NatsflowClient]:
    """A natsflow client on a fresh NATS connection, closed afterwards."""
    nc = await connect(settings, name="natsflow-cli")
    try:
        yield NatsflowClient(nc, settings.subjects)
    finally:
        await nc.close()


@asynccontextmanager
async def cli_client(settings: NatsSettings, gateway_url: str | None
                     ) -> AsyncIterator[NatsflowClient]:
    """The client a command talks through: through the gateway at ``gateway_url`` (the
    API key from ``NATSFLOW_API_KEY``) if given, else over NATS."""
    if not gateway_url:
        async with nats_client(settings) as client:
            yield client
        return
    client = NatsflowClient(HttpTransport(gateway_url, api_key=os.environ.get(API_KEY_ENV)),
                            settings.subjects, timeout=15.0)
    try:
        yield client
    finally:
        await client.aclose()


def require_status(reply: WorkflowReply) -> WorkflowStatus:
    """The status in a reply; a reply without one means the engine is behind."""
    if reply.status is None:
        raise Unavailable(f"workflow {reply.id} was accepted but has no status yet; retry")
    return reply.status
