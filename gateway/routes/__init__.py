"""The gateway's routes: one ``APIRouter`` per resource, each in its own module.

=====================  ====================================================
module                 routes
=====================  ====================================================
``workflows``          ``/workflows``, ``/workflows/{id}/...``, ``/workflows/bulk``
``events``             ``/workflows/{id}/events``, ``/events`` (SSE)
``batches``            ``/batches``, ``/batches/{id}``, ``/batches/{id}/stop``
``definitions``        ``/definitions``, ``/definitions/{name}/...``
``schedules``          ``/schedules``, ``/schedules/{name}/...``
``health``             ``/healthz``, ``/readyz``
``metrics``            ``/metrics`` (not in the OpenAPI document)
``asyncapi``           ``/asyncapi``, ``/asyncapi.json`` (likewise)
``dead_letters``       ``/dead-letters``
``triggers``           ``/triggers``, ``/triggers/{name}/...``
``limits``             ``/limits``
=====================  ====================================================

A route takes what it needs through ``Depends`` (:mod:`gateway._deps`: the NATS link,
the caller's namespaces, the trace; :data:`gateway._auth.Caller`), its body as a model in
its signature, and raises natsflow errors, which the app's exception handlers answer
as problem documents (:mod:`gateway._problems`). A new resource is a new module here
with ``router = APIRouter(tags=[...])``, one entry in :data:`ROUTERS`, a row per route in
:data:`gateway._auth.ROUTE_SCOPES`, and a row in :data:`gateway._bodies.BODY_RULES`
per route that takes a body; ``create_app`` refuses to build without them.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from . import (
    asyncapi,
    batches,
    dead_letters,
    definitions,
    events,
    health,
    limits,
    metrics,
    schedules,
    triggers,
    workflows,
)

__all__ = ["ROUTERS", "include"]

#: Every router of the gateway, in the order their routes are matched.
ROUTERS: Final[tuple[APIRouter, ...]] = (
    workflows.router, events.router, batches.router, definitions.router,
    schedules.router, health.router, metrics.router, asyncapi.router, dead_letters.router,
    triggers.router, limits.router,
)


def include(app: FastAPI, router: APIRouter) -> None:
    """Add each route of ``router`` to ``app``, built by the app's own route class.

    Not ``app.include_router``: FastAPI (0.165) keeps the router's route objects, built
    once by the router's route class; the gateway's route class is the app's, since
    what it adds (the scope check of the app's keys, the body decoding) is per app.
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: the gateway's routers hold API routes only")
        app.router.add_api_route(
            route.path, route.endpoint, methods=sorted(route.methods or ()),
            response_model=route.response_model, status_code=route.status_code,
            tags=route.tags, dependencies=route.dependencies, summary=route.summary,
            description=route.description, response_description=route.response_description,
            responses=route.responses, deprecated=route.deprecated, name=route.name,
            operation_id=route.operation_id, include_in_schema=route.include_in_schema,
            response_class=route.response_class, callbacks=route.callbacks,
            openapi_extra=route.openapi_extra)
