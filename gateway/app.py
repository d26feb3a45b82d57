"""natsflow's HTTP gateway: REST over the NATS API, one client among others.

The gateway holds no state and no logic of the orchestrator: each request becomes one
:class:`natsflow.client.NatsflowClient` call, each reply one HTTP answer, each error one
RFC 9457 problem document (see ``_problems.HTTP_BY_CODE``). The routes are in
:mod:`gateway.routes`, one router per resource; this module builds the app around them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client

from contracts import __version__
from transport.connect import NatsSettings
from transport.streams import Topology

from ._auth import KeyAuth, KeyCache, scoped_route_class
from ._link import NatsLink
from ._metrics import install_metrics
from ._problems import install_problem_handlers
from ._tracing import install_tracing
from .routes import ROUTERS, include
from .routes._answers import Accepted
from .routes.events import HEARTBEAT_SECONDS
from .routes.health import Health

__all__ = ["KEYS", "Accepted", "Health", "KeyAuth", "create_app", "serve"]

#: API keys on, with the default settings: what the gateway does unless told otherwise.
KEYS: Final = KeyAuth()

_log = logging.getLogger("natsflow.gateway")


class _Gateway(FastAPI):
    """FastAPI, with the one thing of its OpenAPI document it cannot be told.

    FastAPI titles every request-body schema that is not a ``$ref`` after the
    parameter (``"title": "Body"``); the body of ``POST /workflows`` is the ``oneOf``
    its models make, and is documented as just that.
    """

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema:
            return self.openapi_schema
        schema = super().openapi()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                content = operation.get("requestBody", {}).get("content", {})
                body = content.get("application/json", {}).get("schema", {})
                if "oneOf" in body:
                    body.pop("title", None)
        return schema


def create_app(settings: NatsSettings, *, auth: KeyAuth | None = KEYS,
               request_timeout: float = 10.0, nc: Client | None = None,
               heartbeat: float = HEARTBEAT_SECONDS) -> FastAPI:
    """The gateway's ASGI app.

    Args:
        settings: NATS connection and deployment prefix.
        auth: API keys (the default): every route but health, docs, metrics and the
            AsyncAPI document needs a key with the route's scope (see
            ``gateway._auth.ROUTE_SCOPES``). None: no authentication at all.
        request_timeout: Seconds to wait for each orchestrator reply (then 503).
        nc: An already-connected NATS client to use instead of connecting in the
            lifespan; it is not closed by the app.
        heartbeat: Seconds between ``: keep-alive`` comments on idle event streams.

    Returns:
        The FastAPI app. Its lifespan connects to NATS in the background, so it starts
        even when NATS is down and answers 503 until connected.
    """
    link = NatsLink(settings, request_timeout=request_timeout, nc=nc)
    keys = None if auth is None else KeyCache(
        link, Topology(settings.subjects, replicas=auth.replicas),
        touch_interval=auth.touch_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        link.start()
        if keys is not None:
            keys.start()
        try:
            yield
        finally:
            if keys is not None:
                await keys.close()
            await link.close()

    app = _Gateway(
        title="natsflow",
        summary="Workflows on NATS: create, start, stop and watch DAGs of tasks.",
        description="The NATS interface behind this API (subjects and message "
                    "payloads) is described by an AsyncAPI document: "
                    "[/asyncapi](/asyncapi) ([/asyncapi.json](/asyncapi.json)).",
        version=__version__,
        lifespan=lifespan,
        # One schema per model: a body model is documented as the model it answers with.
        separate_input_output_schemas=False,
    )
    # Before any route is added: each one takes its scope check from ROUTE_SCOPES.
    app.router.route_class = scoped_route_class(auth)
    # What the routes' dependencies hand out (gateway._deps).
    app.state.link = link
    app.state.keys = keys
    app.state.subjects = settings.subjects
    app.state.heartbeat = heartbeat
    app.state.metrics = install_metrics(app)
    install_tracing(app)  # added last, so it runs first: the metrics are inside the span
    install_problem_handlers(app)
    for router in ROUTERS:
        include(app, router)
    return app


async def serve(settings: NatsSettings, *, host: str = "127.0.0.1", port: int = 8000,
                auth: KeyAuth | None = KEYS, request_timeout: float = 10.0,
                log_level: str = "info", configure_logging: bool = True) -> None:
    """Run the gateway with uvicorn in the current event loop.

    Returns when uvicorn exits (SIGINT/SIGTERM when run in the main thread). When the
    calling task is cancelled, uvicorn shuts down gracefully first, then the
    cancellation propagates.

    Args:
        settings: NATS connection and deployment prefix.
        host: Interface to listen on.
        port: TCP port to listen on.
        auth: API keys (the default), or None for none (a warning is logged).
        request_timeout: Seconds to wait for each orchestrator reply.
        log_level: uvicorn's log level.
        configure_logging: Let uvicorn install its own log handlers; False leaves its
            loggers to the root logger's handlers (e.g. JSON lines).
    """
    if auth is None:
        _log.warning("authentication is OFF: anyone who reaches http://%s:%d may read and "
                     "change every workflow", host, port)
    config = uvicorn.Config(create_app(settings, auth=auth, request_timeout=request_timeout),
                            host=host, port=port, lifespan="on", log_level=log_level,
                            log_config=uvicorn.config.LOGGING_CONFIG if configure_logging
                            else None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="natsflow-gateway-uvicorn")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
