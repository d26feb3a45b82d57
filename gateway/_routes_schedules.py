"""Schedules over HTTP: ``/schedules`` (see docs/schedules.md).

Each route that names a schedule takes its namespace as a ``namespace`` query parameter
(default: the caller's home namespace); ``POST /schedules`` takes it in the body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import ScheduleNotFound
from contracts.schedules import (
    BackfillReply,
    Schedule,
    ScheduleInfo,
    ScheduleList,
    TriggerReply,
)
from natsflow.schedule_client import ScheduleClient

from ._auth import Caller, namespace_query
from ._bodies import read_json, read_model, read_object
from ._link import NatsLink
from ._problems import problem_responses

__all__ = ["BackfillBody", "PauseBody", "schedule_router"]

_Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Schedule name.")]
_Namespace = Annotated[str | None, namespace_query(
    "The schedule's namespace; default: the API key's, when it is bound to exactly one, "
    "else `default`.")]
_JSON = "application/json"
_LIMIT = 256 * 1024 + 1024



class PauseBody(BaseModel):
    """``POST /schedules/{name}/pause`` body (optional)."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=500, description="Why it is paused.")


class BackfillBody(BaseModel):
    """``POST /schedules/{name}/backfill`` body: the time range to run now."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime


def _json(body: BaseModel, status: int, *, location: str | None = None) -> Response:
    return Response(body.model_dump_json(), status_code=status, media_type=_JSON,
                    headers={"Location": location} if location else None)


def schedule_router(link: NatsLink, route_class: type[APIRoute]) -> APIRouter:
    """The ``/schedules`` routes (their scopes are rows of ``ROUTE_SCOPES``)."""
    router = APIRouter(route_class=route_class, tags=["schedules"])

    def schedules() -> ScheduleClient:
        return ScheduleClient(link.client())

    @router.post("/schedules", status_code=201, response_model=ScheduleInfo,
                 summary="Create a schedule",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     _JSON: {"schema": {"$ref": "#/components/schemas/Schedule"}}}}},
                 responses={200: {"model": ScheduleInfo,
                                  "description": "The same schedule exists: unchanged."},
                            **problem_responses(400, 404, 409, 413, 503)})
    async def create_schedule(request: Request, caller: Caller) -> Response:
        """Store a schedule; it fires from now on. 400 names a wrong field (a cron
        expression, a time zone, a duration); 404 a `definition` that does not exist; 409
        another schedule of that name."""
        body = caller.place(read_model(Schedule, await read_object(request, limit=_LIMIT)))
        info = await schedules().create(body, namespaces=caller.namespace_scope)
        location = f"/schedules/{body.name}"
        if body.namespace != "default":
            location += f"?namespace={body.namespace}"
        return _json(info, 201 if info.created else 200, location=location)

    @router.get("/schedules", response_model=ScheduleList, summary="Every schedule",
                responses=problem_responses(400, 503))
    async def list_schedules(
        caller: Caller,
        namespace: Annotated[str | None, namespace_query(
            "Only this namespace's; default: every namespace the API key may see.")
        ] = None,
    ) -> Response:
        """Every schedule, by namespace and name, with its next fire time."""
        return _json(await schedules().list(namespace=namespace,
                                            namespaces=caller.namespace_scope), 200)

    @router.get("/schedules/{name}", response_model=ScheduleInfo, summary="A schedule",
                responses=problem_responses(400, 404, 503))
    async def get_schedule(name: _Name, caller: Caller,
                           namespace: _Namespace = None) -> Response:
        """The schedule, its next 5 fire times and its last runs with their states."""
        return _json(await schedules().get(name, namespace=namespace or caller.home_namespace,
                                           namespaces=caller.namespace_scope), 200)

    @router.post("/schedules/{name}/pause", response_model=ScheduleInfo,
                 summary="Pause a schedule", responses=problem_responses(400, 404, 503))
    async def pause_schedule(name: _Name, request: Request, caller: Caller,
                             namespace: _Namespace = None) -> Response:
        """Fire no more until unpaused; `note` says why. Runs going on go on."""
        raw = await read_json(request, limit=_LIMIT, optional=True)
        body = read_model(PauseBody, raw if raw is not None else {})
        return _json(await schedules().pause(
            name, note=body.note, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 200)

    @router.post("/schedules/{name}/unpause", response_model=ScheduleInfo,
                 summary="Unpause a schedule", responses=problem_responses(400, 404, 503))
    async def unpause_schedule(name: _Name, caller: Caller,
                               namespace: _Namespace = None) -> Response:
        """Fire again from now on (fire times while paused are not run)."""
        return _json(await schedules().unpause(
            name, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 200)

    @router.post("/schedules/{name}/trigger", status_code=202, response_model=TriggerReply,
                 summary="Fire a schedule now", responses=problem_responses(400, 404, 503))
    async def trigger_schedule(name: _Name, caller: Caller,
                               namespace: _Namespace = None) -> Response:
        """A fire time of now, through the overlap policy; its run's id."""
        return _json(await schedules().trigger(
            name, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 202)

    @router.post("/schedules/{name}/backfill", status_code=202, response_model=BackfillReply,
                 summary="Run a schedule's fire times of a time range now",
                 responses=problem_responses(400, 404, 503))
    async def backfill_schedule(name: _Name, request: Request, caller: Caller,
                                namespace: _Namespace = None) -> Response:
        """Every fire time from `start` to `end` (at most 1,000), run now in order
        through the overlap policy."""
        body = read_model(BackfillBody, await read_object(request, limit=_LIMIT))
        return _json(await schedules().backfill(
            name, body.start, body.end, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 202)

    @router.delete("/schedules/{name}", status_code=204, summary="Delete a schedule",
                   responses=problem_responses(400, 404, 503))
    async def delete_schedule(name: _Name, caller: Caller,
                              namespace: _Namespace = None) -> Response:
        """Delete it; its runs going on go on. 404 if there is none."""
        if not await schedules().delete(name, namespace=namespace or caller.home_namespace,
                                        namespaces=caller.namespace_scope):
            raise ScheduleNotFound(f"no schedule {name!r}", field="name")
        return Response(status_code=204)

    return router
