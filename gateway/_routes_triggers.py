"""Triggers over HTTP: ``/triggers`` (see docs/triggers.md).

Each route takes the trigger's namespace as a ``namespace`` query parameter (default: the
caller's home namespace); ``POST /triggers`` takes it in the body (same default), and
``GET /triggers`` as a filter.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from contracts.models import MAX_CONFIG_BYTES
from contracts.triggers import (
    CreateTriggerRequest,
    PauseTriggerRequest,
    Trigger,
    TriggerInfo,
    TriggerList,
    TriggerStats,
)
from natsflow.trigger_client import TriggerClient

from ._auth import Caller, namespace_query
from ._bodies import read_model, read_object
from ._link import NatsLink
from ._problems import problem_responses

__all__ = ["add_trigger_routes", "trigger_router"]

_Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Trigger name.")]
_Namespace = Annotated[str | None, namespace_query(
    "The trigger's namespace; default: the API key's, when it is bound to exactly one, "
    "else `default`.")]
_JSON = "application/json"


def _json(body: BaseModel, status: int, *, location: str | None = None) -> Response:
    return Response(body.model_dump_json(), status_code=status, media_type=_JSON,
                    headers={"Location": location} if location else None)


def trigger_router(link: NatsLink, route_class: type[APIRoute]) -> APIRouter:
    """The ``/triggers`` routes, made with the app's (scope-checking) route class."""
    router = APIRouter(route_class=route_class, tags=["triggers"])

    def client() -> TriggerClient:
        return TriggerClient.of(link.client())

    @router.post("/triggers", status_code=201, response_model=Trigger,
                 summary="Bind a subject to a workflow",
                 openapi_extra={"requestBody": {"required": True, "content": {_JSON: {
                     "schema": {"$ref": "#/components/schemas/CreateTriggerRequest"}}}}},
                 responses={200: {"model": Trigger,
                                  "description": "The same trigger was there: unchanged."},
                            **problem_responses(400, 403, 404, 409, 413, 503)})
    async def create_trigger(request: Request, caller: Caller) -> Response:
        """Each message on `subject` (core NATS, or the JetStream `stream`) whose `when`
        holds starts the workflow (`definition` or inline `config`) with `input` and
        `id` made from the message. 201 with the trigger; 200 if the same one exists; 409
        if another by that name does; 400 naming the field for a bad subject or
        expression."""
        body = await read_object(request, limit=MAX_CONFIG_BYTES)
        body.setdefault("namespace", caller.home_namespace)
        read_model(CreateTriggerRequest, body)
        reply = await client().create_trigger(body, namespaces=caller.namespace_scope)
        spec = reply.trigger.spec
        location = str(router.url_path_for("get_trigger", name=spec.name))
        if spec.namespace != "default":
            location += f"?namespace={spec.namespace}"
        return _json(reply.trigger, 201 if reply.created else 200, location=location)

    @router.get("/triggers", response_model=TriggerList, summary="Every trigger",
                responses=problem_responses(400, 503))
    async def list_triggers(
        caller: Caller,
        namespace: Annotated[str | None, namespace_query(
            "Only this namespace's; default: every namespace the API key may see.")] = None,
    ) -> Response:
        """Every trigger with its counters, by namespace and name."""
        return _json(await client().list_triggers(namespace=namespace,
                                                  namespaces=caller.namespace_scope), 200)

    @router.get("/triggers/{name}", response_model=TriggerInfo,
                summary="A trigger and its counters", responses=problem_responses(400, 404, 503))
    async def get_trigger(name: _Name, caller: Caller, namespace: _Namespace = None
                          ) -> Response:
        """The trigger as written, whether it is paused, and its counters (matched,
        skipped by `when`, started, duplicates, failed mapping)."""
        return _json(await client().get_trigger(
            name, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 200)

    @router.get("/triggers/{name}/stats", response_model=TriggerStats,
                summary="A trigger's counters", responses=problem_responses(400, 404, 503))
    async def trigger_stats(name: _Name, caller: Caller, namespace: _Namespace = None
                            ) -> Response:
        """Its counters alone."""
        return _json(await client().trigger_stats(
            name, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 200)

    @router.post("/triggers/{name}/pause", response_model=Trigger,
                 summary="Stop consuming a trigger's messages",
                 responses=problem_responses(400, 404, 503))
    async def pause_trigger(name: _Name, request: Request, caller: Caller,
                            namespace: _Namespace = None) -> Response:
        """Optional body `{"note": "..."}`. Its consumer keeps its place: what arrives
        meanwhile waits for the resume."""
        body = await read_object(request, limit=4096)
        ns = namespace or caller.home_namespace
        req = read_model(PauseTriggerRequest, {**body, "name": name, "namespace": ns})
        return _json((await client().pause_trigger(
            name, note=req.note, namespace=ns, namespaces=caller.namespace_scope)).trigger,
            200)

    @router.post("/triggers/{name}/resume", response_model=Trigger,
                 summary="Consume a paused trigger's messages again",
                 responses=problem_responses(400, 404, 503))
    async def resume_trigger(name: _Name, caller: Caller, namespace: _Namespace = None
                             ) -> Response:
        """From where it stopped."""
        return _json((await client().resume_trigger(
            name, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope)).trigger, 200)

    @router.delete("/triggers/{name}", response_model=Trigger, summary="Delete a trigger",
                   responses=problem_responses(400, 404, 503))
    async def delete_trigger(name: _Name, caller: Caller, namespace: _Namespace = None
                             ) -> Response:
        """The trigger, its consumer and its counters; answers the trigger deleted."""
        return _json((await client().delete_trigger(
            name, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope)).trigger, 200)

    return router


def add_trigger_routes(app: FastAPI, link: NatsLink) -> None:
    """Put the ``/triggers`` routes on ``app``, flat beside its own.

    Not ``include_router``: FastAPI 0.165 keeps an included router as one lazy entry of
    ``app.routes``, which whatever walks the routes (the scope table's check, the
    metrics' route templates) would not see into.
    """
    for route in trigger_router(link, app.router.route_class).routes:
        app.router.routes.append(route)
