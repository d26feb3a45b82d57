"""How the routes answer: JSON of a model, and a command's reply (202 ``Accepted`` when
the orchestrator had no status ready yet)."""

from __future__ import annotations

from typing import Final

from fastapi import Response
from pydantic import BaseModel, ConfigDict

from contracts.messages import BatchReply, WorkflowReply
from contracts.namespaces import DEFAULT_NAMESPACE

__all__ = ["Accepted", "answer", "json_response", "in_namespace"]

_JSON: Final = "application/json"


class Accepted(BaseModel):
    """The orchestrator accepted the command but had no status ready yet; poll the id."""

    model_config = ConfigDict(extra="forbid")

    id: str


def json_response(model: BaseModel, status_code: int = 200, *, location: str | None = None,
                  exclude_none: bool = False) -> Response:
    """``model`` as a JSON response, with ``Location`` if given."""
    return Response(model.model_dump_json(exclude_none=exclude_none), status_code=status_code,
                    media_type=_JSON, headers={"Location": location} if location else None)


def in_namespace(path: str, namespace: str) -> str:
    """``path`` of a thing in ``namespace``: with ``?namespace=`` unless it is the default
    one, so that whoever follows a ``Location`` finds the same thing."""
    return path if namespace == DEFAULT_NAMESPACE else f"{path}?namespace={namespace}"


def answer(reply: WorkflowReply | BatchReply, status_code: int, *,
           location: str | None = None) -> Response:
    """The status in a reply; no status means accepted but not processed in time: 202
    and the id to poll."""
    if reply.status is None:
        return json_response(Accepted(id=reply.id), 202, location=location)
    return json_response(reply.status, status_code, location=location)
