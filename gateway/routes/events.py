"""Live event streams: Server-Sent Events of workflow status events.

``GET /workflows/{id}/events`` replays one workflow's events from the first (or after
``Last-Event-ID`` / ``?after=``) and follows them live until the terminal one; ``GET
/events`` follows every workflow's events matching a subject-style filter and never
ends. Both read the events stream through :class:`natsflow.client.NatsflowClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import StreamingResponse

from contracts.errors import ValidationFailed
from contracts.headers import LAST_EVENT_ID_HEADER
from contracts.models import Event

from .._deps import Heartbeat, Namespaces, Nats
from .._problems import problem_responses

__all__ = ["HEARTBEAT_SECONDS", "router", "sse_frame"]

router = APIRouter(tags=["workflows"])

#: How often an idle stream sends a ``: keep-alive`` comment, so proxies keep it open.
HEARTBEAT_SECONDS: Final = 15.0
_SSE: Final = "text/event-stream"
_KEEP_ALIVE: Final = b": keep-alive\n\n"
# Proxies (nginx) buffer responses unless told not to; caches must never keep a stream.
_HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_RESPONSE: Final[dict[int | str, dict[str, Any]]] = {200: {
    "content": {_SSE: {"schema": {"type": "string"}}},
    "description": "Server-Sent Events; each `data:` is an Event."}}
_T = TypeVar("_T")

_WorkflowId = Annotated[str, Path(min_length=1, max_length=128, description="Workflow id.")]
_LastEventId = Annotated[int | None, Header(
    alias=LAST_EVENT_ID_HEADER, ge=0,
    description="Resume after this `id:` (sent by EventSource when it reconnects).")]


def sse_frame(event_id: int, event: Event) -> bytes:
    """One SSE message: ``id:`` the given id, ``event:`` the type, ``data:`` the Event."""
    return (f"id: {event_id}\nevent: {event.type}\n"
            f"data: {event.model_dump_json()}\n\n").encode()


async def _next(it: AsyncIterator[_T]) -> _T:
    return await anext(it)


async def _with_heartbeats(source: AsyncIterator[_T], interval: float,
                           ) -> AsyncIterator[_T | None]:
    """``source``'s items, and ``None`` whenever ``interval`` seconds pass without one.

    The pending ``anext`` is kept across heartbeats rather than cancelled, so the source
    is never interrupted mid-item.
    """
    pending: asyncio.Future[_T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next(source))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


async def _frames(events: AsyncIterator[tuple[int, Event]], heartbeat: float,
                  ) -> AsyncIterator[bytes]:
    async for item in _with_heartbeats(events, heartbeat):
        yield _KEEP_ALIVE if item is None else sse_frame(*item)


def _stream(events: AsyncIterator[tuple[int, Event]], heartbeat: float) -> StreamingResponse:
    return StreamingResponse(_frames(events, heartbeat), media_type=_SSE, headers=_HEADERS)


@router.get("/workflows/{workflow_id}/events", response_class=StreamingResponse,
            summary="A workflow's events, replayed then live (SSE)",
            responses={**_SSE_RESPONSE, **problem_responses(400, 404, 503)})
async def workflow_events(
    workflow_id: _WorkflowId,
    nats: Nats,
    namespaces: Namespaces,
    heartbeat: Heartbeat,
    last_event_id: _LastEventId = None,
    after: Annotated[int, Query(ge=0, description=(
        "Start after this event seq (exclusive); `Last-Event-ID` wins."))] = 0,
) -> StreamingResponse:
    """Server-Sent Events of the workflow's status events from the first (or after
    `Last-Event-ID` / `after`), then live; the stream ends after the terminal event.

    `id:` is the event's `seq` (per workflow, gap-free), `event:` its type, `data:`
    the Event JSON. Idle streams get a `: keep-alive` comment every 15 s.
    """
    client = nats.client()
    # 404 before the stream starts, also for a workflow outside the key's namespaces
    # (a workflow never changes namespace: once checked is enough).
    await client.get(workflow_id, namespaces=namespaces)
    start = after if last_event_id is None else last_event_id

    async def events() -> AsyncIterator[tuple[int, Event]]:
        async with aclosing(client.watch(workflow_id, after=start)) as watched:
            async for event in watched:
                yield event.seq, event

    return _stream(events(), heartbeat)


@router.get("/events", response_class=StreamingResponse,
            summary="Every workflow's events matching a filter, live (SSE)",
            responses={**_SSE_RESPONSE, **problem_responses(400, 503)})
async def all_events(
    nats: Nats,
    namespaces: Namespaces,
    heartbeat: Heartbeat,
    subject: Annotated[str, Query(max_length=512, description=(
        "Filter over `<workflow_id>.<kind>.<what>`: tokens, `*` and a final `>`, "
        "e.g. `*.workflow.failed`."))] = ">",
    deliver: Annotated[str, Query(pattern="^(new|all)$", description=(
        "`new`: from now; `all`: from the first stored event."))] = "new",
    last_event_id: _LastEventId = None,
) -> StreamingResponse:
    """Server-Sent Events of every workflow's events matching `subject`; never ends.

    `id:` is the event's position in the events stream (not its per-workflow
    `seq`), so a reconnecting EventSource resumes after it with `Last-Event-ID`.
    Only events of workflows in the API key's namespaces are sent.
    """
    client = nats.client()
    try:
        subject_filter = client.subjects.events_matching(subject)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="subject") from None
    await client.require_events_stream()
    return _stream(client.event_feed(subject_filter, deliver_all=deliver == "all",
                                     after_stream_seq=last_event_id or 0,
                                     namespaces=namespaces), heartbeat)
