"""Flow control's limits over HTTP: ``GET /limits`` (docs/flow-control.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query, Response

from contracts.flow import LimitList

from ._auth import Caller
from ._link import NatsLink
from ._problems import problem_responses

__all__ = ["add_limit_routes"]


def add_limit_routes(app: FastAPI, link: NatsLink) -> None:
    """Register GET ``/limits`` on ``app``."""

    @app.get("/limits", response_model=LimitList, summary="Limits in use",
             tags=["limits"], responses=problem_responses(400, 503))
    async def list_limits(
        caller: Caller,
        limit: Annotated[str | None, Query(max_length=400, description=(
            "Only this limit, e.g. `wf:checkout` or `step:billing.charge`."))] = None,
    ) -> Response:
        """Every concurrency and rate limit in use, per key value: permits held and by
        whom, who waits (next first), a rate limit's next free begin time; only those
        of the namespaces the API key may see."""
        reply = await link.client().list_limits(limit=limit,
                                                namespaces=caller.namespace_scope)
        return Response(reply.model_dump_json(), media_type="application/json")
