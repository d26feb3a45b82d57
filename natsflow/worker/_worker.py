"""The Worker: registers handlers, then serves their task types from JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.subjects import Subjects
from transport.connect import NatsSettings, connect
from transport.consume import ConsumerStalled
from transport.publish import AckedPublisher, AsyncPublisher
from transport.streams import TASK_ACK_WAIT, Topology, patiently

from ._handler import HandlerFn, TaskHandler
from ._priority import STARVATION_LIMIT, Lanes
from ._serving import MAX_TASK_DELIVERIES, TaskServing, check_limits, check_new_task_type
from ._slots import SlotPool

__all__ = ["Worker"]

log = logging.getLogger("natsflow.worker")

F = TypeVar("F", bound=HandlerFn)

#: Most messages one fetch asks for, whatever the free concurrency.
MAX_FETCH_BATCH = 256
#: Seconds a fetch waits for messages; also how long a stop waits for fetches to end.
FETCH_TIMEOUT = 1.0
#: Seconds the fetch loop rests after an error (e.g. while NATS is reconnecting).
ERROR_PAUSE = 0.5
#: Seconds a graceful stop lets running handlers finish before cancelling them.
STOP_GRACE = 10.0


class Worker:
    """Runs task handlers for natsflow workflows.

    Example::

        worker = Worker(concurrency=64)

        @worker.task("demo.echo")
        async def echo(ctx: TaskContext, data: EchoIn) -> EchoOut:
            return EchoOut(text=data.text)

        await worker.run(NatsSettings.from_env())

    Args:
        concurrency: Most tasks running at once in this process, over all task types.
        name: Connection name shown by the NATS server.
        stop_grace: Seconds a stop waits for running handlers before cancelling them.
        ack_wait: Seconds a task may go without a heartbeat before JetStream redelivers
            it (to this or another worker): after a crash, how long its tasks wait. It
            is a setting of the task type's shared consumer, so give every worker
            serving a task type the same value; keep it above ``TASK_HEARTBEAT``.
        max_deliveries: A task delivered more often than this without a result (the
            workers that took it died or hung each time) is not run again: its attempt
            fails with ``too-many-deliveries`` and it is dead-lettered.
        reserved: Allow the reserved ``natsflow.*`` task types. Only for natsflow's own
            built-in steps (the orchestrator serves them with this); a worker of yours
            leaves it off, so that it cannot take the built-in steps' tasks.
        starvation_limit: Tasks of a type this worker takes from more urgent priority
            levels while a less urgent level has tasks waiting, before it takes one of
            those (docs/priorities.md).
    """

    def __init__(self, concurrency: int = 64, *, name: str = "natsflow-worker",
                 stop_grace: float = STOP_GRACE, ack_wait: float = TASK_ACK_WAIT,
                 max_deliveries: int = MAX_TASK_DELIVERIES, reserved: bool = False,
                 starvation_limit: int = STARVATION_LIMIT) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if starvation_limit < 1:
            raise ValueError("starvation_limit must be at least 1")
        self.starvation_limit = starvation_limit
        check_limits(ack_wait=ack_wait, max_deliveries=max_deliveries)
        self.concurrency = concurrency
        self.ack_wait = ack_wait
        self.max_deliveries = max_deliveries
        self.name = name
        self.stop_grace = stop_grace
        self.reserved = reserved
        self._handlers: dict[str, TaskHandler] = {}

    @property
    def task_types(self) -> list[str]:
        """The task types registered so far."""
        return list(self._handlers)

    def task(self, task_type: str) -> Callable[[F], F]:
        """Register the decorated ``async def handler(ctx, input)`` for ``task_type``.

        If the input parameter is annotated with a pydantic model, the task input is
        validated into it (failing the attempt with ``invalid-input`` otherwise). A
        returned pydantic model is sent as its JSON dump; other values are sent as is.

        Raises:
            ValueError: the task type is invalid, reserved (``natsflow.*``, natsflow's
                built-in steps; unless this worker is ``reserved``) or already registered.
            TypeError: the handler is not an async function of ``(ctx, input)``.
        """
        check_new_task_type(task_type, self._handlers, reserved_ok=self.reserved)

        def register(fn: F) -> F:
            self._handlers[task_type] = TaskHandler.of(task_type, fn)
            return fn

        return register

    async def run(self, settings: NatsSettings, *, replicas: int = 1) -> None:
        """Connect and serve until cancelled, then stop gracefully.

        Args:
            settings: Where NATS is and the deployment's prefix.
            replicas: Replicas of the tasks and dead-letter streams, if this worker
                creates them (give the deployment's value: the first to start creates them).
        """
        async with self.running(settings, replicas=replicas):
            await asyncio.Event().wait()

    @contextlib.asynccontextmanager
    async def running(self, settings: NatsSettings, *, nc: Client | None = None,
                      replicas: int = 1) -> AsyncIterator[Worker]:
        """Serve while the block runs; on exit stop gracefully.

        When the block is entered, the streams and consumers exist and fetching has begun.

        Args:
            settings: Where NATS is and the deployment's prefix.
            nc: An existing connection to use (left open); by default one is made and closed.
            replicas: Replicas of the tasks and dead-letter streams, if this worker
                creates them (give the deployment's value: the first to start creates them).

        Raises:
            ValueError: no task type is registered.
            contracts.errors.Unavailable: NATS cannot be reached.
        """
        if not self._handlers:
            raise ValueError("no task types registered")
        client = nc if nc is not None else await connect(settings, name=self.name)
        try:
            serving = TaskServing(Topology(settings.subjects, replicas=replicas,
                                           task_ack_wait=self.ack_wait),
                                  dict(self._handlers), max_deliveries=self.max_deliveries)
            session = _Session(client, serving, concurrency=self.concurrency,
                               starvation_limit=self.starvation_limit)
            try:
                await session.start()
            except BaseException:
                await session.stop(grace=0)
                raise
            try:
                yield self
            finally:
                await session.stop(grace=self.stop_grace)
        finally:
            if nc is None:
                await client.close()


class _Session:
    """One period of serving, on one connection."""

    def __init__(self, nc: Client, serving: TaskServing, *, concurrency: int,
                 starvation_limit: int = STARVATION_LIMIT) -> None:
        self._nc = nc
        self._starvation_limit = starvation_limit
        self._js = nc.jetstream()
        # Results, progress and dead letters: pipelined publishing, one ack each.
        self._publisher = AsyncPublisher(nc)
        self._reports = AckedPublisher(self._publisher)
        self._serving = serving
        self._handlers = serving.handlers
        self._slots = SlotPool(concurrency)
        # A fair share per type, so an idle type's pending fetch cannot hog every slot.
        self._batch = max(1, min(MAX_FETCH_BATCH, concurrency // len(self._handlers)))
        self._deliveries: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self._redeclaring: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def _subjects(self) -> Subjects:
        return self._serving.subjects

    async def start(self) -> None:
        # Started beside the orchestrator on a cluster, a declaration may meet a stream
        # being scaled or a leader being elected: wait that out, never exit on it.
        await patiently("the tasks stream and its consumers", self._declare)
        await self._publisher.start()  # its reply subscription, before the first result
        self._subs.append(await self._nc.subscribe(self._subjects.all_cancels,
                                                   cb=self._on_cancel))
        for handler in self._handlers.values():
            # Every priority level of the task type (docs/priorities.md).
            sub = await Lanes(self._nc, self._subjects, handler.task_type, batch=self._batch,
                              every=self._starvation_limit).start()
            self._subs.append(sub)
            self._loops.append(asyncio.create_task(self._watchdog(handler, sub),
                                                   name=f"fetch {handler.task_type}"))
        log.info("serving %s", ", ".join(self._handlers))

    async def _declare(self) -> None:
        await self._serving.declare(self._js)

    async def stop(self, *, grace: float) -> None:
        self._stopping = True
        self._slots.close()
        lanes = [sub for sub in self._subs if isinstance(sub, Lanes)]
        for sub in lanes:
            sub.halt()  # a fetch waiting for tasks returns now, not after its timeout
        await _finish(self._loops, within=FETCH_TIMEOUT + 1.0)
        if self._redeclaring is not None:
            await _finish([self._redeclaring], within=0)
        # Tasks the open pull requests brought after the halt go back now, for another
        # worker: not after the running handlers' grace.
        for sub in lanes:
            with contextlib.suppress(Exception):
                await sub.stop()
        await _finish(self._deliveries, within=grace)
        for sub in self._subs:  # the connection may be shared and outlive us
            if not isinstance(sub, Lanes):
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        await self._publisher.close()
        log.info("stopped serving %s", ", ".join(self._handlers))

    async def _watchdog(self, handler: TaskHandler, sub: Any) -> None:
        """Run the fetch loop until stopping; if it dies of an error, log and restart it.

        The loop survives the errors it expects (NATS away, a consumer gone); this is
        for the others, so a worker that looks alive never quietly stops fetching.
        """
        while not self._stopping:
            try:
                await self._fetch_loop(handler, sub)
            except Exception:
                log.exception("fetching %s died; starting again", handler.task_type)
                await asyncio.sleep(ERROR_PAUSE)

    async def _fetch_loop(self, handler: TaskHandler, sub: Any) -> None:
        while not self._stopping:
            reserved = await self._slots.reserve(self._batch)
            if reserved == 0:
                return
            try:
                msgs: list[Msg] = await sub.next_batch(reserved, timeout=FETCH_TIMEOUT)
            except asyncio.CancelledError:
                self._slots.release(reserved)
                raise
            except ConsumerStalled:
                # Refused again and again: the consumer may be gone (a server restarted
                # without its data), or between leaders. Re-declare beside the fetching,
                # which goes on: an election ends by itself, sooner than a declaration.
                self._slots.release(reserved)
                self._redeclare_soon(handler.task_type)
                continue
            except Exception:
                self._slots.release(reserved)
                log.warning("fetching %s failed; retrying", handler.task_type, exc_info=True)
                await asyncio.sleep(ERROR_PAUSE)
                await self._redeclare_quietly()
                continue
            self._slots.release(reserved - len(msgs))
            if not msgs:
                # Let another task type's loop, woken by the release, take the slots
                # first: reserving again at once, an idle type would keep them forever.
                await asyncio.sleep(0)
            for msg in msgs:
                self._spawn(handler, msg)

    def _redeclare_soon(self, task_type: str) -> None:
        if self._redeclaring is None or self._redeclaring.done():
            log.warning("the server stopped answering pull requests for %s; re-declaring "
                        "the tasks stream and consumers", task_type)
            self._redeclaring = asyncio.create_task(self._redeclare_quietly())

    async def _redeclare_quietly(self) -> None:
        # After a server restart without persistence the stream or consumer may be gone.
        try:
            await self._declare()
        except Exception:
            log.debug("re-declaring the tasks stream failed", exc_info=True)

    def _spawn(self, handler: TaskHandler, msg: Msg) -> None:
        task = asyncio.create_task(self._serving.deliver(msg, handler, js=self._reports,
                                                         blobs=self._js,
                                                         max_payload=self._nc.max_payload))
        self._deliveries.add(task)
        task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        self._slots.release(1)
        if not task.cancelled() and task.exception() is not None:
            log.error("task delivery crashed", exc_info=task.exception())

    async def _on_cancel(self, msg: Msg) -> None:
        self._serving.obey_cancel(msg.data, subject=msg.subject)


async def _finish(tasks: list[asyncio.Task[None]] | set[asyncio.Task[None]], *,
                  within: float) -> None:
    """Wait up to ``within`` seconds for ``tasks``, then cancel the rest and wait for them."""
    pending = set(tasks)
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=within)
    for task in still:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
