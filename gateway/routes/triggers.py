"""``/triggers``: subjects whose messages start workflows (see docs/triggers.md).

Each route takes the trigger's namespace as a ``namespace`` query parameter (default: the
caller's home namespace); ``POST /triggers`` takes it in the body (same default), and
``GET /triggers`` as a filter.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request, Response

from contracts.triggers import (
    CreateTriggerRequest,
    Trigger,
    TriggerInfo,
    TriggerList,
    TriggerStats,
)
from natsflow.trigger_client import TriggerClient

from .._auth import Caller, namespace_query
from .._deps import Namespaces, Nats
from .._problems import problem_responses
from ._answers import in_namespace, json_response

__all__ = ["router"]

router = APIRouter(tags=["triggers"])

_Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Trigger name.")]
_Namespace = Annotated[str | None, namespace_query(
    "The trigger's namespace; default: the API key's, when it is bound to exactly one, "
    "else `default`.")]


def _client(nats: Nats) -> TriggerClient:
    return TriggerClient.of(nats.client())


@router.post("/triggers", status_code=201, response_model=Trigger,
             summary="Bind a subject to a workflow",
             responses={200: {"model": Trigger,
                              "description": "The same trigger was there: unchanged."},
                        **problem_responses(400, 403, 404, 409, 413, 503)})
async def create_trigger(body: Annotated[CreateTriggerRequest, Body()], request: Request,
                         nats: Nats, caller: Caller) -> Response:
    """Each message on `subject` (core NATS, or the JetStream `stream`) whose `when`
    holds starts the workflow (`definition` or inline `config`) with `input` and `id`
    made from the message. 201 with the trigger; 200 if the same one exists; 409 if
    another by that name does; 400 naming the field for a bad subject or expression."""
    spec = body.model_dump(exclude={"namespaces"})
    if "namespace" not in body.model_fields_set:
        spec["namespace"] = caller.home_namespace
    reply = await _client(nats).create_trigger(spec, namespaces=caller.namespace_scope)
    made = reply.trigger.spec
    location = in_namespace(str(request.app.url_path_for("get_trigger", name=made.name)),
                            made.namespace)
    return json_response(reply.trigger, 201 if reply.created else 200, location=location)


@router.get("/triggers", response_model=TriggerList, summary="Every trigger",
            responses=problem_responses(400, 503))
async def list_triggers(
    nats: Nats, namespaces: Namespaces,
    namespace: Annotated[str | None, namespace_query(
        "Only this namespace's; default: every namespace the API key may see.")] = None,
) -> Response:
    """Every trigger with its counters, by namespace and name."""
    return json_response(await _client(nats).list_triggers(namespace=namespace,
                                                           namespaces=namespaces))


@router.get("/triggers/{name}", response_model=TriggerInfo,
            summary="A trigger and its counters", responses=problem_responses(400, 404, 503))
async def get_trigger(name: _Name, nats: Nats, caller: Caller,
                      namespace: _Namespace = None) -> Response:
    """The trigger as written, whether it is paused, and its counters (matched, skipped
    by `when`, started, duplicates, failed mapping)."""
    return json_response(await _client(nats).get_trigger(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope))


@router.get("/triggers/{name}/stats", response_model=TriggerStats,
            summary="A trigger's counters", responses=problem_responses(400, 404, 503))
async def trigger_stats(name: _Name, nats: Nats, caller: Caller,
                        namespace: _Namespace = None) -> Response:
    """Its counters alone."""
    return json_response(await _client(nats).trigger_stats(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope))


@router.post("/triggers/{name}/pause", response_model=Trigger,
             summary="Stop consuming a trigger's messages",
             responses=problem_responses(400, 404, 503))
async def pause_trigger(name: _Name, nats: Nats, caller: Caller,
                        note: Annotated[str | None, Body(max_length=1024, embed=True)] = None,
                        namespace: _Namespace = None) -> Response:
    """Optional body `{"note": "..."}`. Its consumer keeps its place: what arrives
    meanwhile waits for the resume."""
    return json_response((await _client(nats).pause_trigger(
        name, note=note, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope)).trigger)


@router.post("/triggers/{name}/resume", response_model=Trigger,
             summary="Consume a paused trigger's messages again",
             responses=problem_responses(400, 404, 503))
async def resume_trigger(name: _Name, nats: Nats, caller: Caller,
                         namespace: _Namespace = None) -> Response:
    """From where it stopped."""
    return json_response((await _client(nats).resume_trigger(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope)).trigger)


@router.delete("/triggers/{name}", response_model=Trigger, summary="Delete a trigger",
               responses=problem_responses(400, 404, 503))
async def delete_trigger(name: _Name, nats: Nats, caller: Caller,
                         namespace: _Namespace = None) -> Response:
    """The trigger, its consumer and its counters; answers the trigger deleted."""
    return json_response((await _client(nats).delete_trigger(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope)).trigger)
