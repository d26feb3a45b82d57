"""The schedule operations from a client: a thin face for their calls.

Over :class:`~natsflow.client.NatsflowClient` for
``<prefix>.api.schedule.*`` (see :mod:`contracts.schedules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from contracts.errors import validation_failed
from contracts.operations import (
    SCHEDULE_BACKFILL,
    SCHEDULE_CREATE,
    SCHEDULE_DELETE,
    SCHEDULE_GET,
    SCHEDULE_LIST,
    SCHEDULE_PAUSE,
    SCHEDULE_TRIGGER,
    SCHEDULE_UNPAUSE,
)
from contracts.schedules import (
    BackfillReply,
    BackfillRequest,
    CreateScheduleRequest,
    ListSchedulesRequest,
    PauseScheduleRequest,
    Schedule,
    ScheduleFireReply,
    ScheduleInfo,
    ScheduleList,
    ScheduleRef,
)
from natsflow.client import NatsflowClient, _scope

__all__ = ["ScheduleClient"]


class ScheduleClient:
    """Calls the schedule operations.

    Args:
        client: The client whose connection and deployment it uses.
    """

    def __init__(self, client: NatsflowClient) -> None:
        self.client = client

    def _ref(self, name: str, namespace: str | None, namespaces: Sequence[str] | None,
             **more: Any) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": name, "namespaces": _scope(namespaces), **more}
        if namespace is not None:
            ref["namespace"] = namespace
        return ref

    async def create(self, schedule: Schedule | dict[str, Any], *,
                     namespaces: Sequence[str] | None = None) -> ScheduleInfo:
        """Store a schedule (the same again: unchanged).

        Raises:
            ValidationFailed: the schedule is invalid (each field named).
            IdConflict: another schedule of that name exists.
        """
        if not isinstance(schedule, Schedule):
            try:
                schedule = Schedule.model_validate(schedule)
            except ValidationError as exc:
                raise validation_failed(exc) from None
        return await self.client._call(SCHEDULE_CREATE, CreateScheduleRequest(
            schedule=schedule, namespaces=_scope(namespaces)))

    async def get(self, name: str, *, namespace: str | None = None,
                  namespaces: Sequence[str] | None = None) -> ScheduleInfo:
        """A schedule, its next fire times and its last runs with their states."""
        return await self.client._call(SCHEDULE_GET, ScheduleRef.model_validate(
            self._ref(name, namespace, namespaces)))

    async def list(self, *, namespace: str | None = None,
                   namespaces: Sequence[str] | None = None) -> ScheduleList:
        """Every schedule (of ``namespace`` only, if given)."""
        return await self.client._call(SCHEDULE_LIST, ListSchedulesRequest(
            namespace=namespace, namespaces=_scope(namespaces)))

    async def pause(self, name: str, *, note: str = "", namespace: str | None = None,
                    namespaces: Sequence[str] | None = None) -> ScheduleInfo:
        """Stop firing, with a note saying why."""
        return await self.client._call(SCHEDULE_PAUSE, PauseScheduleRequest.model_validate(
            self._ref(name, namespace, namespaces, note=note)))

    async def unpause(self, name: str, *, namespace: str | None = None,
                      namespaces: Sequence[str] | None = None) -> ScheduleInfo:
        """Fire again from now on."""
        return await self.client._call(SCHEDULE_UNPAUSE, ScheduleRef.model_validate(
            self._ref(name, namespace, namespaces)))

    async def trigger(self, name: str, *, namespace: str | None = None,
                      namespaces: Sequence[str] | None = None) -> ScheduleFireReply:
        """Fire now (through the overlap policy)."""
        return await self.client._call(SCHEDULE_TRIGGER, ScheduleRef.model_validate(
            self._ref(name, namespace, namespaces)))

    async def backfill(self, name: str, start: datetime, end: datetime, *,
                       namespace: str | None = None,
                       namespaces: Sequence[str] | None = None) -> BackfillReply:
        """Run the fire times from ``start`` to ``end`` now."""
        return await self.client._call(SCHEDULE_BACKFILL, BackfillRequest.model_validate(
            self._ref(name, namespace, namespaces, start=start, end=end)))

    async def delete(self, name: str, *, namespace: str | None = None,
                     namespaces: Sequence[str] | None = None) -> bool:
        """Delete a schedule; True if there was one."""
        reply = await self.client._call(SCHEDULE_DELETE, ScheduleRef.model_validate(
            self._ref(name, namespace, namespaces)))
        return reply.deleted
