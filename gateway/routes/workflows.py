"""``/workflows``: create, list, read and command workflows (and ``/workflows/bulk``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response

from contracts.errors import ValidationFailed
from contracts.headers import IDEMPOTENCY_KEY_HEADER
from contracts.messages import BulkRequest, BulkResult, ListWorkflowsRequest, WorkflowList
from contracts.models import WorkflowConfig, WorkflowState, WorkflowStatus

from .._auth import Caller, namespace_query
from .._bodies import BulkBody, CreateWorkflowBody, RerunBody, RetryBody
from .._deps import Namespaces, Nats, Trace
from .._problems import problem_responses
from ._answers import Accepted, answer, json_response

__all__ = ["router"]

router = APIRouter(tags=["workflows"])

_WorkflowId = Annotated[str, Path(min_length=1, max_length=128, description="Workflow id.")]
_SignalName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$",
                                  description="Signal name (a wait step's `signal`).")]


# What an empty body means (frozen models: safe to share).
_NO_FILTER: Final = BulkBody()
_NO_RETRY_OPTIONS: Final = RetryBody()
_NO_RERUN_OPTIONS: Final = RerunBody()


def _location(request: Request, workflow_id: str) -> str:
    return str(request.app.url_path_for("get_workflow", workflow_id=workflow_id))


@router.post(
    "/workflows", status_code=202, response_model=WorkflowStatus | Accepted,
    summary="Create (and start) a workflow",
    responses={
        200: {"model": WorkflowStatus,
              "description": "It already existed (same id or Idempotency-Key)."},
        # 404: the stored definition (or its version) to run does not exist.
        **problem_responses(400, 404, 409, 413, 503),
    },
)
async def create_workflow(
    body: Annotated[CreateWorkflowBody, Body()],
    request: Request,
    nats: Nats,
    caller: Caller,
    trace: Trace,
    # Lower case, as FastAPI names a header (in OpenAPI and in error locations).
    idempotency_key: Annotated[str | None, Header(
        alias=IDEMPOTENCY_KEY_HEADER.lower(), max_length=256,
        description="Makes retries of this request create the workflow only once.",
    )] = None,
) -> Response:
    """Create a workflow from a WorkflowConfig, or from a stored definition with
    `{"definition": name, "version": n (optional), "input": {...}}`; started at once
    unless `start` is false.

    In the body's `namespace`; when it names none, in the API key's namespace if the
    key is bound to exactly one, else in `default`. 403 `namespace-forbidden` for a
    namespace the key is not bound to.

    202 with `Location` when created; 200 with the existing status when this id or
    Idempotency-Key was already used for the same config; 409 for another config.
    """
    placed = caller.place(body)
    scope = caller.namespace_scope
    if isinstance(placed, WorkflowConfig):
        reply = await nats.client().create(placed, idempotency_key=idempotency_key,
                                           trace=trace, namespaces=scope)
    else:
        reply = await nats.client().run(
            placed.definition, placed.input, version=placed.version,
            workflow_id=placed.id, labels=placed.labels, start=placed.start,
            idempotency_key=idempotency_key, trace=trace, namespace=placed.namespace,
            namespaces=scope, priority=placed.priority)
    return answer(reply, 202 if reply.created else 200,
                  location=_location(request, reply.id))


def _labels(label: Annotated[list[str] | None, Query(
        description="`key:value`; all must match (repeat the parameter).")] = None,
            ) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ValidationFailed(f"label {item!r} is not key:value", field="label")
        labels[key] = value
    return labels


@router.get("/workflows", response_model=WorkflowList, summary="List workflows",
            responses=problem_responses(400, 503))
async def list_workflows(
    nats: Nats,
    namespaces: Namespaces,
    labels: Annotated[dict[str, str], Depends(_labels)],
    state: Annotated[list[WorkflowState] | None, Query(
        description="Any of these states (repeat the parameter).")] = None,
    name: Annotated[str | None, Query(description="Workflow name.")] = None,
    batch: Annotated[str | None, Query(description="Batch id.")] = None,
    namespace: Annotated[str | None, namespace_query(
        "Only this namespace's (of those the API key may see).")] = None,
    created_after: Annotated[datetime | None, Query()] = None,
    created_before: Annotated[datetime | None, Query()] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the last page.")
                      ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Workflows newest first, filtered, a page at a time (follow `next_cursor`)."""
    query = ListWorkflowsRequest(
        state=state or [], name=name, labels=labels, batch_id=batch,
        namespace=namespace, created_after=created_after, created_before=created_before,
        cursor=cursor, limit=limit)
    page = await nats.client().list_workflows(query, namespaces=namespaces)
    return json_response(page, exclude_none=True)


@router.post("/workflows/bulk/{operation}", response_model=BulkResult,
             summary="Stop, pause, resume or retry every workflow a filter selects",
             responses=problem_responses(400, 413, 503))
async def bulk_operation(
        operation: Annotated[str, Path(pattern="^(stop|pause|resume|retry)$")],
        nats: Nats, namespaces: Namespaces,
        body: Annotated[BulkBody, Body()] = _NO_FILTER) -> Response:
    """Body: `{"filter": {...list filters...}, "dry_run": true}`, or `{"all": true}`
    for every workflow: a body with neither is refused (400). A dry run reports what
    would be touched; otherwise each selected workflow gets the operation, and the
    answer counts what was done and what was refused (by code). Only workflows in
    the API key's namespaces are selected."""
    # The request's own check: a filter, or "all" (ValidationFailed naming `all`).
    req = BulkRequest.model_validate({**dict(body), "operation": operation})
    result = await nats.client().bulk(
        req.operation, dry_run=req.dry_run, max_workflows=req.max_workflows,
        all_workflows=req.all, namespaces=namespaces,
        **req.filter.model_dump(exclude_none=True, exclude={"cursor", "limit"}))
    return json_response(result)


@router.get("/workflows/{workflow_id}", response_model=WorkflowStatus,
            summary="A workflow's status", responses=problem_responses(400, 404, 503))
async def get_workflow(workflow_id: _WorkflowId, nats: Nats,
                       namespaces: Namespaces) -> Response:
    """Where the workflow and each of its steps stand."""
    return answer(await nats.client().get(workflow_id, namespaces=namespaces), 200)


@router.post("/workflows/{workflow_id}/start", response_model=WorkflowStatus,
             summary="Start a created workflow",
             responses=problem_responses(400, 404, 409, 503))
async def start_workflow(workflow_id: _WorkflowId, nats: Nats,
                         namespaces: Namespaces) -> Response:
    """Start a workflow created with `start: false`; a no-op when already started."""
    return answer(await nats.client().start(workflow_id, namespaces=namespaces), 200)


@router.post("/workflows/{workflow_id}/stop", status_code=202, response_model=WorkflowStatus,
             summary="Stop a workflow", responses=problem_responses(400, 404, 409, 503))
async def stop_workflow(workflow_id: _WorkflowId, nats: Nats,
                        namespaces: Namespaces) -> Response:
    """Cancel running steps; the workflow ends `stopped`. 409 if already finished."""
    return answer(await nats.client().stop(workflow_id, namespaces=namespaces), 202)


@router.post("/workflows/{workflow_id}/signals/{name}", status_code=202,
             response_model=WorkflowStatus, summary="Send a signal",
             responses=problem_responses(400, 404, 409, 413, 503))
async def signal_workflow(
        workflow_id: _WorkflowId, name: _SignalName, nats: Nats, namespaces: Namespaces,
        payload: Annotated[Any, Body(description="The signal's payload (any JSON).")] = None,
) -> Response:
    """Deliver the signal `name`; the JSON body (optional) is its payload.

    A `wait` step waiting for that signal takes it at once, with the payload as its
    output; otherwise the signal is kept until one starts. 409 if already finished.
    """
    return answer(await nats.client().signal(workflow_id, name, payload,
                                             namespaces=namespaces), 202)


@router.post("/workflows/{workflow_id}/pause", response_model=WorkflowStatus,
             summary="Pause a running workflow",
             responses=problem_responses(400, 404, 409, 503))
async def pause_workflow(workflow_id: _WorkflowId, nats: Nats,
                         namespaces: Namespaces) -> Response:
    """Nothing new is dispatched and timers wait until resumed; running steps may
    finish and their results are kept. 409 unless running (or already paused)."""
    return answer(await nats.client().pause(workflow_id, namespaces=namespaces), 200)


@router.post("/workflows/{workflow_id}/resume", response_model=WorkflowStatus,
             summary="Resume a paused workflow",
             responses=problem_responses(400, 404, 409, 503))
async def resume_workflow(workflow_id: _WorkflowId, nats: Nats,
                          namespaces: Namespaces) -> Response:
    """Carry on; timers that came due while paused fire now. 409 unless paused."""
    return answer(await nats.client().resume(workflow_id, namespaces=namespaces), 200)


@router.post("/workflows/{workflow_id}/retry", status_code=202,
             response_model=WorkflowStatus, summary="Retry a failed or stopped workflow",
             responses=problem_responses(400, 404, 409, 413, 503))
async def retry_workflow(workflow_id: _WorkflowId, nats: Nats, namespaces: Namespaces,
                         body: Annotated[RetryBody, Body()] = _NO_RETRY_OPTIONS) -> Response:
    """Run it again from its unfinished steps, keeping the outputs of those that
    succeeded. Optional body `{"inputs": {"<step>": {...}}}` replaces retried steps'
    inputs. 409 unless failed or stopped (or when it was compensated)."""
    return answer(await nats.client().retry(workflow_id, inputs=body.inputs,
                                            namespaces=namespaces), 202)


@router.post("/workflows/{workflow_id}/rerun", status_code=202,
             response_model=WorkflowStatus, summary="Run a workflow again as a new one",
             responses=problem_responses(400, 404, 413, 503))
async def rerun_workflow(workflow_id: _WorkflowId, request: Request, nats: Nats,
                         namespaces: Namespaces, trace: Trace,
                         body: Annotated[RerunBody, Body()] = _NO_RERUN_OPTIONS) -> Response:
    """A new workflow from the same config and input. Optional body: `input` (a new
    input), `from_step` (only that step and those after it run; the others reuse
    their outputs), `new_id`. 202 with the new workflow and its `Location`."""
    reply = await nats.client().rerun(workflow_id, input=body.input,
                                      from_step=body.from_step, new_id=body.new_id,
                                      trace=trace, namespaces=namespaces)
    return answer(reply, 202, location=_location(request, reply.id))
