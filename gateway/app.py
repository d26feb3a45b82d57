"""natsflow's HTTP gateway: REST over the NATS API, one client among others.

The gateway holds no state and no logic of the orchestrator: each request becomes one
:class:`natsflow.client.NatsflowClient` call, each reply one HTTP answer, each error one
RFC 9457 problem document (see ``_problems.HTTP_BY_CODE``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Final

import uvicorn
from fastapi import FastAPI, Header, Path, Query, Request, Response
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from contracts import __version__
from contracts.definitions import RunDefinition
from contracts.errors import NatsAuthFailed, Unavailable, ValidationFailed
from contracts.headers import IDEMPOTENCY_KEY_HEADER
from contracts.messages import (
    MAX_BATCH_BYTES,
    BatchConfig,
    BatchReply,
    BatchStatus,
    BulkRequest,
    BulkResult,
    ListWorkflowsRequest,
    RerunRequest,
    RetryRequest,
    WorkflowList,
    WorkflowReply,
)
from contracts.models import MAX_CONFIG_BYTES, WorkflowConfig, WorkflowState, WorkflowStatus
from transport.connect import NatsSettings
from transport.streams import Topology

from ._asyncapi import add_asyncapi_routes
from ._auth import Caller, KeyAuth, KeyCache, namespace_query, scoped_route_class
from ._bodies import read_batch_config, read_create_body, read_json, read_model, read_object
from ._definitions import add_definition_routes
from ._events import HEARTBEAT_SECONDS, add_event_routes
from ._limits import add_limit_routes
from ._link import NatsLink, Readiness
from ._metrics import install_metrics
from ._problems import (
    install_problem_handlers,
    problem_responses,
    replace_validation_responses,
)
from ._tracing import install_tracing, request_trace

__all__ = ["KEYS", "Accepted", "Health", "KeyAuth", "create_app", "serve"]

_JSON: Final = "application/json"
_WorkflowId = Annotated[str, Path(min_length=1, max_length=128, description="Workflow id.")]
_BatchId = Annotated[str, Path(min_length=1, max_length=128, description="Batch id.")]
_SignalName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$",
                                  description="Signal name (a wait step's `signal`).")]
#: Largest signal payload accepted over HTTP.
MAX_SIGNAL_BYTES: Final = 256 * 1024
#: API keys on, with the default settings: what the gateway does unless told otherwise.
KEYS: Final = KeyAuth()

_log = logging.getLogger("natsflow.gateway")


class Accepted(BaseModel):
    """The orchestrator accepted the command but had no status ready yet; poll the id."""

    model_config = ConfigDict(extra="forbid")

    id: str


class Health(BaseModel):
    """Liveness or readiness."""

    model_config = ConfigDict(extra="forbid")

    status: str = Field(description="`ok`: the process runs.")


class _Gateway(FastAPI):
    """FastAPI, plus the request-body models in the OpenAPI components.

    Bodies are validated by the gateway itself (see ``_bodies``), so FastAPI does not
    see their models; they are added here so ``/openapi.json`` documents them.
    """

    body_models: tuple[type[BaseModel], ...] = (WorkflowConfig, BatchConfig, RunDefinition)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema:
            return self.openapi_schema
        schema = super().openapi()
        _, defs = models_json_schema([(m, "validation") for m in self.body_models],
                                     ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in defs.get("$defs", {}).items():
            components.setdefault(name, definition)
        replace_validation_responses(schema)
        return schema


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        _JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _json(model: BaseModel, status_code: int, *,
          headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type=_JSON,
                    headers=headers)


def _answer(reply: WorkflowReply | BatchReply, status_code: int, *,
            location: str | None = None) -> Response:
    # No status means accepted but not processed in time: 202 and the id to poll.
    headers = {"Location": location} if location else None
    if reply.status is None:
        return _json(Accepted(id=reply.id), 202, headers=headers)
    return _json(reply.status, status_code, headers=headers)


def create_app(settings: NatsSettings, *, auth: KeyAuth | None = KEYS,
               request_timeout: float = 10.0, nc: Client | None = None,
               heartbeat: float = HEARTBEAT_SECONDS) -> FastAPI:
    """The gateway's ASGI app.

    Args:
        settings: NATS connection and deployment prefix.
        auth: API keys (the default): every route but health, docs, metrics and the
            AsyncAPI document needs a key with the route's scope (see
            ``gateway._auth.ROUTE_SCOPES``). None: no authentication at all.
        request_timeout: Seconds to wait for each orchestrator reply (then 503).
        nc: An already-connected NATS client to use instead of connecting in the
            lifespan; it is not closed by the app.
        heartbeat: Seconds between ``: keep-alive`` comments on idle event streams.

    Returns:
        The FastAPI app. Its lifespan connects to NATS in the background, so it starts
        even when NATS is down and answers 503 until connected.
    """
    link = NatsLink(settings, request_timeout=request_timeout, nc=nc)
    keys = None if auth is None else KeyCache(
        link, Topology(settings.subjects, replicas=auth.replicas),
        touch_interval=auth.touch_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        link.start()
        if keys is not None:
            keys.start()
        try:
            yield
        finally:
            if keys is not None:
                await keys.close()
            await link.close()

    app = _Gateway(
        title="natsflow",
        summary="Workflows on NATS: create, start, stop and watch DAGs of tasks.",
        description="The NATS interface behind this API (subjects and message "
                    "payloads) is described by an AsyncAPI document: "
                    "[/asyncapi](/asyncapi) ([/asyncapi.json](/asyncapi.json)).",
        version=__version__,
        lifespan=lifespan,
    )
    # Before any route is added: each one takes its scope check from ROUTE_SCOPES.
    app.router.route_class = scoped_route_class(auth)
    app.state.link = link
    app.state.keys = keys
    app.state.metrics = install_metrics(app)
    install_tracing(app)  # added last, so it runs first: the metrics are inside the span
    install_problem_handlers(app)

    # -- workflows -------------------------------------------------------------------
    @app.post(
        "/workflows", status_code=202, response_model=WorkflowStatus | Accepted,
        summary="Create (and start) a workflow", tags=["workflows"],
        openapi_extra={"requestBody": {"required": True, "content": {_JSON: {"schema": {
            "oneOf": [{"$ref": "#/components/schemas/WorkflowConfig"},
                      {"$ref": "#/components/schemas/RunDefinition"}]}}}}},
        responses={
            200: {"model": WorkflowStatus,
                  "description": "It already existed (same id or Idempotency-Key)."},
            # 404: the stored definition (or its version) to run does not exist.
            **problem_responses(400, 404, 409, 413, 503),
        },
    )
    async def create_workflow(
        request: Request,
        caller: Caller,
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
        body = caller.place(read_create_body(await read_json(request,
                                                             limit=MAX_CONFIG_BYTES)))
        scope = caller.namespace_scope
        if isinstance(body, RunDefinition):
            reply = await link.client().run(
                body.definition, body.input, version=body.version, workflow_id=body.id,
                labels=body.labels, start=body.start, idempotency_key=idempotency_key,
                trace=request_trace(request), namespace=body.namespace, namespaces=scope)
        else:
            reply = await link.client().create(body, idempotency_key=idempotency_key,
                                               trace=request_trace(request),
                                               namespaces=scope)
        location = str(app.url_path_for("get_workflow", workflow_id=reply.id))
        return _answer(reply, 202 if reply.created else 200, location=location)

    @app.get("/workflows", response_model=WorkflowList, summary="List workflows",
             tags=["workflows"], responses=problem_responses(400, 503))
    async def list_workflows(
        caller: Caller,
        state: Annotated[list[WorkflowState] | None, Query(
            description="Any of these states (repeat the parameter).")] = None,
        name: Annotated[str | None, Query(description="Workflow name.")] = None,
        label: Annotated[list[str] | None, Query(
            description="`key:value`; all must match (repeat the parameter).")] = None,
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
        labels: dict[str, str] = {}
        for item in label or []:
            key, sep, value = item.partition(":")
            if not sep or not key:
                raise ValidationFailed(f"label {item!r} is not key:value", field="label")
            labels[key] = value
        query = ListWorkflowsRequest(
            state=state or [], name=name, labels=labels, batch_id=batch,
            namespace=namespace, created_after=created_after, created_before=created_before,
            cursor=cursor, limit=limit)
        page = await link.client().list_workflows(query, namespaces=caller.namespace_scope)
        return Response(page.model_dump_json(exclude_none=True), media_type=_JSON)

    @app.post("/workflows/bulk/{operation}", response_model=BulkResult,
              summary="Stop, pause, resume or retry every workflow a filter selects",
              tags=["workflows"], responses=problem_responses(400, 413, 503))
    async def bulk_operation(
            operation: Annotated[str, Path(pattern="^(stop|pause|resume|retry)$")],
            request: Request, caller: Caller) -> Response:
        """Body: `{"filter": {...list filters...}, "dry_run": true}`, or `{"all": true}`
        for every workflow: a body with neither is refused (400). A dry run reports what
        would be touched; otherwise each selected workflow gets the operation, and the
        answer counts what was done and what was refused (by code). Only workflows in
        the API key's namespaces are selected."""
        body = await read_object(request, limit=64 * 1024)
        req = read_model(BulkRequest, {**body, "operation": operation})
        result = await link.client().bulk(
            req.operation, dry_run=req.dry_run, max_workflows=req.max_workflows,
            all_workflows=req.all, namespaces=caller.namespace_scope,
            **req.filter.model_dump(exclude_none=True, exclude={"cursor", "limit"}))
        return Response(result.model_dump_json(), media_type=_JSON)

    @app.get("/workflows/{workflow_id}", response_model=WorkflowStatus,
             summary="A workflow's status", tags=["workflows"],
             responses=problem_responses(400, 404, 503))
    async def get_workflow(workflow_id: _WorkflowId, caller: Caller) -> Response:
        """Where the workflow and each of its steps stand."""
        return _answer(await link.client().get(
            workflow_id, namespaces=caller.namespace_scope), 200)

    @app.post("/workflows/{workflow_id}/start", response_model=WorkflowStatus,
              summary="Start a created workflow", tags=["workflows"],
              responses=problem_responses(400, 404, 409, 503))
    async def start_workflow(workflow_id: _WorkflowId, caller: Caller) -> Response:
        """Start a workflow created with `start: false`; a no-op when already started."""
        return _answer(await link.client().start(
            workflow_id, namespaces=caller.namespace_scope), 200)

    @app.post("/workflows/{workflow_id}/stop", status_code=202, response_model=WorkflowStatus,
              summary="Stop a workflow", tags=["workflows"],
              responses=problem_responses(400, 404, 409, 503))
    async def stop_workflow(workflow_id: _WorkflowId, caller: Caller) -> Response:
        """Cancel running steps; the workflow ends `stopped`. 409 if already finished."""
        return _answer(await link.client().stop(
            workflow_id, namespaces=caller.namespace_scope), 202)

    @app.post("/workflows/{workflow_id}/signals/{name}", status_code=202,
              response_model=WorkflowStatus, summary="Send a signal", tags=["workflows"],
              responses=problem_responses(400, 404, 409, 413, 503))
    async def signal_workflow(workflow_id: _WorkflowId, name: _SignalName,
                              request: Request, caller: Caller) -> Response:
        """Deliver the signal `name`; the JSON body (optional) is its payload.

        A `wait` step waiting for that signal takes it at once, with the payload as its
        output; otherwise the signal is kept until one starts. 409 if already finished.
        """
        payload = await read_json(request, limit=MAX_SIGNAL_BYTES, optional=True)
        return _answer(await link.client().signal(
            workflow_id, name, payload, namespaces=caller.namespace_scope), 202)

    @app.post("/workflows/{workflow_id}/pause", response_model=WorkflowStatus,
              summary="Pause a running workflow", tags=["workflows"],
              responses=problem_responses(400, 404, 409, 503))
    async def pause_workflow(workflow_id: _WorkflowId, caller: Caller) -> Response:
        """Nothing new is dispatched and timers wait until resumed; running steps may
        finish and their results are kept. 409 unless running (or already paused)."""
        return _answer(await link.client().pause(
            workflow_id, namespaces=caller.namespace_scope), 200)

    @app.post("/workflows/{workflow_id}/resume", response_model=WorkflowStatus,
              summary="Resume a paused workflow", tags=["workflows"],
              responses=problem_responses(400, 404, 409, 503))
    async def resume_workflow(workflow_id: _WorkflowId, caller: Caller) -> Response:
        """Carry on; timers that came due while paused fire now. 409 unless paused."""
        return _answer(await link.client().resume(
            workflow_id, namespaces=caller.namespace_scope), 200)

    @app.post("/workflows/{workflow_id}/retry", status_code=202,
              response_model=WorkflowStatus, summary="Retry a failed or stopped workflow",
              tags=["workflows"], responses=problem_responses(400, 404, 409, 413, 503))
    async def retry_workflow(workflow_id: _WorkflowId, request: Request,
                             caller: Caller) -> Response:
        """Run it again from its unfinished steps, keeping the outputs of those that
        succeeded. Optional body `{"inputs": {"<step>": {...}}}` replaces retried steps'
        inputs. 409 unless failed or stopped (or when it was compensated)."""
        body = await read_object(request, limit=MAX_CONFIG_BYTES)
        req = read_model(RetryRequest, {**body, "id": workflow_id})
        return _answer(await link.client().retry(
            workflow_id, inputs=req.inputs, namespaces=caller.namespace_scope), 202)

    @app.post("/workflows/{workflow_id}/rerun", status_code=202,
              response_model=WorkflowStatus, summary="Run a workflow again as a new one",
              tags=["workflows"], responses=problem_responses(400, 404, 413, 503))
    async def rerun_workflow(workflow_id: _WorkflowId, request: Request,
                             caller: Caller) -> Response:
        """A new workflow from the same config and input. Optional body: `input` (a new
        input), `from_step` (only that step and those after it run; the others reuse
        their outputs), `new_id`. 202 with the new workflow and its `Location`."""
        body = await read_object(request, limit=MAX_CONFIG_BYTES)
        req = read_model(RerunRequest, {**body, "id": workflow_id})
        reply = await link.client().rerun(workflow_id, input=req.input,
                                          from_step=req.from_step, new_id=req.new_id,
                                          trace=request_trace(request),
                                          namespaces=caller.namespace_scope)
        location = str(app.url_path_for("get_workflow", workflow_id=reply.id))
        return _answer(reply, 202, location=location)

    add_event_routes(app, link, heartbeat=heartbeat)
    add_definition_routes(app, link)
    add_limit_routes(app, link)
    add_asyncapi_routes(app, settings.subjects)

    # -- batches ---------------------------------------------------------------------
    @app.post(
        "/batches", status_code=202, response_model=BatchStatus | Accepted,
        summary="Run a workflow template once per input", tags=["batches"],
        openapi_extra=_json_body(BatchConfig),
        responses={200: {"model": BatchStatus, "description": "It already existed."},
                   **problem_responses(400, 409, 413, 503)},
    )
    async def create_batch(request: Request, caller: Caller) -> Response:
        """Create and start a batch: at most `max_concurrency` members run at a time.

        Its `namespace` (its members' too) defaults as a workflow's does."""
        config = caller.place(read_batch_config(await read_json(request,
                                                                limit=MAX_BATCH_BYTES)))
        reply = await link.client().create_batch(config, namespaces=caller.namespace_scope)
        location = str(app.url_path_for("get_batch", batch_id=reply.id))
        return _answer(reply, 202 if reply.created else 200, location=location)

    @app.get("/batches/{batch_id}", response_model=BatchStatus,
             summary="A batch's status", tags=["batches"],
             responses=problem_responses(400, 404, 503))
    async def get_batch(batch_id: _BatchId, caller: Caller) -> Response:
        """Counts per state and every member workflow."""
        return _answer(await link.client().get_batch(
            batch_id, namespaces=caller.namespace_scope), 200)

    @app.post("/batches/{batch_id}/stop", status_code=202, response_model=BatchStatus,
              summary="Stop a batch", tags=["batches"],
              responses=problem_responses(400, 404, 409, 503))
    async def stop_batch(batch_id: _BatchId, caller: Caller) -> Response:
        """Start no more members and stop the running ones."""
        return _answer(await link.client().stop_batch(
            batch_id, namespaces=caller.namespace_scope), 202)

    # -- health ----------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, summary="Liveness", tags=["health"])
    async def healthz() -> Health:
        """200 while the process runs, whatever the state of NATS."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, summary="Readiness", tags=["health"],
             responses=problem_responses(503))
    async def readyz() -> Readiness:
        """200 when NATS is connected and both an orchestrator and an index answer a
        ping; the body reports each of the three. Else 503: a problem naming what is
        missing, whose `details` hold the same report."""
        report = await link.readiness()
        missing = report.missing()
        if missing:
            why = "; ".join(f"{name}: {dep.detail}" for name, dep in missing.items())
            cls = NatsAuthFailed if report.nats.code == NatsAuthFailed.code else Unavailable
            raise cls(f"not ready: {why}", details=report.model_dump(mode="json"))
        return report

    return app


async def serve(settings: NatsSettings, *, host: str = "127.0.0.1", port: int = 8000,
                auth: KeyAuth | None = KEYS, request_timeout: float = 10.0,
                log_level: str = "info", configure_logging: bool = True) -> None:
    """Run the gateway with uvicorn in the current event loop.

    Returns when uvicorn exits (SIGINT/SIGTERM when run in the main thread). When the
    calling task is cancelled, uvicorn shuts down gracefully first, then the
    cancellation propagates.

    Args:
        settings: NATS connection and deployment prefix.
        host: Interface to listen on.
        port: TCP port to listen on.
        auth: API keys (the default), or None for none (a warning is logged).
        request_timeout: Seconds to wait for each orchestrator reply.
        log_level: uvicorn's log level.
        configure_logging: Let uvicorn install its own log handlers; False leaves its
            loggers to the root logger's handlers (e.g. JSON lines).
    """
    if auth is None:
        _log.warning("authentication is OFF: anyone who reaches http://%s:%d may read and "
                     "change every workflow", host, port)
    config = uvicorn.Config(create_app(settings, auth=auth, request_timeout=request_timeout),
                            host=host, port=port, lifespan="on", log_level=log_level,
                            log_config=uvicorn.config.LOGGING_CONFIG if configure_logging
                            else None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="natsflow-gateway-uvicorn")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
