"""``/batches``: run a workflow template once per input, and follow or stop the batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request, Response

from contracts.messages import BatchConfig, BatchStatus

from .._auth import Caller
from .._deps import Namespaces, Nats
from .._problems import problem_responses
from ._answers import Accepted, answer

__all__ = ["router"]

router = APIRouter(tags=["batches"])

_BatchId = Annotated[str, Path(min_length=1, max_length=128, description="Batch id.")]


@router.post(
    "/batches", status_code=202, response_model=BatchStatus | Accepted,
    summary="Run a workflow template once per input",
    responses={200: {"model": BatchStatus, "description": "It already existed."},
               **problem_responses(400, 409, 413, 503)},
)
async def create_batch(config: Annotated[BatchConfig, Body()], request: Request,
                       nats: Nats, caller: Caller) -> Response:
    """Create and start a batch: at most `max_concurrency` members run at a time.

    Its `namespace` (its members' too) defaults as a workflow's does."""
    reply = await nats.client().create_batch(caller.place(config),
                                             namespaces=caller.namespace_scope)
    location = str(request.app.url_path_for("get_batch", batch_id=reply.id))
    return answer(reply, 202 if reply.created else 200, location=location)


@router.get("/batches/{batch_id}", response_model=BatchStatus, summary="A batch's status",
            responses=problem_responses(400, 404, 503))
async def get_batch(batch_id: _BatchId, nats: Nats, namespaces: Namespaces) -> Response:
    """Counts per state and every member workflow."""
    return answer(await nats.client().get_batch(batch_id, namespaces=namespaces), 200)


@router.post("/batches/{batch_id}/stop", status_code=202, response_model=BatchStatus,
             summary="Stop a batch", responses=problem_responses(400, 404, 409, 503))
async def stop_batch(batch_id: _BatchId, nats: Nats, namespaces: Namespaces) -> Response:
    """Start no more members and stop the running ones."""
    return answer(await nats.client().stop_batch(batch_id, namespaces=namespaces), 202)
