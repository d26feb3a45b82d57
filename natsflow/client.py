"""The reference client of natsflow's API, used by the gateway, the CLI and users.

One client, pluggable transports (:mod:`natsflow.transports`). Over NATS (the default):
request/reply on ``<prefix>.api.*`` (the orchestrator's micro service), a JetStream
publish on ``<prefix>.submit``, and an ordered consumer on the events stream. Through a
gateway (:class:`~natsflow.transports.HttpTransport`): the same operations over its REST
routes, and a workflow's events over its SSE.

Namespaces: a workflow, batch or definition is created in the namespace its config (or
``namespace`` argument) names. Every method that reads or touches what exists takes
``namespaces``, the caller's scope (see :mod:`contracts.namespaces`): None (the default)
is unrestricted; a list makes anything outside it answer as missing
(:class:`~contracts.errors.WorkflowNotFound` and the like), filters lists, and refuses a
create outside it (:class:`~contracts.errors.NamespaceForbidden`). The orchestrator and
the index enforce it; reading events, which comes straight from the events stream, is
checked here against the workflow's status first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from contracts.definitions import (
    Definition,
    DefinitionInfo,
    DefinitionList,
    DefinitionReply,
    GetDefinitionRequest,
    ListDefinitionsRequest,
    PutDefinitionRequest,
)
from contracts.errors import (
    EngineTimeout,
    InvalidRequest,
    Unavailable,
    WorkflowNotFound,
    validation_failed,
)
from contracts.flow import LimitList, ListLimitsRequest
from contracts.messages import (
    BatchConfig,
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
from contracts.models import (
    Event,
    WorkflowConfig,
)
from contracts.namespaces import narrow
from contracts.operations import (
    BATCH_CREATE,
    BATCH_GET,
    BATCH_STOP,
    DEFINITION_GET,
    DEFINITION_LIST,
    DEFINITION_PUT,
    LIMIT_LIST,
    WORKFLOW_BULK,
    WORKFLOW_CREATE,
    WORKFLOW_GET,
    WORKFLOW_LIST,
    WORKFLOW_PAUSE,
    WORKFLOW_RERUN,
    WORKFLOW_RESUME,
    WORKFLOW_RETRY,
    WORKFLOW_SIGNAL,
    WORKFLOW_START,
    WORKFLOW_STOP,
    Operation,
)
from contracts.subjects import Subjects
from natsflow.transports import NatsTransport, Transport, stream_end
from transport.tracing import TraceContext, inject

__all__ = ["NatsflowClient", "stream_end"]

_Q = TypeVar("_Q", bound=BaseModel)
_R = TypeVar("_R", bound=BaseModel)
_A = TypeVar("_A", bound=BaseModel)

#: Workflows whose visibility one scoped event feed remembers (namespaces never change).
_FEED_MEMORY = 4096


def _named(namespace: str | None) -> dict[str, str]:
    # Absent rather than null: the request then reads as it did before namespaces.
    return {} if namespace is None else {"namespace": namespace}


def _scope(namespaces: Sequence[str] | None) -> list[str] | None:
    # A str is a Sequence too: one namespace by mistake must not become its letters.
    if isinstance(namespaces, str):
        raise TypeError("namespaces is a list of namespace names, not one string")
    return None if namespaces is None else list(namespaces)


class NatsflowClient:
    """Calls natsflow: over NATS, or through a gateway (:mod:`natsflow.transports`).

    ``NatsflowClient(nc)`` talks NATS on that connection;
    ``NatsflowClient(HttpTransport(url, api_key=...))`` makes the same calls through a
    gateway's REST API (every operation with a route there, and :meth:`watch` /
    :meth:`events`; :meth:`submit`, :meth:`ping` and :meth:`event_feed` need NATS).

    Args:
        nc: A connected NATS client, or the transport to call through.
        subjects: The deployment's names.
        timeout: Seconds to wait for an API reply.
    """

    def __init__(self, nc: Client | Transport, subjects: Subjects | None = None, *,
                 timeout: float = 10.0) -> None:
        self.subjects = subjects or Subjects()
        self.timeout = timeout
        self.transport: Transport = (NatsTransport(nc, self.subjects, timeout=timeout)
                                     if isinstance(nc, Client) else nc)

    @property
    def nc(self) -> Client:
        """The NATS connection.

        Raises:
            InvalidRequest: the client goes through a gateway, not NATS.
        """
        return self._nats().nc

    def _nats(self) -> NatsTransport:
        if isinstance(self.transport, NatsTransport):
            return self.transport
        raise InvalidRequest("this call needs NATS; the client goes through the gateway")

    async def aclose(self) -> None:
        """Close what the transport opened itself (a NATS connection is the caller's)."""
        await self.transport.aclose()

    async def _call(self, op: Operation[_Q, _R], body: _Q, *,
                    trace: TraceContext | None = None, timeout: float | None = None) -> _R:
        # Per call, never on self: one client serves every request of a gateway.
        return await self.transport.request(
            op, body, op.reply, trace=trace,
            timeout=self.timeout if timeout is None else timeout)

    async def _call_as(self, op: Operation[_Q, Any], body: _Q, reply: type[_A], *,
                       trace: TraceContext | None = None, timeout: float | None = None
                       ) -> _A:
        """Call ``op``, whose answer to this request is ``reply`` (one of its replies)."""
        if reply not in op.replies:
            raise TypeError(f"{op.name} answers {op.replies}, not {reply.__name__}")
        return await self.transport.request(
            op, body, reply, trace=trace, timeout=self.timeout if timeout is None else timeout)

    # -- workflows -------------------------------------------------------------------
    async def create(self, config: WorkflowConfig | dict[str, Any], *,
                     idempotency_key: str | None = None,
                     trace: TraceContext | None = None,
                     namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Create (and, unless ``start`` is false, start) a workflow in the config's
        ``namespace``.

        ``trace``: the W3C trace context the workflow belongs to, when tracing is off
        here (on, the current span's is sent); see :mod:`transport.tracing`.

        Raises:
            ValidationFailed: the config is invalid (each field named), found here or by
                the orchestrator.
            NamespaceForbidden: its namespace is outside ``namespaces``.
        """
        if not isinstance(config, WorkflowConfig):
            try:
                config = WorkflowConfig.model_validate(config)
            except ValidationError as exc:
                raise validation_failed(exc) from None
        req = CreateWorkflowRequest(config=config, idempotency_key=idempotency_key,
                                    namespaces=_scope(namespaces))
        return await self._call(WORKFLOW_CREATE, req, trace=trace)

    async def run(self, definition: str, input: dict[str, Any] | None = None, *,
                  version: int | None = None, workflow_id: str | None = None,
                  labels: dict[str, str] | None = None, start: bool = True,
                  idempotency_key: str | None = None,
                  trace: TraceContext | None = None, namespace: str | None = None,
                  namespaces: Sequence[str] | None = None,
                  priority: int | None = None) -> WorkflowReply:
        """Create a workflow from a stored definition (the latest, or ``version``) of
        ``namespace`` (default: ``default``), in that namespace; at ``priority`` (1 to
        5) instead of the definition's own, if given.

        Raises:
            DefinitionNotFound: no such definition in that namespace.
            NamespaceForbidden: ``namespace`` is outside ``namespaces``.
        """
        req = CreateWorkflowRequest(definition=definition, version=version,
                                    input=input or {}, id=workflow_id, labels=labels or {},
                                    start=start, idempotency_key=idempotency_key,
                                    namespace=namespace, namespaces=_scope(namespaces),
                                    priority=priority)
        return await self._call(WORKFLOW_CREATE, req, trace=trace)

    # -- definitions -----------------------------------------------------------------
    async def put_definition(self, name: str, config: dict[str, Any], *,
                             namespace: str | None = None,
                             namespaces: Sequence[str] | None = None) -> DefinitionReply:
        """Store ``config`` (a WorkflowConfig without id) as the next version of ``name``
        in ``namespace`` (default: ``default``).

        Raises:
            NamespaceForbidden: ``namespace`` is outside ``namespaces``.
        """
        return await self._call(DEFINITION_PUT, PutDefinitionRequest.model_validate(
            {"name": name, "config": config, **_named(namespace),
             "namespaces": _scope(namespaces)}))

    async def get_definition(self, name: str, *, namespace: str | None = None,
                             namespaces: Sequence[str] | None = None) -> DefinitionInfo:
        """A definition's latest version and the list of its versions."""
        return await self._call(DEFINITION_GET, GetDefinitionRequest.model_validate(
            {"name": name, **_named(namespace), "namespaces": _scope(namespaces)}))

    async def get_definition_version(self, name: str, version: int, *,
                                     namespace: str | None = None,
                                     namespaces: Sequence[str] | None = None) -> Definition:
        """One version of a definition."""
        return await self._call_as(DEFINITION_GET, GetDefinitionRequest.model_validate(
            {"name": name, "version": version, **_named(namespace),
             "namespaces": _scope(namespaces)}), Definition)

    async def list_definitions(self, *, namespace: str | None = None,
                               namespaces: Sequence[str] | None = None) -> DefinitionList:
        """Every stored definition with its latest version (of ``namespace`` only, if
        given), by namespace and name."""
        return await self._call(DEFINITION_LIST, ListDefinitionsRequest(
            namespace=namespace, namespaces=_scope(namespaces)))

    async def list_limits(self, *, limit: str | None = None,
                          namespaces: Sequence[str] | None = None) -> LimitList:
        """The concurrency and rate limits in use, with who holds and who waits for their
        permits (only ``limit``, if given; docs/flow-control.md)."""
        return await self._call(LIMIT_LIST, ListLimitsRequest(
            limit=limit, namespaces=_scope(namespaces)))

    async def _by_id(self, op: Operation[IdRequest, WorkflowReply], workflow_id: str,
                     namespaces: Sequence[str] | None) -> WorkflowReply:
        return await self._call(op, IdRequest(id=workflow_id, namespaces=_scope(namespaces)))

    async def start(self, workflow_id: str, *,
                    namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Start a created workflow (no-op on a started one)."""
        return await self._by_id(WORKFLOW_START, workflow_id, namespaces)

    async def get(self, workflow_id: str, *,
                  namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """The workflow's status.

        Raises:
            WorkflowNotFound: no such workflow, or one outside ``namespaces``.
        """
        return await self._by_id(WORKFLOW_GET, workflow_id, namespaces)

    async def stop(self, workflow_id: str, *,
                   namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Stop a workflow: running steps are cancelled and it ends ``stopped``."""
        return await self._by_id(WORKFLOW_STOP, workflow_id, namespaces)

    async def list_workflows(self, query: ListWorkflowsRequest | None = None, *,
                             namespaces: Sequence[str] | None = None, **filters: Any
                             ) -> WorkflowList:
        """A page of workflows, newest first (filters: ListWorkflowsRequest's fields,
        ``namespace`` among them), of the namespaces in ``namespaces`` only."""
        req = query if query is not None else ListWorkflowsRequest.model_validate(filters)
        if namespaces is not None:  # narrowed, never widened, by what the query says
            req = req.model_copy(update={"namespaces": narrow(_scope(namespaces),
                                                              req.namespaces)})
        return await self._call(WORKFLOW_LIST, req)

    async def bulk(self, operation: str, *, dry_run: bool = False,
                   max_workflows: int = 10_000, all_workflows: bool = False,
                   namespaces: Sequence[str] | None = None, **filters: Any) -> BulkResult:
        """Stop, pause, resume or retry every workflow the filters select (index service).

        ``dry_run`` only reports the matches. With no filter at all, ``all_workflows``
        must say that every workflow is meant (every one in ``namespaces``, if given).
        Waits up to a minute (or the client timeout, if longer) for the operations to
        be sent.

        Raises:
            ValidationFailed: no filter and not ``all_workflows``, or both.
        """
        req = BulkRequest.model_validate({
            "operation": operation, "dry_run": dry_run, "max_workflows": max_workflows,
            "all": all_workflows, "filter": ListWorkflowsRequest.model_validate(filters),
            "namespaces": _scope(namespaces)})
        return await self._call(WORKFLOW_BULK, req, timeout=max(self.timeout, 60.0))

    async def pause(self, workflow_id: str, *,
                    namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Pause a running workflow: nothing new starts, timers wait (409 otherwise)."""
        return await self._by_id(WORKFLOW_PAUSE, workflow_id, namespaces)

    async def resume(self, workflow_id: str, *,
                     namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Resume a paused workflow."""
        return await self._by_id(WORKFLOW_RESUME, workflow_id, namespaces)

    async def retry(self, workflow_id: str, *,
                    inputs: dict[str, dict[str, Any]] | None = None,
                    namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Run a failed or stopped workflow again from its unfinished steps."""
        return await self._call(WORKFLOW_RETRY, RetryRequest(
            id=workflow_id, inputs=inputs or {}, namespaces=_scope(namespaces)))

    async def rerun(self, workflow_id: str, *, input: dict[str, Any] | None = None,
                    from_step: str | None = None, new_id: str | None = None,
                    trace: TraceContext | None = None,
                    namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """A new workflow from the same config, in the same namespace (the reply is the
        new one's)."""
        return await self._call(WORKFLOW_RERUN, RerunRequest(
            id=workflow_id, input=input, from_step=from_step, new_id=new_id,
            namespaces=_scope(namespaces)), trace=trace)

    async def signal(self, workflow_id: str, name: str, payload: Any = None, *,
                     namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Send the signal ``name`` to a workflow (a wait step takes it, or it is kept)."""
        return await self._call(WORKFLOW_SIGNAL, SignalRequest(
            id=workflow_id, name=name, payload=payload, namespaces=_scope(namespaces)))

    async def submit(self, config: WorkflowConfig | dict[str, Any], *,
                     trace: TraceContext | None = None) -> int:
        """Fire-and-forget: persist a config on the submit subject; returns its stream seq.

        The orchestrator creates the workflow later; give the config an ``id`` to find it.
        ``trace`` as for :meth:`create`.
        """
        if not isinstance(config, WorkflowConfig):
            config = WorkflowConfig.model_validate(config)
        try:
            ack = await self.nc.jetstream().publish(self.subjects.submit,
                                                    config.model_dump_json().encode(),
                                                    headers=inject({}, trace) or None)
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError) as exc:
            raise Unavailable(f"submit not persisted: {exc!r}") from None
        return ack.seq

    # -- batches ---------------------------------------------------------------------
    async def create_batch(self, config: BatchConfig | dict[str, Any], *,
                           namespaces: Sequence[str] | None = None) -> BatchReply:
        """Create and start a batch, in the config's ``namespace`` (its members too).

        Raises:
            NamespaceForbidden: its namespace is outside ``namespaces``.
        """
        if not isinstance(config, BatchConfig):
            config = BatchConfig.model_validate(config)
        req = CreateBatchRequest.model_construct(**dict(config), namespaces=_scope(namespaces))
        return await self._call(BATCH_CREATE, req)

    async def get_batch(self, batch_id: str, *,
                        namespaces: Sequence[str] | None = None) -> BatchReply:
        """The batch's status.

        Raises:
            BatchNotFound: no such batch, or one outside ``namespaces``.
        """
        return await self._call(BATCH_GET, IdRequest(id=batch_id,
                                                     namespaces=_scope(namespaces)))

    async def stop_batch(self, batch_id: str, *,
                         namespaces: Sequence[str] | None = None) -> BatchReply:
        """Stop a batch and its running members."""
        return await self._call(BATCH_STOP, IdRequest(id=batch_id,
                                                      namespaces=_scope(namespaces)))

    # -- liveness and events ---------------------------------------------------------
    async def ping(self, timeout: float = 1.0, *, service: str | None = None) -> bool:
        """True when at least one instance of ``service`` answers ``$SRV.PING.<service>``.

        ``service`` is a micro service name (default: the orchestrator's,
        ``subjects.service_name``; the index's is ``subjects.index_service_name``).
        """
        name = service or self.subjects.service_name
        try:
            await self.nc.request(f"$SRV.PING.{name}", b"", timeout=timeout)
        except (TimeoutError, nats.errors.Error):
            return False
        return True

    async def watch(self, workflow_id: str, *, after: int = 0,
                    namespaces: Sequence[str] | None = None) -> AsyncGenerator[Event, None]:
        """The workflow's events in ``seq`` order, from the first (or after ``after``),
        then live as they happen, ending after the terminal one.

        Replays from the events stream with an ordered consumer, so a watcher that
        starts after the workflow finished still sees every event and then ends. ``seq``
        has no gaps; a redelivered event is dropped, so each ``seq`` is yielded once.

        Args:
            workflow_id: The workflow to watch (it is not checked to exist: an unknown
                id simply yields nothing until events appear).
            after: Yield only events with ``seq`` above this one, e.g. the last one seen
                before reconnecting.
            namespaces: The caller's scope: a workflow outside it raises
                WorkflowNotFound before any event (then it is checked to exist).
        """
        async with aclosing(self.events(workflow_id, follow=True, after=after,
                                        namespaces=namespaces)) as events:
            async for event in events:
                yield event

    async def events(self, workflow_id: str, *, follow: bool = True,
                     after: int = 0, idle_timeout: float = 0.5,
                     namespaces: Sequence[str] | None = None) -> AsyncGenerator[Event, None]:
        """The workflow's events in ``seq`` order, from the first (or after ``after``).

        Every run is replayed: a retried workflow's stream goes on past an earlier run's
        terminal event. With ``follow`` it waits for new events until the stream ends
        (that is :meth:`watch`; see :func:`stream_end`); without, it also stops when no
        event arrives for ``idle_timeout`` seconds.

        Raises:
            WorkflowNotFound: with ``namespaces``, when the workflow is missing or outside
                them (events carry no namespace: its status says, read first).
        """
        scope = _scope(namespaces)
        if scope is not None:
            await self.get(workflow_id, namespaces=scope)
        stream = self.transport.events(workflow_id, after=after,
                                       idle_timeout=None if follow else idle_timeout)
        async with aclosing(stream):
            async for event in stream:
                yield event

    async def require_events_stream(self) -> None:
        """Raise :class:`Unavailable` unless the events stream exists.

        An orchestrator declares it on start; before any has run, there is nothing to
        read, and an answer that is already streaming could only break off.
        """
        try:
            await self.nc.jetstream().stream_info(self.subjects.events_stream)
        except nats.js.errors.NotFoundError:
            raise Unavailable(
                "the events stream does not exist yet: no orchestrator has started",
                details={"service": "orchestrator",
                         "stream": self.subjects.events_stream}) from None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                nats.errors.ConnectionClosedError) as exc:
            raise Unavailable(f"the events stream cannot be read: {exc!r}") from None

    async def event_feed(self, subject_filter: str, *, deliver_all: bool = False,
                         after_stream_seq: int = 0, idle_timeout: float | None = None,
                         namespaces: Sequence[str] | None = None,
                         ) -> AsyncGenerator[tuple[int, Event], None]:
        """Every event on ``subject_filter`` (see :meth:`Subjects.events_of` and
        :meth:`Subjects.events_matching`) with its events-stream sequence, never ending.

        Args:
            subject_filter: Full subject filter inside the events stream.
            deliver_all: Start from the first stored event instead of from now.
            after_stream_seq: Start after this events-stream sequence (wins over
                ``deliver_all`` when set).
            idle_timeout: Stop when no event arrives for this many seconds.
            namespaces: Only events of workflows in these namespaces (each workflow's
                status is read once, when its first event comes; a workflow whose
                status is gone is left out).

        Yields:
            ``(stream_seq, event)``; messages that are not events are skipped.
        """
        scope = _scope(namespaces)
        feed = self._nats().feed(subject_filter, deliver_all=deliver_all,
                                 after_stream_seq=after_stream_seq, idle_timeout=idle_timeout)
        if scope is None:
            async with aclosing(feed):
                async for item in feed:
                    yield item
            return
        seen: OrderedDict[str, bool] = OrderedDict()  # workflow id -> inside the scope
        async with aclosing(feed):
            async for item in feed:
                wid = item[1].workflow_id
                inside = seen.get(wid)
                if inside is None:
                    try:
                        await self.get(wid, namespaces=scope)
                        inside = True
                    except WorkflowNotFound:
                        inside = False
                    seen[wid] = inside
                    if len(seen) > _FEED_MEMORY:
                        seen.popitem(last=False)
                else:
                    seen.move_to_end(wid)
                if inside:
                    yield item

    async def wait(self, workflow_id: str, *, timeout: float = 60.0,
                   namespaces: Sequence[str] | None = None) -> WorkflowReply:
        """Wait until the workflow is terminal, then return its status.

        A retried workflow has a terminal event per run: waiting goes on past an earlier
        run's end, as :meth:`watch` does.
        """
        async def _until_terminal() -> None:
            async with aclosing(self.watch(workflow_id, namespaces=namespaces)) as events:
                async for _ in events:
                    pass
        try:
            await asyncio.wait_for(_until_terminal(), timeout)
        except TimeoutError:
            raise EngineTimeout(f"workflow {workflow_id} not finished in {timeout}s") from None
        return await self.get(workflow_id, namespaces=namespaces)
