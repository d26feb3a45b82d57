"""The workflow list: an index service holding every workflow's summary, newest first.

The engine stores each workflow's list line (:class:`WorkflowSummary`) in the summaries
bucket whenever its state changes. The index service (``natsflow index``, its own
process so that the orchestrator's memory stays flat however many workflows finish)
watches that bucket, keeps the lines sorted by creation time, and answers
``<prefix>.api.workflow.list``: a filtered page is a scan from the cursor that stops
after ``limit`` matches, with no round trip to NATS. Run several for availability; each
keeps its own copy (a NATS micro service queue group shares the requests).

A request's ``namespaces`` scope filters both: a list never shows, and a bulk operation
never touches, a workflow outside it (the bulk's calls carry the scope on, too).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from nats.aio.client import Client
from nats.js.kv import KeyValue
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from pydantic import ValidationError

from contracts import __version__
from contracts.errors import NatsflowError, ValidationFailed, validation_failed
from contracts.messages import BulkRequest, BulkResult, ListWorkflowsRequest, WorkflowList
from contracts.models import WorkflowSummary
from contracts.namespaces import narrow, visible
from contracts.operations import (
    WORKFLOW_BULK,
    WORKFLOW_LIST,
    Operation,
    Server,
    endpoints,
    error_reply,
)
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings, connect
from transport.streams import Topology, ensure_bucket, patiently

__all__ = ["IndexService", "WorkflowIndex", "decode_cursor", "encode_cursor"]

log = logging.getLogger("natsflow.index")


def _sort_key(s: WorkflowSummary) -> tuple[float, str]:
    # Newest first: negate the time; the id breaks ties.
    return (-s.created_at.timestamp(), s.id)


def encode_cursor(key: tuple[float, str]) -> str:
    """An opaque cursor for the line after ``key``."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The sort key a cursor stands for.

    Raises:
        ValidationFailed: not a cursor we gave out.
    """
    try:
        t, wid = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(t), str(wid)
    except (ValueError, TypeError):
        raise ValidationFailed("not a cursor of this list", field="cursor") from None


class WorkflowIndex:
    """Summaries of every workflow, kept in memory from a KV watch."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._by_id: dict[str, WorkflowSummary] = {}
        self._keys: list[tuple[float, str]] = []  # sorted, newest first
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    async def start(self) -> None:
        """Load every summary, then follow changes in the background."""
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            try:
                # Not the watcher's "initial values done" marker: nats-py can send it
                # before the values (see kvscan). Ready once the stream's last message
                # at the start has come through, which the per-key watch always sends.
                last = (await self.kv.status()).stream_info.state.last_seq
                if not last:
                    self.ready.set()
                watcher = await self.kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        continue
                    if entry.operation in ("DEL", "PURGE"):
                        self._drop(entry.key)
                    else:
                        self._put(entry.value or b"")
                    if entry.revision is not None and entry.revision >= last:
                        self.ready.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the workflow index lost its watch; starting again")
                await asyncio.sleep(1.0)

    def _put(self, data: bytes) -> None:
        try:
            s = WorkflowSummary.model_validate_json(data)
        except ValidationError:
            return
        old = self._by_id.get(s.id)
        if old is None:
            key = _sort_key(s)
            self._keys.insert(bisect.bisect_left(self._keys, key), key)
        self._by_id[s.id] = s

    def _drop(self, wid: str) -> None:
        old = self._by_id.pop(wid, None)
        if old is not None:
            key = _sort_key(old)
            i = bisect.bisect_left(self._keys, key)
            if i < len(self._keys) and self._keys[i] == key:
                del self._keys[i]

    def _after(self, cursor: str | None) -> Iterator[WorkflowSummary]:
        start = 0
        if cursor is not None:
            start = bisect.bisect_right(self._keys, decode_cursor(cursor))
        for _, wid in self._keys[start:]:
            yield self._by_id[wid]

    async def query(self, q: ListWorkflowsRequest, *, wait: float = 10.0) -> tuple[
            list[WorkflowSummary], str | None]:
        """A page of summaries matching ``q`` and the cursor of the next page (or None)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), wait)
        states = set(q.state)
        after = q.created_after.timestamp() if q.created_after else None
        before = q.created_before.timestamp() if q.created_before else None
        page: list[WorkflowSummary] = []
        for s in self._after(q.cursor):
            t = s.created_at.timestamp()
            if before is not None and t >= before:
                continue
            if after is not None and t <= after:
                break  # newest first: everything further is older still
            if states and s.state not in states:
                continue
            if q.name is not None and s.name != q.name:
                continue
            if q.batch_id is not None and s.batch_id != q.batch_id:
                continue
            if q.namespace is not None and s.namespace != q.namespace:
                continue
            if not visible(s.namespace, q.namespaces):
                continue
            if q.labels and any(s.labels.get(k) != v for k, v in q.labels.items()):
                continue
            page.append(s)
            if len(page) > q.limit:
                break
        more = len(page) > q.limit
        page = page[:q.limit]
        cursor = encode_cursor(_sort_key(page[-1])) if more and page else None
        return page, cursor


class IndexService:
    """The ``<prefix>-index`` micro service answering ``workflow.list``.

    Args:
        settings: Where NATS is and the deployment prefix.
        nc: An existing connection (else one is made and closed by this service).
    """

    def __init__(self, settings: NatsSettings, *, nc: Client | None = None,
                 replicas: int = 1) -> None:
        self.settings = settings
        self.subjects = settings.subjects
        self.nc = nc
        self._owns_nc = nc is None
        self.replicas = replicas
        self.index: WorkflowIndex | None = None
        self._service: Service | None = None

    async def start(self) -> None:
        """Connect, load the index, register the endpoint."""
        if self.nc is None:
            self.nc = await connect(self.settings, name="natsflow-index", timeout=None)
        js = self.nc.jetstream()
        config = Topology(self.subjects, replicas=self.replicas).summaries_kv()
        # The orchestrator's bucket: bound to, and made only if missing (and allowed).
        kv = await patiently(f"the {config.bucket} bucket", lambda: ensure_bucket(js, config))
        self.index = WorkflowIndex(kv)
        await self.index.start()
        self._service = await add_service(self.nc, ServiceConfig(
            name=self.subjects.index_service_name, version=__version__,
            description="natsflow workflow list", metadata={"prefix": self.subjects.prefix}))
        handlers: dict[Operation[Any, Any], Callable[[bytes], Awaitable[str]]] = {
            WORKFLOW_LIST: self._list, WORKFLOW_BULK: self._bulk}
        for op, fn in endpoints(Server.INDEX, handlers):
            await self._service.add_endpoint(EndpointConfig(
                name=op.endpoint, subject=self.subjects.api(op.name),
                handler=self._handler(fn)))
        await self.nc.flush()

    async def _list(self, data: bytes) -> str:
        assert self.index is not None
        query = ListWorkflowsRequest.model_validate_json(data or b"{}")
        items, cursor = await self.index.query(query)
        return WorkflowList(items=items, next_cursor=cursor).model_dump_json(exclude_none=True)

    async def _bulk(self, data: bytes) -> str:
        """Select by the filter, then call the public API for each (no back door)."""
        assert self.index is not None and self.nc is not None
        req = BulkRequest.model_validate_json(data)
        ids: list[str] = []
        scope = narrow(req.namespaces, req.filter.namespaces)
        query = req.filter.model_copy(update={"cursor": None, "limit": 500,
                                              "namespaces": scope})
        while True:
            items, cursor = await self.index.query(query)
            ids += [w.id for w in items]
            if len(ids) > req.max_workflows:
                raise ValidationFailed(
                    f"the filter selects more than {req.max_workflows} workflows; narrow it "
                    "or raise max_workflows", field="max_workflows")
            if cursor is None:
                break
            query = query.model_copy(update={"cursor": cursor})
        result = BulkResult(operation=req.operation, dry_run=req.dry_run, matched=len(ids),
                            ids=ids[:1000])
        if req.dry_run:
            return result.model_dump_json()
        client = NatsflowClient(self.nc, self.subjects)
        calls = {"stop": client.stop, "pause": client.pause, "resume": client.resume,
                 "retry": client.retry}
        op = calls[req.operation]
        gate = asyncio.Semaphore(64)

        async def one(wid: str) -> None:
            async with gate:
                try:
                    # Scoped again: the engine checks it on the record it applies to.
                    await op(wid, namespaces=scope)
                    result.done += 1
                except NatsflowError as err:
                    result.refused[wid] = err.code

        await asyncio.gather(*(one(wid) for wid in ids))
        return result.model_dump_json()

    def _handler(self, fn: Callable[[bytes], Awaitable[str]]
                 ) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            try:
                body = await fn(req.data)
            except ValidationError as exc:
                data, headers = error_reply(validation_failed(exc))
                await req.respond(data, headers=headers)
                return
            except NatsflowError as err:
                data, headers = error_reply(err)
                await req.respond(data, headers=headers)
                return
            await req.respond(body.encode())

        return handle

    async def stop(self) -> None:
        """Deregister and stop following."""
        if self._service is not None:
            await self._service.stop()
        if self.index is not None:
            await self.index.stop()
        if self._owns_nc and self.nc is not None:
            await self.nc.close()

    async def run(self) -> None:
        """Start, then serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
