"""The reference client's ``trigger.*`` calls (see :mod:`contracts.triggers`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from contracts.errors import validation_failed
from contracts.operations import (
    TRIGGER_CREATE,
    TRIGGER_DELETE,
    TRIGGER_GET,
    TRIGGER_LIST,
    TRIGGER_PAUSE,
    TRIGGER_RESUME,
    TRIGGER_STATS,
)
from contracts.triggers import (
    CreateTriggerRequest,
    ListTriggersRequest,
    PauseTriggerRequest,
    TriggerInfo,
    TriggerList,
    TriggerReply,
    TriggerRequest,
    TriggerStats,
)
from natsflow.client import NatsflowClient, _scope

__all__ = ["TriggerClient"]


def _ref(name: str, namespace: str | None, namespaces: Sequence[str] | None
         ) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if namespace is not None:
        out["namespace"] = namespace
    scope = _scope(namespaces)
    if scope is not None:
        out["namespaces"] = scope
    return out


class TriggerClient(NatsflowClient):
    """A :class:`~natsflow.client.NatsflowClient` that also manages triggers."""

    @classmethod
    def of(cls, client: NatsflowClient) -> TriggerClient:
        """The same connection, subjects and timeout as ``client``."""
        return cls(client.transport, client.subjects, timeout=client.timeout)

    async def create_trigger(self, spec: dict[str, Any], *,
                             namespaces: Sequence[str] | None = None) -> TriggerReply:
        """Create a trigger (``spec``: a :class:`~contracts.triggers.CreateTriggerRequest`
        without ``namespaces``); the same one again answers ``created`` false.

        Raises:
            ValidationFailed: a field is wrong (named).
            ExpressionError: an expression does not parse or uses what `msg` lacks.
            IdConflict: a different trigger has that name.
        """
        scope = _scope(namespaces)
        body = {**spec, **({"namespaces": scope} if scope is not None else {})}
        try:
            req = CreateTriggerRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_failed(exc) from None
        return await self._call(TRIGGER_CREATE, req)

    async def get_trigger(self, name: str, *, namespace: str | None = None,
                          namespaces: Sequence[str] | None = None) -> TriggerInfo:
        """A trigger and its counters."""
        return await self._call(TRIGGER_GET, TriggerRequest.model_validate(
            _ref(name, namespace, namespaces)))

    async def trigger_stats(self, name: str, *, namespace: str | None = None,
                            namespaces: Sequence[str] | None = None) -> TriggerStats:
        """A trigger's counters."""
        return await self._call(TRIGGER_STATS, TriggerRequest.model_validate(
            _ref(name, namespace, namespaces)))

    async def list_triggers(self, *, namespace: str | None = None,
                            namespaces: Sequence[str] | None = None) -> TriggerList:
        """Every trigger (of ``namespace`` only, if given)."""
        return await self._call(TRIGGER_LIST, ListTriggersRequest(
            namespace=namespace, namespaces=_scope(namespaces)))

    async def pause_trigger(self, name: str, *, note: str | None = None,
                            namespace: str | None = None,
                            namespaces: Sequence[str] | None = None) -> TriggerReply:
        """Stop consuming a trigger's messages."""
        return await self._call(TRIGGER_PAUSE, PauseTriggerRequest.model_validate(
            {**_ref(name, namespace, namespaces), "note": note}))

    async def resume_trigger(self, name: str, *, namespace: str | None = None,
                             namespaces: Sequence[str] | None = None) -> TriggerReply:
        """Consume a paused trigger's messages again, from where it stopped."""
        return await self._call(TRIGGER_RESUME, TriggerRequest.model_validate(
            _ref(name, namespace, namespaces)))

    async def delete_trigger(self, name: str, *, namespace: str | None = None,
                             namespaces: Sequence[str] | None = None) -> TriggerReply:
        """Delete a trigger."""
        return await self._call(TRIGGER_DELETE, TriggerRequest.model_validate(
            _ref(name, namespace, namespaces)))
