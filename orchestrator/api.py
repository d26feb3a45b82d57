"""The request/reply API: a NATS micro service (``$SRV.PING/INFO/STATS`` included).

Reads (get) come straight from the KV buckets. Writes (create, start, stop) are turned
into commands on the inbox stream, so they are persisted before anything happens and
processed by whichever orchestrator replica fetches them; the replica that processes a
command publishes the outcome to a reply subject this handler waits on.

Every request may carry a ``namespaces`` scope (see :mod:`contracts.namespaces`):
reads check the record's namespace here; commands carry the scope to the engine, which
checks it on the record it applies them to. Outside the scope, a workflow, batch or
definition answers exactly as a missing one; a create outside it is
``namespace-forbidden``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from pydantic import BaseModel, TypeAdapter, ValidationError

from contracts import __version__
from contracts.definitions import (
    DefinitionList,
    DefinitionReply,
    GetDefinitionRequest,
    ListDefinitionsRequest,
    PutDefinitionRequest,
)
from contracts.egress import EgressPolicy, check_literal_subjects
from contracts.errors import (
    BatchNotFound,
    DefinitionNotFound,
    ErrorInfo,
    InvalidGraph,
    NatsflowError,
    PayloadTooLarge,
    Unavailable,
    ValidationFailed,
    WorkflowNotFound,
    error_from_info,
    validation_failed,
)
from contracts.flow import LimitList, ListLimitsRequest
from contracts.headers import OUTCOME_ERROR_HEADER, REPLY_HEADER
from contracts.ids import new_id
from contracts.messages import (
    BatchReply,
    CreateBatchRequest,
    CreateWorkflowRequest,
    IdRequest,
    RerunRequest,
    RetryRequest,
    SignalRequest,
    WorkflowReply,
)
from contracts.models import (
    MAX_CONFIG_BYTES,
    SHOWN,
    StepState,
    WorkflowConfig,
    ancestors_of,
)
from contracts.namespaces import DEFAULT_NAMESPACE, check_may_create, narrow, visible
from contracts.operations import (
    BATCH_CREATE,
    BATCH_GET,
    BATCH_STOP,
    DEFINITION_GET,
    DEFINITION_LIST,
    DEFINITION_PUT,
    LIMIT_LIST,
    WORKFLOW_CREATE,
    WORKFLOW_GET,
    WORKFLOW_PAUSE,
    WORKFLOW_RERUN,
    WORKFLOW_RESUME,
    WORKFLOW_RETRY,
    WORKFLOW_SIGNAL,
    WORKFLOW_START,
    WORKFLOW_STOP,
    Operation,
    Server,
    endpoints,
    error_reply,
)
from contracts.subjects import TOKEN_RE, Subjects
from contracts.untrusted import check_json_bytes
from transport.publish import AsyncPublisher
from transport.tracing import TraceContext, extract, forward, span

from .definitions import DefinitionStore
from .limiter import read_limits
from .pools import state_of
from .records import (
    BatchRecord,
    CreateBatch,
    CreateWorkflow,
    PauseWorkflow,
    ResumeWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StopBatch,
    StopWorkflow,
    WorkflowRecord,
    read_record,
)
from .runtime import fingerprint
from .store import RecordStore

__all__ = ["Api"]

log = logging.getLogger("natsflow.api")

#: The trace context a create started by the request being answered keeps (each request
#: is answered in a task of its own, so this is per request).
_request_trace: ContextVar[TraceContext | None] = ContextVar("natsflow_api_trace",
                                                             default=None)


_INPUT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


def _check_body(op: Operation[Any, Any], data: bytes) -> None:
    """Refuse a request over its operation's limit (the gateway's limits and
    ``<prefix>.submit``'s are the same), before it is parsed."""
    limit = op.max_bytes
    if len(data) > limit:
        raise PayloadTooLarge(f"request of {len(data)} bytes is over the limit of {limit} "
                              f"bytes", field=op.too_large_field, details={"limit": limit})



def _check_config(config: WorkflowConfig, *, field: str) -> None:
    """Refuse a config put together here (a definition and an input, a rerun's new
    input, a batch's template and input) that is over MAX_CONFIG_BYTES, though each part
    is within its request's limit. Measured as written, without its defaults."""
    size = len(config.model_dump_json(exclude_defaults=True))
    if size > MAX_CONFIG_BYTES:
        raise PayloadTooLarge(f"the workflow's config would be {size} bytes, over the limit "
                              f"of {MAX_CONFIG_BYTES} bytes", field=field,
                              details={"limit": MAX_CONFIG_BYTES})


def _settle(fut: asyncio.Future[Msg | None], outcome: Msg | None) -> None:
    """A command's outcome (None: none came in time), unless it has one already."""
    if not fut.done():
        fut.set_result(outcome)


#: What an endpoint answers: a model, or the JSON of one as the engine sent it.
Answer = BaseModel | bytes
#: A command sent by id, made with the request's scope.
_Scoped = StartWorkflow | StopWorkflow | PauseWorkflow | ResumeWorkflow | StopBatch


class Api:
    """Serves ``<prefix>.api.*`` for one orchestrator process.

    Args:
        nc: Connected NATS client.
        subjects: The deployment's names.
        workflows: Store of workflow records (reads).
        batches: Store of batch records (reads).
        idempotency: KV of Idempotency-Key digests.
        publisher: Where commands are persisted: the orchestrator's own, which it
            starts and closes (the API never owns one).
        command_timeout: Seconds to wait for a command's outcome before answering
            "accepted" without a status.
        egress: The egress policy: a literal subject it refuses fails the submit.
        more: Handlers of further operations served here (the schedules', the triggers').
    """

    def __init__(self, nc: Client, subjects: Subjects, *, workflows: RecordStore,
                 batches: RecordStore, idempotency: KeyValue, publisher: AsyncPublisher,
                 definitions: DefinitionStore | None = None,
                 command_timeout: float = 5.0, egress: EgressPolicy | None = None,
                 more: Mapping[Operation[Any, Any], Callable[[bytes], Awaitable[Answer]]]
                 | None = None, limits: KeyValue | None = None) -> None:
        self.nc = nc
        self.more = dict(more or {})
        self.egress = egress or EgressPolicy()
        self.publisher = publisher
        self.subjects = subjects
        self.workflows = workflows
        self.batches = batches
        self.idempotency = idempotency
        self.definitions = definitions
        self.limits = limits
        self.command_timeout = command_timeout
        self.service: Service | None = None
        self._pending: dict[str, asyncio.Future[Msg | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reply_prefix = ""
        self._replies = itertools.count(1)

    async def start(self) -> None:
        """Subscribe for outcomes and register the micro service."""
        self._reply_prefix = self.nc.new_inbox()
        await self.nc.subscribe(self._reply_prefix + ".*", cb=self._on_outcome)
        self.service = await add_service(self.nc, ServiceConfig(
            name=self.subjects.service_name, version=__version__,
            description="natsflow orchestrator", metadata={"prefix": self.subjects.prefix}))
        handlers: dict[Operation[Any, Any], Callable[[bytes], Awaitable[Answer]]] = {
            WORKFLOW_CREATE: self.create, WORKFLOW_START: self.start_workflow,
            WORKFLOW_GET: self.get, WORKFLOW_STOP: self.stop_workflow,
            WORKFLOW_SIGNAL: self.signal_workflow,
            WORKFLOW_PAUSE: self.pause_workflow, WORKFLOW_RESUME: self.resume_workflow,
            WORKFLOW_RETRY: self.retry_workflow, WORKFLOW_RERUN: self.rerun_workflow,
            DEFINITION_PUT: self.put_definition, DEFINITION_GET: self.get_definition,
            DEFINITION_LIST: self.list_definitions, LIMIT_LIST: self.list_limits,
            BATCH_CREATE: self.create_batch, BATCH_GET: self.get_batch,
            BATCH_STOP: self.stop_batch, **self.more,
        }
        for op, fn in endpoints(Server.ORCHESTRATOR, handlers):
            await self.service.add_endpoint(EndpointConfig(
                name=op.endpoint, subject=self.subjects.api(op.name),
                handler=self._endpoint(op, fn)))
        # Serving once this returns: the server has the subscriptions, so a request
        # made right after start (from any connection) finds a responder.
        await self.nc.flush()

    async def close(self) -> None:
        """Deregister; pending requests get no answer (clients time out and retry)."""
        if self.service is not None:
            await self.service.stop()
        for task in list(self._tasks):
            task.cancel()

    def _endpoint(self, op: Operation[Any, Any], fn: Callable[[bytes], Awaitable[Answer]]
                  ) -> Callable[[Request], Awaitable[None]]:
        async def run(req: Request) -> None:
            incoming = extract(req.headers)
            with span(f"natsflow.api {op.name}", incoming, kind="server"):
                _request_trace.set(forward(incoming))
                await answer(req)

        async def answer(req: Request) -> None:
            try:
                # Too large, NaN (stored as null), too deep (fails where serialized):
                # refused for every operation, before its model reads the request.
                _check_body(op, req.data)
                check_json_bytes(req.data)
                reply = await fn(req.data)
            except ValidationError as exc:
                await self._respond_error(req, validation_failed(exc))
            except NatsflowError as exc:
                await self._respond_error(req, exc)
            except Exception as exc:
                log.exception("API handler failed")
                err = NatsflowError(f"internal error: {type(exc).__name__}")
                await self._respond_error(req, err)
            else:
                # Shown to a client: secrets given at submit stay out of it.
                await req.respond(reply if isinstance(reply, bytes)
                                  else reply.model_dump_json(context={SHOWN: True}).encode())

        async def handler(req: Request) -> None:
            # Subscriptions run callbacks one at a time; a task per request keeps a
            # slow command from holding up the others.
            task = asyncio.create_task(run(req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return handler

    async def _respond_error(self, req: Request, err: NatsflowError) -> None:
        body, headers = error_reply(err)
        try:
            await req.respond(body, headers=headers)
        except nats.errors.Error:
            log.warning("could not answer an API request")

    # -- commands -------------------------------------------------------------------
    async def _on_outcome(self, msg: Msg) -> None:
        fut = self._pending.pop(msg.subject, None)
        if fut is not None:
            _settle(fut, msg)

    async def _command(self, subject: str, body: BaseModel) -> Msg | None:
        """Persist a command on the inbox; wait for its outcome (None on timeout)."""
        reply_subject = f"{self._reply_prefix}.{next(self._replies)}"  # the inbox is ours
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg | None] = loop.create_future()
        self._pending[reply_subject] = fut
        try:
            try:
                await self.publisher.stored(subject, body.model_dump_json().encode(),
                                            {REPLY_HEADER: reply_subject},
                                            timeout=self.command_timeout)
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                raise Unavailable(f"command not persisted: {exc!r}") from None
            # No answer in time resolves it to None: a timer handle, not a Timeout.
            late = loop.call_later(self.command_timeout, _settle, fut, None)
            try:
                return await fut
            finally:
                late.cancel()
        finally:
            self._pending.pop(reply_subject, None)

    @staticmethod
    def _outcome(msg: Msg | None, model: type[WorkflowReply | BatchReply], key: str, *,
                 creating: bool = False) -> Answer:
        """The engine's answer, passed on as it sent it: it is already the reply's JSON.

        With no answer in time, the command was persisted all the same: a create is
        reported as accepted (``created``), anything else with no status.
        """
        if msg is None:
            return model(id=key, created=creating, status=None)
        if msg.headers and msg.headers.get(OUTCOME_ERROR_HEADER):
            raise error_from_info(ErrorInfo.model_validate_json(msg.data))
        return msg.data

    async def _id_for_key(self, key: str, namespace: str) -> str:
        # Per namespace: two tenants' equal keys must not meet (the default one's
        # digests are those from before namespaces, so its keys still find their ids).
        scoped = key if namespace == DEFAULT_NAMESPACE else f"{namespace}\x00{key}"
        digest = hashlib.sha256(scoped.encode()).hexdigest()[:40]
        candidate = new_id()
        try:
            await self.idempotency.create(digest, candidate.encode())
            return candidate
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self.idempotency.get(digest)
            return (entry.value or b"").decode()

    async def create(self, data: bytes) -> Answer:
        """``workflow.create``: CreateWorkflowRequest -> WorkflowReply."""
        try:
            req = CreateWorkflowRequest.model_validate_json(data)
        except InvalidGraph as exc:
            exc.field = f"config.{exc.field}" if exc.field else "config"
            raise
        check_may_create(req.target_namespace, req.namespaces,
                         field="config.namespace" if req.config is not None else "namespace")
        if req.config is not None:
            config = req.config  # within the limit: the request is
        else:
            config = await self._from_definition(req)
            _check_config(config, field="input")
        check_literal_subjects(config, policy=self.egress, subjects=self.subjects,
                               field_prefix="config." if req.config is not None else "")
        if config.id is None:
            wid = (await self._id_for_key(req.idempotency_key, config.namespace)
                   if req.idempotency_key else new_id())
            config = config.model_copy(update={"id": wid})
        assert config.id is not None
        cmd = CreateWorkflow(config=config, fingerprint=fingerprint(config),
                             trace=_request_trace.get())
        msg = await self._command(self.subjects.workflow_command(config.id), cmd)
        return self._outcome(msg, WorkflowReply, config.id, creating=True)

    def _registry(self) -> DefinitionStore:
        if self.definitions is None:
            raise Unavailable("this orchestrator has no definitions registry")
        return self.definitions

    async def _from_definition(self, req: CreateWorkflowRequest) -> WorkflowConfig:
        """The config of a run of a stored definition (its version pinned)."""
        assert req.definition is not None
        base = await self._registry().resolve_config(req.definition, req.version,
                                                     namespace=req.target_namespace)
        try:
            return WorkflowConfig.model_validate({
                **base.model_dump(exclude_none=True), "input": req.input, "id": req.id,
                "labels": {**base.labels, **req.labels}, "start": req.start,
                **({"priority": req.priority} if req.priority is not None else {})})
        except ValidationError as exc:
            raise validation_failed(exc) from None

    # -- definitions ----------------------------------------------------------------
    async def put_definition(self, data: bytes) -> DefinitionReply:
        """``definition.put``: PutDefinitionRequest -> DefinitionReply."""
        req = PutDefinitionRequest.model_validate_json(data)
        check_may_create(req.namespace, req.namespaces)
        check_literal_subjects(DefinitionStore.validate(req.name, req.config,
                                                        namespace=req.namespace),
                               policy=self.egress, subjects=self.subjects,
                               field_prefix="config.")
        stored, created = await self._registry().put(req.name, req.config,
                                                     namespace=req.namespace)
        return DefinitionReply(definition=stored, created=created)

    async def get_definition(self, data: bytes) -> BaseModel:
        """``definition.get``: a Definition (with ``version``) or a DefinitionInfo."""
        req = GetDefinitionRequest.model_validate_json(data)
        if not visible(req.namespace, req.namespaces):
            # What a missing one answers: no hint that the namespace has it.
            raise DefinitionNotFound(f"no definition {req.name!r}", field="name")
        if req.version is not None:
            return await self._registry().get(req.name, req.version, namespace=req.namespace)
        return await self._registry().info(req.name, namespace=req.namespace)

    async def list_definitions(self, data: bytes) -> DefinitionList:
        """``definition.list``: the definitions in the scope (and ``namespace``)."""
        req = ListDefinitionsRequest.model_validate_json(data or b"{}")
        wanted = narrow(req.namespaces, None if req.namespace is None else [req.namespace])
        return DefinitionList(definitions=await self._registry().summaries(namespaces=wanted))

    async def list_limits(self, data: bytes) -> LimitList:
        """``limit.list``: every limit in use the scope may see (or the one named)."""
        req = ListLimitsRequest.model_validate_json(data or b"{}")
        if self.limits is None:
            return LimitList(limits=[])
        states = [state_of(e) for e in await read_limits(self.limits)
                  if visible(e.namespace, req.namespaces)
                  and (req.limit is None or e.pool == req.limit)]
        states.sort(key=lambda s: (s.limit, s.key))
        return LimitList(limits=states)

    @staticmethod
    def _id(data: bytes, missing: type[NatsflowError]) -> IdRequest:
        req = IdRequest.model_validate_json(data)
        if not TOKEN_RE.match(req.id):
            raise missing(f"no such id {req.id!r}", field="id")
        return req

    async def _by_id_command(self, data: bytes, command: type[_Scoped], *,
                             batch: bool) -> Answer:
        """Send ``command`` (with the request's scope) to the workflow or batch named."""
        req = self._id(data, BatchNotFound if batch else WorkflowNotFound)
        subject = (self.subjects.batch_command if batch else
                   self.subjects.workflow_command)(req.id)
        msg = await self._command(subject, command(namespaces=req.namespaces))
        return self._outcome(msg, BatchReply if batch else WorkflowReply, req.id)

    async def _read_status(self, data: bytes, *, batch: bool) -> Any:
        """Read the record named in the request straight from its KV bucket."""
        missing = BatchNotFound if batch else WorkflowNotFound
        req = self._id(data, missing)
        record = await self._load(req.id, req.namespaces, batch=batch)
        return (BatchReply if batch else WorkflowReply)(id=req.id, status=record.status)

    async def _load(self, key: str, scope: list[str] | None, *, batch: bool) -> Any:
        """The stored record of ``key``, as the scope may see it.

        Raises:
            WorkflowNotFound, BatchNotFound: none, or one outside the scope (the same
                answer, word for word).
        """
        raw, _ = await (self.batches if batch else self.workflows).load(key)
        record: BatchRecord | WorkflowRecord | None = None
        if raw is not None:
            record = (read_record(BatchRecord, raw, key=key) if batch
                      else read_record(WorkflowRecord, raw, key=key))
        if record is None or not visible(record.status.namespace, scope):
            raise (BatchNotFound if batch else WorkflowNotFound)(
                f"no {'batch' if batch else 'workflow'} {key!r}", field="id")
        return record

    async def start_workflow(self, data: bytes) -> Answer:
        """``workflow.start``."""
        return await self._by_id_command(data, StartWorkflow, batch=False)

    async def stop_workflow(self, data: bytes) -> Answer:
        """``workflow.stop``."""
        return await self._by_id_command(data, StopWorkflow, batch=False)

    async def signal_workflow(self, data: bytes) -> Answer:
        """``workflow.signal``: SignalRequest -> WorkflowReply."""
        req = SignalRequest.model_validate_json(data)
        if not TOKEN_RE.match(req.id):
            raise WorkflowNotFound(f"no such id {req.id!r}", field="id")
        msg = await self._command(self.subjects.workflow_command(req.id), SignalWorkflow(
            name=req.name, payload=req.payload, namespaces=req.namespaces))
        return self._outcome(msg, WorkflowReply, req.id)

    async def pause_workflow(self, data: bytes) -> Answer:
        """``workflow.pause``: dispatch nothing new, hold timers (IdRequest)."""
        return await self._by_id_command(data, PauseWorkflow, batch=False)

    async def resume_workflow(self, data: bytes) -> Answer:
        """``workflow.resume`` (IdRequest)."""
        return await self._by_id_command(data, ResumeWorkflow, batch=False)

    async def retry_workflow(self, data: bytes) -> Answer:
        """``workflow.retry``: RetryRequest -> WorkflowReply."""
        req = RetryRequest.model_validate_json(data)
        if not TOKEN_RE.match(req.id):
            raise WorkflowNotFound(f"no such id {req.id!r}", field="id")
        msg = await self._command(self.subjects.workflow_command(req.id),
                                  RetryWorkflow(inputs=req.inputs,
                                                namespaces=req.namespaces))
        return self._outcome(msg, WorkflowReply, req.id)

    async def rerun_workflow(self, data: bytes) -> Answer:
        """``workflow.rerun``: RerunRequest -> WorkflowReply of the new workflow."""
        req = RerunRequest.model_validate_json(data)
        if not TOKEN_RE.match(req.id):
            raise WorkflowNotFound(f"no such id {req.id!r}", field="id")
        old: WorkflowRecord = await self._load(req.id, req.namespaces, batch=False)
        cfg = old.config  # its namespace too: the new workflow is in the old one's
        reuse: dict[str, Any] = {}
        if req.from_step is not None:
            ids = {s.id for s in cfg.steps}
            if req.from_step not in ids:
                raise ValidationFailed(f"no step {req.from_step!r} in workflow {req.id}",
                                       field="from_step")
            ancestors = ancestors_of(cfg)
            again = {sid for sid in ids if req.from_step in ancestors[sid]} | {req.from_step}
            reuse = {s.id: s.output for s in old.status.steps
                     if s.id not in again and s.state == StepState.SUCCEEDED
                     and not s.compensates}
        try:
            config = WorkflowConfig.model_validate({
                **cfg.model_dump(exclude_none=True), "id": req.new_id or new_id(),
                "input": old.status.input if req.input is None else req.input,
                "start": True})
        except ValidationError as exc:
            raise validation_failed(exc) from None
        _check_config(config, field="input")
        assert config.id is not None
        cmd = CreateWorkflow(config=config, fingerprint=fingerprint(config), reuse=reuse,
                             trace=_request_trace.get(),
                             rerun_of=req.id)
        msg = await self._command(self.subjects.workflow_command(config.id), cmd)
        return self._outcome(msg, WorkflowReply, config.id, creating=True)

    async def get(self, data: bytes) -> WorkflowReply:
        """``workflow.get``."""
        reply: WorkflowReply = await self._read_status(data, batch=False)
        return reply

    # -- batches --------------------------------------------------------------------
    async def create_batch(self, data: bytes) -> Answer:
        """``batch.create``: BatchConfig -> BatchReply."""
        req = CreateBatchRequest.model_validate_json(data)
        check_may_create(req.namespace, req.namespaces)
        config = req.batch_config()
        bid = config.id or new_id()
        # Every member is a workflow within the config limit: the largest input makes
        # the largest config.
        largest = max(range(len(config.inputs)), key=lambda i: len(_INPUT.dump_json(
            config.inputs[i])))
        try:  # the template must make a valid workflow
            member = config.workflow.config_for(
                workflow_id=f"{bid}-{largest}", input=config.inputs[largest], batch_id=bid,
                namespace=config.namespace)
            check_literal_subjects(member, policy=self.egress, subjects=self.subjects)
        except (InvalidGraph, ValidationFailed) as exc:
            exc.field = f"workflow.{exc.field}" if exc.field else "workflow"
            raise
        except ValidationError as exc:
            raise validation_failed(exc, loc_prefix=("workflow",)) from None
        _check_config(member, field=f"inputs.{largest}")
        config = config.model_copy(update={"id": bid})
        cmd = CreateBatch(config=config, fingerprint=fingerprint(config))
        msg = await self._command(self.subjects.batch_command(bid), cmd)
        return self._outcome(msg, BatchReply, bid, creating=True)

    async def get_batch(self, data: bytes) -> BatchReply:
        """``batch.get``."""
        reply: BatchReply = await self._read_status(data, batch=True)
        return reply

    async def stop_batch(self, data: bytes) -> Answer:
        """``batch.stop``."""
        return await self._by_id_command(data, StopBatch, batch=True)
