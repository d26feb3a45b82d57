"""Every request/reply operation of ``<prefix>.api.*`` (one home per fact).

One table: each operation's name, request model, reply model(s), the errors it may
answer, the micro service that serves it, and the gateway's REST route for it, if it has
one (:class:`~contracts.http_routes.HttpRoute`: the client's HTTP transport is built from
it). The client's calls
(:class:`~natsflow.client.NatsflowClient`), the services' endpoints (the orchestrator's
``orchestrator/api.py``, the index's ``orchestrator/index.py``), the NATS permissions
(:mod:`contracts.permissions`) and the AsyncAPI document (:mod:`natsflow.asyncapi`) are
built from it; ``tests/test_wire_facts.py`` checks they agree, and that no other module
writes an operation's name.

An error reply is the NATS micro convention: the body an :class:`ErrorInfo`, the header
``Nats-Service-Error-Code`` its code (:func:`error_reply`, :func:`reply_error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .definitions import (
    Definition,
    DefinitionInfo,
    DefinitionList,
    DefinitionReply,
    GetDefinitionRequest,
    ListDefinitionsRequest,
    PutDefinitionRequest,
)
from .errors import (
    AlreadyFinished,
    BatchNotFound,
    DefinitionNotFound,
    EgressRefused,
    ErrorInfo,
    ExpressionError,
    IdConflict,
    InvalidGraph,
    InvalidState,
    NamespaceForbidden,
    NatsflowError,
    PayloadTooLarge,
    ScheduleNotFound,
    SchemaMismatch,
    TooManySignals,
    TriggerNotFound,
    Unavailable,
    ValidationFailed,
    WorkflowNotFound,
    error_from_info,
)
from .flow import LimitList, ListLimitsRequest
from .headers import ERROR_CODE_HEADER, ERROR_HEADER, IDEMPOTENCY_KEY_HEADER
from .http_routes import REST, HttpRoute, ReplyShape, ScopeBy
from .messages import (
    MAX_BATCH_BYTES,
    MAX_REQUEST_BYTES,
    BatchReply,
    BulkRequest,
    BulkResult,
    CreateBatchRequest,
    CreateWorkflowRequest,
    IdRequest,
    ListWorkflowsRequest,
    RerunRequest,
    RetryRequest,
    SignalRequest,
    WorkflowList,
    WorkflowReply,
)
from .schedules import (
    BackfillReply,
    BackfillRequest,
    CreateScheduleRequest,
    DeleteScheduleReply,
    ListSchedulesRequest,
    PauseScheduleRequest,
    ScheduleFireReply,
    ScheduleInfo,
    ScheduleList,
    ScheduleRef,
)
from .subjects import Subjects
from .triggers import (
    CreateTriggerRequest,
    ListTriggersRequest,
    PauseTriggerRequest,
    TriggerInfo,
    TriggerList,
    TriggerReply,
    TriggerRequest,
    TriggerStats,
)

__all__ = [
    "BATCH_CREATE",
    "BATCH_GET",
    "BATCH_STOP",
    "COMMON_ERRORS",
    "DEFINITION_GET",
    "DEFINITION_LIST",
    "DEFINITION_PUT",
    "INDEX_OPERATIONS",
    "OPERATIONS",
    "SCHEDULE_BACKFILL",
    "SCHEDULE_CREATE",
    "SCHEDULE_DELETE",
    "SCHEDULE_GET",
    "SCHEDULE_LIST",
    "SCHEDULE_OPERATIONS",
    "SCHEDULE_PAUSE",
    "SCHEDULE_TRIGGER",
    "SCHEDULE_UNPAUSE",
    "TRIGGER_CREATE",
    "TRIGGER_DELETE",
    "TRIGGER_GET",
    "TRIGGER_LIST",
    "TRIGGER_OPERATIONS",
    "TRIGGER_PAUSE",
    "TRIGGER_RESUME",
    "TRIGGER_STATS",
    "WORKFLOW_BULK",
    "WORKFLOW_CREATE",
    "WORKFLOW_GET",
    "WORKFLOW_LIST",
    "WORKFLOW_PAUSE",
    "WORKFLOW_RERUN",
    "WORKFLOW_RESUME",
    "WORKFLOW_RETRY",
    "WORKFLOW_SIGNAL",
    "WORKFLOW_START",
    "WORKFLOW_STOP",
    "Operation",
    "Server",
    "endpoints",
    "error_reply",
    "reply_error",
    "served_by",
]

_Req = TypeVar("_Req", bound=BaseModel)
_Rep = TypeVar("_Rep", bound=BaseModel)
_H = TypeVar("_H")


class Server(StrEnum):
    """The natsflow process whose micro service answers an operation."""

    ORCHESTRATOR = "orchestrator"
    INDEX = "index"


#: What any operation may answer besides its own errors: a body that is not its request
#: (or over its limit), no engine answer in time, and an internal error.
COMMON_ERRORS: Final[tuple[type[NatsflowError], ...]] = (
    ValidationFailed, PayloadTooLarge, Unavailable, NatsflowError)


@dataclass(frozen=True, slots=True)
class Operation(Generic[_Req, _Rep]):
    """One request/reply endpoint, ``<prefix>.api.<name>``.

    Attributes:
        name: ``<group>.<verb>``, e.g. ``workflow.create``.
        request: The request body.
        reply: The reply body.
        summary: What it does, for the document.
        errors: The errors it may answer besides :data:`COMMON_ERRORS`.
        server: Whose micro service serves it.
        other_replies: Other reply bodies it may answer instead (which one: by request).
        max_bytes: The largest request body it takes (the gateway's limit is the same).
        too_large_field: The field a too large request is blamed on.
        http: The gateway's REST route for it, if it has one (:mod:`contracts.http_routes`).
    """

    name: str
    request: type[_Req]
    reply: type[_Rep]
    summary: str
    errors: tuple[type[NatsflowError], ...] = ()
    server: Server = Server.ORCHESTRATOR
    other_replies: tuple[type[BaseModel], ...] = ()
    max_bytes: int = MAX_REQUEST_BYTES
    too_large_field: str | None = None
    # Not part of an operation's identity (operations key the services' handler tables).
    http: HttpRoute | None = field(default=None, hash=False, compare=False)

    @property
    def replies(self) -> tuple[type[BaseModel], ...]:
        """Every reply body it may answer, the usual one first."""
        return (self.reply, *self.other_replies)

    @property
    def endpoint(self) -> str:
        """The micro service's name for the endpoint (no dots: ``workflow-create``)."""
        return self.name.replace(".", "-")

    @property
    def error_codes(self) -> tuple[str, ...]:
        """The codes of every error it may answer, its own first."""
        codes = [e.code for e in (*self.errors, *COMMON_ERRORS)]
        return tuple(dict.fromkeys(codes))

    def service_name(self, subjects: Subjects) -> str:
        """The name of the NATS micro service that serves it."""
        return (subjects.index_service_name if self.server is Server.INDEX
                else subjects.service_name)


_NOT_FOUND_W = (WorkflowNotFound,)


def _create_body(request: CreateWorkflowRequest) -> Any:
    # POST /workflows takes the config itself, or the definition's fields at the top.
    if request.config is not None:
        return request.config.model_dump(mode="json", exclude_none=True)
    return request.model_dump(mode="json", exclude_none=True, exclude_defaults=True,
                              exclude={"config", "idempotency_key", "namespaces"})


def _command(path: str, *, body: str | None = None) -> HttpRoute:
    """``POST /workflows/{id}/<path>``: a command on one workflow, answering its status."""
    return HttpRoute("POST", f"/workflows/{{id}}/{path}", body=body,
                     reply=ReplyShape.STATUS, scope=ScopeBy.WORKFLOW)


_CONFIG_ERRORS = (InvalidGraph, ExpressionError, SchemaMismatch, EgressRefused)

WORKFLOW_CREATE: Final = Operation(
    "workflow.create", CreateWorkflowRequest, WorkflowReply,
    "Create (and, unless `start` is false, start) a workflow from a config or a stored "
    "definition.",
    errors=(*_CONFIG_ERRORS, DefinitionNotFound, IdConflict, NamespaceForbidden),
    too_large_field="config",
    http=HttpRoute("POST", "/workflows", body=_create_body,
                   headers={"idempotency_key": IDEMPOTENCY_KEY_HEADER},
                   reply=ReplyShape.STATUS_CREATED))
WORKFLOW_START: Final = Operation(
    "workflow.start", IdRequest, WorkflowReply, "Start a workflow created with `start: false`.",
    errors=_NOT_FOUND_W,
    http=_command("start"))
WORKFLOW_GET: Final = Operation(
    "workflow.get", IdRequest, WorkflowReply, "A workflow's status.", errors=_NOT_FOUND_W,
    http=HttpRoute("GET", "/workflows/{id}", reply=ReplyShape.STATUS,
                   scope=ScopeBy.REPLY))
WORKFLOW_STOP: Final = Operation(
    "workflow.stop", IdRequest, WorkflowReply, "Stop a workflow: cancel its running steps.",
    errors=(WorkflowNotFound, AlreadyFinished),
    http=_command("stop"))
WORKFLOW_SIGNAL: Final = Operation(
    "workflow.signal", SignalRequest, WorkflowReply,
    "Deliver a signal to a workflow's wait step.",
    errors=(WorkflowNotFound, AlreadyFinished, TooManySignals),
    http=_command("signals/{name}", body="payload"))
WORKFLOW_PAUSE: Final = Operation(
    "workflow.pause", IdRequest, WorkflowReply,
    "Pause a workflow: dispatch nothing new, hold timers.",
    errors=(WorkflowNotFound, InvalidState),
    http=_command("pause"))
WORKFLOW_RESUME: Final = Operation(
    "workflow.resume", IdRequest, WorkflowReply, "Resume a paused workflow.",
    errors=(WorkflowNotFound, InvalidState),
    http=_command("resume"))
WORKFLOW_RETRY: Final = Operation(
    "workflow.retry", RetryRequest, WorkflowReply,
    "Run a failed or stopped workflow again from its unfinished steps.",
    errors=(WorkflowNotFound, InvalidState),
    http=_command("retry", body=REST))
WORKFLOW_RERUN: Final = Operation(
    "workflow.rerun", RerunRequest, WorkflowReply,
    "A new workflow from the same config (and input).",
    errors=(WorkflowNotFound, IdConflict))
WORKFLOW_LIST: Final = Operation(
    "workflow.list", ListWorkflowsRequest, WorkflowList,
    "Workflows newest first, filtered, a page at a time.", server=Server.INDEX,
    http=HttpRoute("GET", "/workflows", query={
        "state": "state", "name": "name", "labels": "label", "batch_id": "batch",
        "namespace": "namespace", "created_after": "created_after",
        "created_before": "created_before", "cursor": "cursor", "limit": "limit",
        "counts": "counts"}, scope=ScopeBy.QUERY))
WORKFLOW_BULK: Final = Operation(
    "workflow.bulk", BulkRequest, BulkResult,
    "Stop, pause, resume or retry every workflow a filter selects.", server=Server.INDEX)
BATCH_CREATE: Final = Operation(
    "batch.create", CreateBatchRequest, BatchReply, "Run a workflow template once per input.",
    errors=(*_CONFIG_ERRORS, IdConflict, NamespaceForbidden), max_bytes=MAX_BATCH_BYTES)
BATCH_GET: Final = Operation(
    "batch.get", IdRequest, BatchReply, "A batch's status.", errors=(BatchNotFound,))
BATCH_STOP: Final = Operation(
    "batch.stop", IdRequest, BatchReply,
    "Stop a batch: start no more members, stop the running ones.",
    errors=(BatchNotFound, AlreadyFinished))
DEFINITION_PUT: Final = Operation(
    "definition.put", PutDefinitionRequest, DefinitionReply,
    "Store a new version of a workflow definition.",
    errors=(*_CONFIG_ERRORS, NamespaceForbidden), too_large_field="config")
DEFINITION_GET: Final = Operation(
    "definition.get", GetDefinitionRequest, DefinitionInfo,
    "One version of a definition, or its versions and latest (no `version`).",
    errors=(DefinitionNotFound,), other_replies=(Definition,))
DEFINITION_LIST: Final = Operation(
    "definition.list", ListDefinitionsRequest, DefinitionList, "Every stored definition.")
LIMIT_LIST: Final = Operation(
    "limit.list", ListLimitsRequest, LimitList,
    "The concurrency and rate limits in use: permits held, who waits (docs/flow-control.md).")

_NOT_FOUND_S = (ScheduleNotFound,)
SCHEDULE_CREATE: Final = Operation(
    "schedule.create", CreateScheduleRequest, ScheduleInfo,
    "Store a schedule (the same one again: unchanged; another of that name: conflict).",
    errors=(*_CONFIG_ERRORS, DefinitionNotFound, IdConflict, NamespaceForbidden),
    too_large_field="schedule")
SCHEDULE_GET: Final = Operation(
    "schedule.get", ScheduleRef, ScheduleInfo,
    "A schedule, its next 5 fire times and its last runs with their states.",
    errors=_NOT_FOUND_S)
SCHEDULE_LIST: Final = Operation(
    "schedule.list", ListSchedulesRequest, ScheduleList, "Every schedule.")
SCHEDULE_PAUSE: Final = Operation(
    "schedule.pause", PauseScheduleRequest, ScheduleInfo,
    "Stop firing (with a note saying why); runs going on go on.", errors=_NOT_FOUND_S)
SCHEDULE_UNPAUSE: Final = Operation(
    "schedule.unpause", ScheduleRef, ScheduleInfo,
    "Fire again, from now on (fire times while paused are not run).", errors=_NOT_FOUND_S)
SCHEDULE_TRIGGER: Final = Operation(
    "schedule.trigger", ScheduleRef, ScheduleFireReply,
    "Fire now (through the overlap policy).", errors=_NOT_FOUND_S)
SCHEDULE_BACKFILL: Final = Operation(
    "schedule.backfill", BackfillRequest, BackfillReply,
    "Run the fire times of a past time range now, through the overlap policy.",
    errors=_NOT_FOUND_S)
SCHEDULE_DELETE: Final = Operation(
    "schedule.delete", ScheduleRef, DeleteScheduleReply,
    "Delete a schedule; its runs going on go on.")
#: The schedule operations (served by the orchestrator's ``orchestrator.schedules_api``).
SCHEDULE_OPERATIONS: Final = (SCHEDULE_CREATE, SCHEDULE_GET, SCHEDULE_LIST, SCHEDULE_PAUSE,
                              SCHEDULE_UNPAUSE, SCHEDULE_TRIGGER, SCHEDULE_BACKFILL,
                              SCHEDULE_DELETE)
_NOT_FOUND_T = (TriggerNotFound,)
TRIGGER_CREATE: Final = Operation(
    "trigger.create", CreateTriggerRequest, TriggerReply,
    "Bind a subject to a workflow: each message on it starts one (the same trigger again "
    "changes nothing).",
    errors=(ExpressionError, InvalidGraph, DefinitionNotFound, IdConflict,
            NamespaceForbidden))
TRIGGER_GET: Final = Operation(
    "trigger.get", TriggerRequest, TriggerInfo, "A trigger and its counters.",
    errors=_NOT_FOUND_T)
TRIGGER_LIST: Final = Operation(
    "trigger.list", ListTriggersRequest, TriggerList, "Every trigger, with its counters.")
TRIGGER_PAUSE: Final = Operation(
    "trigger.pause", PauseTriggerRequest, TriggerReply,
    "Stop consuming a trigger's messages (its consumer keeps its place).",
    errors=_NOT_FOUND_T)
TRIGGER_RESUME: Final = Operation(
    "trigger.resume", TriggerRequest, TriggerReply,
    "Consume a paused trigger's messages again, from where it stopped.",
    errors=_NOT_FOUND_T)
TRIGGER_DELETE: Final = Operation(
    "trigger.delete", TriggerRequest, TriggerReply,
    "Delete a trigger, its consumer and its counters.", errors=_NOT_FOUND_T)
TRIGGER_STATS: Final = Operation(
    "trigger.stats", TriggerRequest, TriggerStats,
    "A trigger's counters: received, matched, skipped by `when`, started, duplicates, "
    "failed mapping.", errors=_NOT_FOUND_T)
#: The trigger operations (served by the orchestrator).
TRIGGER_OPERATIONS: Final = (TRIGGER_CREATE, TRIGGER_GET, TRIGGER_LIST, TRIGGER_PAUSE,
                             TRIGGER_RESUME, TRIGGER_DELETE, TRIGGER_STATS)

#: Every operation natsflow serves, by name, in the document's order.
OPERATIONS: Final[dict[str, Operation[Any, Any]]] = {op.name: op for op in (
    WORKFLOW_CREATE, WORKFLOW_START, WORKFLOW_GET, WORKFLOW_STOP, WORKFLOW_SIGNAL,
    WORKFLOW_PAUSE, WORKFLOW_RESUME, WORKFLOW_RETRY, WORKFLOW_RERUN, WORKFLOW_LIST,
    WORKFLOW_BULK, BATCH_CREATE, BATCH_GET, BATCH_STOP, DEFINITION_PUT, DEFINITION_GET,
    DEFINITION_LIST, LIMIT_LIST, *SCHEDULE_OPERATIONS, *TRIGGER_OPERATIONS)}
#: The names of the operations the index (``natsflow index``) answers.
INDEX_OPERATIONS: Final = frozenset(
    name for name, op in OPERATIONS.items() if op.server is Server.INDEX)


def served_by(server: Server) -> list[Operation[Any, Any]]:
    """The operations whose endpoints ``server`` registers."""
    return [op for op in OPERATIONS.values() if op.server is server]


def endpoints(server: Server, handlers: Mapping[Operation[Any, Any], _H]
              ) -> list[tuple[Operation[Any, Any], _H]]:
    """Each operation ``server`` serves, in the table's order, with its handler: what a
    service registers as its micro service endpoints.

    Raises:
        RuntimeError: ``handlers`` misses an operation of ``server``'s, or has another.
    """
    ops = served_by(server)
    missing = [op.name for op in ops if op not in handlers]
    extra = [op.name for op in handlers if op not in ops]
    if missing or extra:
        raise RuntimeError(f"the {server} handlers do not match the operation table: "
                           f"missing {missing}, not in it {extra}")
    return [(op, handlers[op]) for op in ops]


def error_reply(err: NatsflowError) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an API error reply (what a service answers on a failure)."""
    return (err.info().model_dump_json(exclude_none=True).encode(),
            {ERROR_CODE_HEADER: err.code, ERROR_HEADER: err.message[:200]})


def reply_error(data: bytes, headers: Mapping[str, str] | None) -> NatsflowError | None:
    """The error an API reply carries (as :func:`error_reply` made it), or None."""
    code = headers.get(ERROR_CODE_HEADER) if headers else None
    if not code:
        return None
    assert headers is not None
    try:
        info = ErrorInfo.model_validate_json(data)
    except ValidationError:
        info = ErrorInfo(code=code, message=headers.get(ERROR_HEADER, "error"))
    return error_from_info(info)

