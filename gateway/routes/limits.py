"""Flow control's limits over HTTP: ``GET /limits`` (docs/flow-control.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from contracts.flow import LimitList

from .._deps import Namespaces, Nats
from .._problems import problem_responses
from ._answers import json_response

__all__ = ["router"]

router = APIRouter(tags=["limits"])


@router.get("/limits", response_model=LimitList, summary="Limits in use",
            responses=problem_responses(400, 503))
async def list_limits(
    nats: Nats, namespaces: Namespaces,
    limit: Annotated[str | None, Query(max_length=400, description=(
        "Only this limit, e.g. `wf:checkout` or `step:billing.charge`."))] = None,
) -> Response:
    """Every concurrency and rate limit in use, per key value: permits held and by
    whom, who waits (next first), a rate limit's next free begin time; only those
    of the namespaces the API key may see."""
    return json_response(await nats.client().list_limits(limit=limit, namespaces=namespaces))
