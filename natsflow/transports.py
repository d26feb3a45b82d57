"""How a :class:`~natsflow.client.NatsflowClient` reaches natsflow: one transport per wire.

httpx's model: one client, pluggable transports. The client builds each request from the
operation table (:mod:`contracts.operations`) and hands it to its :class:`Transport`:

* :class:`NatsTransport` (the default): request/reply on ``<prefix>.api.<operation>``,
  a workflow's events from the events stream. Everything natsflow runs uses it.
* :class:`HttpTransport`: the same operations over the gateway's REST API, each by its
  :class:`~contracts.http_routes.HttpRoute` (the table says which route serves it and how
  the request maps onto it), a workflow's events from its SSE route. For a deployment
  whose NATS is out of reach but whose gateway is (the CLI's ``--gateway``).

Either way a call answers the same reply model, or raises the same natsflow error: a
NATS error reply and a problem document (:func:`error_from_problem`) carry the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import quote

import httpx
import nats.errors
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ValidationError

from contracts.errors import (
    EngineTimeout,
    ErrorInfo,
    InvalidRequest,
    NatsflowError,
    PayloadTooLarge,
    Unavailable,
    WorkflowNotFound,
    error_from_info,
)
from contracts.http_routes import HttpRoute, ReplyShape, ScopeBy
from contracts.messages import IdRequest, WorkflowReply
from contracts.models import EVENT_TERMINAL, TRUSTED, WORKFLOW_TERMINAL, Event, WorkflowStatus
from contracts.operations import WORKFLOW_GET, Operation, Server, reply_error
from contracts.subjects import Subjects
from transport.tracing import TraceContext, inject

__all__ = ["WORKFLOW_EVENTS", "HttpTransport", "NatsTransport", "Transport",
           "error_from_problem", "stream_end"]

_A = TypeVar("_A", bound=BaseModel)

#: The gateway's SSE route of one workflow's events (a stream, not an operation).
WORKFLOW_EVENTS: Final = HttpRoute("GET", "/workflows/{id}/events", query={"after": "after"})


class Transport(Protocol):
    """What carries a client's calls (see the module docstring)."""

    async def request(self, op: Operation[Any, Any], body: BaseModel, reply: type[_A], *,
                      trace: TraceContext | None, timeout: float) -> _A:
        """Call ``op`` with ``body``; its answer as ``reply``, or the error it carries.

        Raises:
            NatsflowError: the error the answer carries, or :class:`Unavailable` /
                :class:`EngineTimeout` when nobody answers.
        """
        ...

    def events(self, workflow_id: str, *, after: int, idle_timeout: float | None
               ) -> AsyncGenerator[Event, None]:
        """The workflow's events after ``after`` in ``seq`` order, each once, then live,
        ending where its stream ends (:func:`stream_end`), or when none comes for
        ``idle_timeout`` seconds (None: wait on)."""
        ...

    async def aclose(self) -> None:
        """Release what the transport opened itself."""
        ...


# -- NATS -------------------------------------------------------------------------------

class NatsTransport:
    """Operations over NATS request/reply, events from the events stream.

    Args:
        nc: A connected NATS client (the caller's: :meth:`aclose` leaves it open).
        subjects: The deployment's names.
        timeout: Seconds to wait for the status reads :meth:`events` makes.
    """

    def __init__(self, nc: Client, subjects: Subjects, *, timeout: float = 10.0) -> None:
        self.nc = nc
        self.subjects = subjects
        self.timeout = timeout

    async def request(self, op: Operation[Any, Any], body: BaseModel, reply: type[_A], *,
                      trace: TraceContext | None, timeout: float) -> _A:
        """Request ``<prefix>.api.<op>`` (see :meth:`Transport.request`)."""
        nc = self.nc
        if not nc.is_connected:
            raise Unavailable("not connected to NATS")
        # The current span's context when tracing is on, else the one handed in.
        headers = inject({}, trace) or None
        try:
            msg = await nc.request(self.subjects.api(op.name), body.model_dump_json().encode(),
                                   timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise _no_service(op) from None
        except nats.errors.MaxPayloadError:
            raise PayloadTooLarge(f"{op.name} request is larger than the NATS server's "
                                  f"max_payload ({nc.max_payload} bytes)") from None
        except nats.errors.TimeoutError:
            raise EngineTimeout(f"no answer to {op.name} within {timeout}s") from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError) as exc:
            raise Unavailable(f"NATS connection lost: {exc}") from None
        err = reply_error(msg.data, msg.headers)
        if err is not None:
            raise err
        # Answers come from natsflow, which checked them: no second graph check.
        return reply.model_validate_json(msg.data, context={TRUSTED: True})

    async def events(self, workflow_id: str, *, after: int, idle_timeout: float | None
                     ) -> AsyncGenerator[Event, None]:
        """An ordered consumer on the workflow's events (see :meth:`Transport.events`).

        Every run is replayed: a retried workflow's stream goes on past an earlier run's
        terminal event, so the end is asked of its stored status on reaching one.
        """
        last = after
        end: int | None = None  # the seq the stored status said the stream ends at
        feed = self.feed(self.subjects.events_of(workflow_id), deliver_all=True,
                         after_stream_seq=0, idle_timeout=idle_timeout)
        try:
            async for _, event in feed:
                if event.seq > last:  # else seen already, or before ``after``
                    last = event.seq
                    yield event
                # Asked again on reaching the end it gave: a retry may have come since.
                if event.type in EVENT_TERMINAL or (end is not None and event.seq >= end):
                    end = await self._stream_end(workflow_id)
                    if end is not None and last >= end:
                        return
        finally:
            await feed.aclose()

    async def _stream_end(self, workflow_id: str) -> int | None:
        try:
            got = await self.request(WORKFLOW_GET, IdRequest(id=workflow_id), WorkflowReply,
                                     trace=None, timeout=self.timeout)
        except WorkflowNotFound:
            return 0  # gone (its record removed): nothing more will come
        return stream_end(got.status)

    async def feed(self, subject_filter: str, *, deliver_all: bool, after_stream_seq: int,
                   idle_timeout: float | None) -> AsyncGenerator[tuple[int, Event], None]:
        """Every event on ``subject_filter`` with its events-stream sequence (see
        :meth:`~natsflow.client.NatsflowClient.event_feed`)."""
        if after_stream_seq > 0:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=after_stream_seq + 1)
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL if deliver_all else DeliverPolicy.NEW)
        sub = await self.nc.jetstream().subscribe(
            subject_filter, stream=self.subjects.events_stream, ordered_consumer=True,
            config=config)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_timeout)
                except nats.errors.TimeoutError:
                    return
                try:
                    event = Event.model_validate_json(msg.data)
                except ValidationError:
                    continue
                yield msg.metadata.sequence.stream, event
        finally:
            await sub.unsubscribe()

    async def aclose(self) -> None:
        """Nothing: the connection is the caller's."""


def _no_service(op: Operation[Any, Any]) -> Unavailable:
    """Nobody answers ``op``: name the service that should, and how to run it."""
    if op.server is Server.INDEX:
        return Unavailable(f"no index is running: {op.name} is answered by the index "
                           f"service (`natsflow index`), not the orchestrator",
                           details={"service": "index"})
    return Unavailable("no orchestrator is running", details={"service": "orchestrator"})


def stream_end(status: WorkflowStatus | None) -> int | None:
    """The ``seq`` a workflow's event stream ends at, as far as its stored status says.

    A stream ends at the last event of a terminal workflow. A retry starts another run
    after a terminal event, in the same stream, so a terminal event ends the stream only
    when it is the last one stored (a retry still queued in the inbox, not yet taken by
    the engine, is not seen). Every follower of a workflow's events (the client's
    :meth:`~natsflow.client.NatsflowClient.watch` and
    :meth:`~natsflow.client.NatsflowClient.wait`, the CLI, the gateway's SSE) stops by
    this rule.

    Args:
        status: The workflow's stored status (None: no status yet).

    Returns:
        The ``seq`` of its last event if it is terminal, else None (more will come).
    """
    if status is None or status.state not in WORKFLOW_TERMINAL:
        return None
    return status.last_seq


# -- HTTP -------------------------------------------------------------------------------

class HttpTransport:
    """Operations over a natsflow gateway's REST API, each by its operation's ``http``
    route; events from the gateway's SSE.

    The gateway's API key is the caller's scope; a narrower ``namespaces`` on a request
    is kept as its route says (:class:`~contracts.http_routes.ScopeBy`).

    Args:
        base_url: The gateway's URL, e.g. ``http://127.0.0.1:8000``.
        api_key: The API key to send (``Authorization: Bearer``), if any.
        http: An ``httpx.AsyncClient`` to send with (its ``base_url`` the gateway's),
            e.g. over ``httpx.ASGITransport``; by default one of its own, closed by
            :meth:`aclose`.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owned = http is None
        self.http = http if http is not None else httpx.AsyncClient(base_url=self.base_url)
        self._auth = auth

    async def request(self, op: Operation[Any, Any], body: BaseModel, reply: type[_A], *,
                      trace: TraceContext | None, timeout: float) -> _A:
        """Send ``op``'s route (see :meth:`Transport.request`).

        Raises:
            InvalidRequest: ``op`` has no REST route, or a scope its route cannot keep.
        """
        route = op.http
        if route is None:
            raise InvalidRequest(f"{op.name} is not served by the gateway's REST API: "
                                 "call it over NATS")
        scope: list[str] | None = getattr(body, "namespaces", None)
        params = _query(route, body)
        if scope is not None:
            if route.scope is ScopeBy.QUERY:
                params.append(("namespace", _one(op, scope, getattr(body, "namespace", None))))
            elif route.scope is ScopeBy.WORKFLOW:
                await self._check_scope(_field(body, "id"), scope, timeout)
            elif route.scope is None:
                raise InvalidRequest(f"{op.name} over the gateway takes no `namespaces`: "
                                     "the API key is the scope", field="namespaces")
        dumped = body.model_dump(mode="json", include=set(route.headers))
        headers = {name: str(dumped[f]) for f, name in route.headers.items()
                   if dumped.get(f) is not None}
        code, data = await self._send(route.method, _path(route, body), params=params,
                                      headers=inject(headers, trace), json=route.body_of(body),
                                      timeout=timeout)
        answer = _read(route.reply, reply, code, data)
        if scope is not None and route.scope is ScopeBy.REPLY:
            _within(answer, scope, WorkflowNotFound(
                f"no such id {_field(body, 'id')!r}", field="id"))
        return answer

    async def _check_scope(self, workflow_id: str, scope: list[str], timeout: float) -> None:
        got = await self.request(WORKFLOW_GET, IdRequest(id=workflow_id), WorkflowReply,
                                 trace=None, timeout=timeout)
        # As the engine answers a command on a workflow it does not see: no field named.
        _within(got, scope, WorkflowNotFound("no such workflow"))

    async def _send(self, method: str, path: str, *, params: list[tuple[str, str]],
                    headers: dict[str, str], json: Any, timeout: float) -> tuple[int, Any]:
        try:
            resp = await self.http.request(method, path, params=httpx.QueryParams(tuple(params)),
                                           headers={**self._auth, **headers}, json=json,
                                           timeout=timeout)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the gateway at {self.base_url}: {exc}") from None
        data = _json(resp)
        if resp.is_success:
            return resp.status_code, data
        raise error_from_problem(resp.status_code, data)

    async def events(self, workflow_id: str, *, after: int, idle_timeout: float | None
                     ) -> AsyncGenerator[Event, None]:
        """The gateway's SSE of the workflow's events (see :meth:`Transport.events`)."""
        params = _query(WORKFLOW_EVENTS, _EventsQuery(after=after))
        try:
            async with self.http.stream(
                    WORKFLOW_EVENTS.method, _path(WORKFLOW_EVENTS, IdRequest(id=workflow_id)),
                    params=httpx.QueryParams(tuple(params)), headers=self._auth,
                    timeout=httpx.Timeout(15.0, read=None)) as resp:
                if not resp.is_success:
                    await resp.aread()
                    raise error_from_problem(resp.status_code, _json(resp))
                lines = aiter(resp.aiter_lines())
                while True:
                    try:
                        line = await asyncio.wait_for(anext(lines), idle_timeout)
                    except (StopAsyncIteration, TimeoutError):
                        return
                    if line.startswith("data:"):
                        yield Event.model_validate_json(line[5:])
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the gateway at {self.base_url}: {exc}") from None

    async def aclose(self) -> None:
        """Close the HTTP client, if it is the transport's own."""
        if self._owned:
            await self.http.aclose()


class _EventsQuery(BaseModel):
    after: int


def _field(body: BaseModel, name: str) -> str:
    value: str = getattr(body, name)
    return value


def _path(route: HttpRoute, body: BaseModel) -> str:
    return route.path.format(**{f: quote(str(getattr(body, f)), safe="")
                                for f in route.path_fields})


def _query(route: HttpRoute, body: BaseModel) -> list[tuple[str, str]]:
    """The query parameters of ``route`` for ``body`` (unset fields left out)."""
    dumped = body.model_dump(mode="json", include=set(route.query), exclude_none=True,
                             exclude_defaults=True)
    params: list[tuple[str, str]] = []
    for field, name in route.query.items():
        value = dumped.get(field)
        items = (value if isinstance(value, list)
                 else [f"{k}:{v}" for k, v in value.items()] if isinstance(value, dict)
                 else [] if value is None else [value])
        params.extend((name, str(v).lower() if isinstance(v, bool) else str(v))
                      for v in items)
    return params


def _one(op: Operation[Any, Any], scope: Sequence[str], namespace: str | None) -> str:
    # The query carries one namespace: a scope of one, or a filter inside the scope.
    if namespace is not None and namespace in scope:
        return namespace
    if len(scope) == 1 and namespace is None:
        return scope[0]
    raise InvalidRequest(f"{op.name} over the gateway takes a scope of one namespace",
                         field="namespaces")


def _within(answer: BaseModel, scope: Sequence[str], missing: WorkflowNotFound) -> None:
    """Raise ``missing`` for a workflow outside ``scope``, as the orchestrator does."""
    status = getattr(answer, "status", None)
    if isinstance(status, WorkflowStatus) and status.namespace not in scope:
        raise missing


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _read(shape: ReplyShape, reply: type[_A], code: int, data: Any) -> _A:
    """The gateway's answer as ``reply``, by the route's :class:`ReplyShape`; an answer
    that is not one (a URL that is not a natsflow gateway) is :class:`Unavailable`."""
    try:
        return _shaped(shape, reply, code, data)
    except ValidationError as exc:
        raise Unavailable(f"the answer from the gateway is not a natsflow {reply.__name__}: "
                          f"{exc.errors()[0]['msg'] if exc.errors() else exc}") from None


def _shaped(shape: ReplyShape, reply: type[_A], code: int, data: Any) -> _A:
    if shape is ReplyShape.BODY:
        return reply.model_validate(data, context={TRUSTED: True})
    created = shape is ReplyShape.STATUS_CREATED and code != 200
    if isinstance(data, dict) and set(data) == {"id"}:  # accepted, no status yet
        return reply.model_validate({**data, "created": created})
    workflow_id = data.get("id") if isinstance(data, dict) else None
    return reply.model_validate({"id": workflow_id, "created": created, "status": data},
                                context={TRUSTED: True})


def error_from_problem(http_status: int, data: Any) -> NatsflowError:
    """An RFC 9457 problem document as the natsflow error it carries (its ``code``), or,
    for one without a code, an error by the HTTP status alone."""
    if isinstance(data, dict):
        fields = {k: v for k, v in data.items() if k in ErrorInfo.model_fields}
        fields.setdefault("message", data.get("detail") or data.get("title") or "error")
        if "code" in fields:
            try:
                return error_from_info(ErrorInfo.model_validate(fields))
            except ValidationError:
                pass
    message = f"gateway answered HTTP {http_status}"
    if http_status >= 500:
        return Unavailable(message)
    return InvalidRequest(message)
