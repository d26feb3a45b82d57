"""``/schedules``: workflows that start themselves on a clock (see docs/schedules.md).

Each route that names a schedule takes its namespace as a ``namespace`` query parameter
(default: the caller's home namespace); ``POST /schedules`` takes it in the body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import ScheduleNotFound
from contracts.schedules import (
    BackfillReply,
    Schedule,
    ScheduleFireReply,
    ScheduleInfo,
    ScheduleList,
)
from natsflow.schedule_client import ScheduleClient

from .._auth import Caller, namespace_query
from .._deps import Namespaces, Nats
from .._problems import problem_responses
from ._answers import in_namespace, json_response

__all__ = ["BackfillBody", "PauseBody", "router"]

router = APIRouter(tags=["schedules"])

_Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Schedule name.")]
_Namespace = Annotated[str | None, namespace_query(
    "The schedule's namespace; default: the API key's, when it is bound to exactly one, "
    "else `default`.")]


class PauseBody(BaseModel):
    """``POST /schedules/{name}/pause`` body (optional)."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=500, description="Why it is paused.")


class BackfillBody(BaseModel):
    """``POST /schedules/{name}/backfill`` body: the time range to run now."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime


def _schedules(nats: Nats) -> ScheduleClient:
    return ScheduleClient(nats.client())


@router.post("/schedules", status_code=201, response_model=ScheduleInfo,
             summary="Create a schedule",
             responses={200: {"model": ScheduleInfo,
                              "description": "The same schedule exists: unchanged."},
                        **problem_responses(400, 404, 409, 413, 503)})
async def create_schedule(body: Annotated[Schedule, Body()], nats: Nats,
                          caller: Caller) -> Response:
    """Store a schedule; it fires from now on. 400 names a wrong field (a cron
    expression, a time zone, a duration); 404 a `definition` that does not exist; 409
    another schedule of that name."""
    body = caller.place(body)
    info = await _schedules(nats).create(body, namespaces=caller.namespace_scope)
    location = in_namespace(f"/schedules/{body.name}", body.namespace)
    return json_response(info, 201 if info.created else 200, location=location)


@router.get("/schedules", response_model=ScheduleList, summary="Every schedule",
            responses=problem_responses(400, 503))
async def list_schedules(
    nats: Nats,
    namespaces: Namespaces,
    namespace: Annotated[str | None, namespace_query(
        "Only this namespace's; default: every namespace the API key may see.")] = None,
) -> Response:
    """Every schedule, by namespace and name, with its next fire time."""
    return json_response(await _schedules(nats).list(namespace=namespace,
                                                     namespaces=namespaces))


@router.get("/schedules/{name}", response_model=ScheduleInfo, summary="A schedule",
            responses=problem_responses(400, 404, 503))
async def get_schedule(name: _Name, nats: Nats, caller: Caller,
                       namespace: _Namespace = None) -> Response:
    """The schedule, its next 5 fire times and its last runs with their states."""
    return json_response(await _schedules(nats).get(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope))


@router.post("/schedules/{name}/pause", response_model=ScheduleInfo,
             summary="Pause a schedule", responses=problem_responses(400, 404, 503))
async def pause_schedule(name: _Name, nats: Nats, caller: Caller,
                         body: Annotated[PauseBody | None, Body()] = None,
                         namespace: _Namespace = None) -> Response:
    """Fire no more until unpaused; `note` says why. Runs going on go on."""
    return json_response(await _schedules(nats).pause(
        name, note=body.note if body else "", namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope))


@router.post("/schedules/{name}/unpause", response_model=ScheduleInfo,
             summary="Unpause a schedule", responses=problem_responses(400, 404, 503))
async def unpause_schedule(name: _Name, nats: Nats, caller: Caller,
                           namespace: _Namespace = None) -> Response:
    """Fire again from now on (fire times while paused are not run)."""
    return json_response(await _schedules(nats).unpause(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope))


@router.post("/schedules/{name}/trigger", status_code=202, response_model=ScheduleFireReply,
             summary="Fire a schedule now", responses=problem_responses(400, 404, 503))
async def trigger_schedule(name: _Name, nats: Nats, caller: Caller,
                           namespace: _Namespace = None) -> Response:
    """A fire time of now, through the overlap policy; its run's id."""
    return json_response(await _schedules(nats).trigger(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope), 202)


@router.post("/schedules/{name}/backfill", status_code=202, response_model=BackfillReply,
             summary="Run a schedule's fire times of a time range now",
             responses=problem_responses(400, 404, 503))
async def backfill_schedule(name: _Name, body: Annotated[BackfillBody, Body()], nats: Nats,
                            caller: Caller, namespace: _Namespace = None) -> Response:
    """Every fire time from `start` to `end` (at most 1,000), run now in order through
    the overlap policy."""
    return json_response(await _schedules(nats).backfill(
        name, body.start, body.end, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope), 202)


@router.delete("/schedules/{name}", status_code=204, summary="Delete a schedule",
               responses=problem_responses(400, 404, 503))
async def delete_schedule(name: _Name, nats: Nats, caller: Caller,
                          namespace: _Namespace = None) -> Response:
    """Delete it; its runs going on go on. 404 if there is none."""
    if not await _schedules(nats).delete(name, namespace=namespace or caller.home_namespace,
                                         namespaces=caller.namespace_scope):
        raise ScheduleNotFound(f"no schedule {name!r}", field="name")
    return Response(status_code=204)
