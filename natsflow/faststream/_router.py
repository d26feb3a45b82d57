"""TaskRouter: natsflow task handlers as the subscribers of a FastStream ``NatsRouter``.

FastStream fetches; everything after the fetch is natsflow.worker's own machinery
(:class:`~natsflow.worker._serving.TaskServing`): parsing, dead letters, heartbeats,
progress, results, settling and cancel notices, so both flavours keep one contract.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsRouter, PullSub
from faststream.nats.annotations import JsClient, NatsMessage
from nats.aio.client import DEFAULT_MAX_PAYLOAD_SIZE
from pydantic import BaseModel, SkipValidation, create_model

from contracts.messages import CancelNotice, TaskMessage
from contracts.priorities import DEFAULT_PRIORITY, LEVELS
from contracts.subjects import DEFAULT_PREFIX, Subjects
from natsflow.worker._handler import HandlerFn, TaskHandler
from natsflow.worker._serving import (
    MAX_TASK_DELIVERIES,
    TaskServing,
    check_limits,
    check_new_task_type,
)
from transport.streams import TASK_ACK_WAIT, Topology

__all__ = ["TaskRouter"]

F = TypeVar("F", bound=HandlerFn)
Fn = TypeVar("Fn", bound=Callable[..., Any])


async def _raw_body(msg: StreamMessage[Any]) -> bytes:
    # natsflow's machinery parses, and dead-letters what does not parse: FastStream's
    # validation would only raise, and the task would come back forever.
    return msg.body


def _documented(fn: Fn, body: type[BaseModel], *, name: str | None = None) -> Fn:
    """``fn``, its ``body: bytes`` documented as ``body`` and its channel named ``name``.

    FastStream takes a channel's payload schema from the body parameter's annotation and
    its name from the function; the bytes themselves go unvalidated.
    """
    fn.__annotations__["body"] = Annotated[body, SkipValidation]
    if name is not None:
        fn.__name__ = fn.__qualname__ = name
    return fn


def _task_model(handler: TaskHandler) -> type[TaskMessage]:
    """The model of the handler's tasks, for the AsyncAPI document: a TaskMessage whose
    ``input`` is the handler's input model, when it has one."""
    if handler.input_model is None:
        return TaskMessage
    name = "".join(part.capitalize() for part in re.split(r"[._-]", handler.task_type))
    return create_model(f"{name}Task", __base__=TaskMessage,
                        __doc__=f"A `{handler.task_type}` task: one attempt of one step.",
                        input=(handler.input_model, ...))


def _deliverer(serving: TaskServing, handler: TaskHandler
               ) -> Callable[[bytes, NatsMessage, JsClient], Awaitable[None]]:
    async def deliver(body: bytes, message: NatsMessage, js: JsClient) -> None:
        # The broker's connection is not public; nats-py's default limit is the
        # server's default too, and a smaller letter only fits more surely.
        await serving.deliver(message.raw_message, handler, js=js, blobs=js,
                              max_payload=DEFAULT_MAX_PAYLOAD_SIZE)

    return deliver


class TaskRouter(NatsRouter):
    """A FastStream ``NatsRouter`` whose subscribers run natsflow task handlers.

    Include it in a ``NatsBroker`` (or in another router) next to the app's own
    subscribers; each task type becomes a pull subscriber on the task type's shared
    durable consumer, so ``natsflow worker`` processes and FastStream apps can serve
    the same task type side by side. The handlers are the SDK's: ``async def
    handler(ctx: TaskContext, data: Model) -> Output``, raising ``TaskError``.

    Example::

        tasks = TaskRouter(prefix="natsflow")

        @tasks.task("shop.reserve")
        async def reserve(ctx: TaskContext, data: ReserveIn) -> ReserveOut:
            ...

        broker = NatsBroker(NATS_URL)
        broker.include_router(tasks)
        app = FastStream(broker, on_startup=[tasks.declare])

    Args:
        prefix: The natsflow deployment's subject prefix (``NATSFLOW_PREFIX``); not
            FastStream's router prefix, which a TaskRouter never has.
        max_workers: Most tasks of one task type running at once in this process
            (FastStream's ``max_workers`` of its subscriber).
        ack_wait: Seconds a task may go without a heartbeat before JetStream redelivers
            it; a setting of the task type's shared consumer, as ``Worker(ack_wait=)``.
        max_deliveries: A task delivered more often than this without a result is not
            run again: its attempt fails with ``too-many-deliveries`` and it is
            dead-lettered, as ``Worker(max_deliveries=)``.
        replicas: Replicas of the tasks stream, if :meth:`declare` creates it.
        include_in_schema: Whether the task subjects are in the app's AsyncAPI document.
    """

    def __init__(self, *, prefix: str = DEFAULT_PREFIX, max_workers: int = 64,
                 ack_wait: float = TASK_ACK_WAIT, max_deliveries: int = MAX_TASK_DELIVERIES,
                 replicas: int = 1, include_in_schema: bool | None = None) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        check_limits(ack_wait=ack_wait, max_deliveries=max_deliveries)
        super().__init__(include_in_schema=include_in_schema)
        self.max_workers = max_workers
        self._serving = TaskServing(Topology(Subjects(prefix), replicas=replicas,
                                             task_ack_wait=ack_wait),
                                    max_deliveries=max_deliveries)
        serving = self._serving

        async def cancel_notices(body: bytes, message: NatsMessage) -> None:
            serving.obey_cancel(body, subject=message.raw_message.subject)

        # Core NATS, no queue group: every process hears every notice, as the SDK does.
        self.subscriber(
            self.subjects.all_cancels, decoder=_raw_body, no_reply=True,
            description="natsflow cancel notices: the running attempt a notice names is "
                        "cancelled and reported `cancelled`.")(
            _documented(cancel_notices, CancelNotice))

    @property
    def subjects(self) -> Subjects:
        """The deployment's names."""
        return self._serving.subjects

    @property
    def task_types(self) -> list[str]:
        """The task types registered so far."""
        return list(self._serving.handlers)

    def task(self, task_type: str) -> Callable[[F], F]:
        """Register the decorated ``async def handler(ctx, input)`` for ``task_type``.

        The same contract as ``Worker.task``: an input annotated with a pydantic model
        is validated into it (``invalid-input`` otherwise); a returned model is sent as
        its JSON dump. The handler's docstring describes its channel in AsyncAPI.

        Raises:
            ValueError: the task type is invalid, reserved (``natsflow.*``) or already
                registered.
            TypeError: the handler is not an async function of ``(ctx, input)``.
        """
        check_new_task_type(task_type, self._serving.handlers)
        s = self.subjects
        serving = self._serving

        def register(fn: F) -> F:
            handler = TaskHandler.of(task_type, fn)
            # One subscriber per priority level, a lane of its own (docs/priorities.md):
            # a task never waits behind less urgent ones in this app.
            for level in LEVELS:
                default = level == DEFAULT_PRIORITY
                self.subscriber(
                    s.task(task_type, level),
                    # The orchestrator owns the stream: FastStream must not declare it.
                    stream=JStream(s.tasks_stream, declare=False),
                    durable=s.worker_consumer(task_type, level),
                    config=serving.topology.worker_consumer(task_type, level),
                    pull_sub=PullSub(batch_size=1), max_workers=self.max_workers,
                    # natsflow.worker._settle acks, naks and terms; FastStream must not.
                    ack_policy=AckPolicy.MANUAL, no_reply=True, decoder=_raw_body,
                    # The default level documents the task type; the others are alike.
                    include_in_schema=default,
                    description=fn.__doc__ or f"natsflow task `{task_type}`.")(
                    _documented(_deliverer(serving, handler), _task_model(handler),
                                name=fn.__name__ if default else f"{fn.__name__}_p{level}"))
            serving.handlers[task_type] = handler
            return fn

        return register

    async def declare(self) -> None:
        """Connect the broker and declare what the task subscribers bind to.

        Creates the tasks and dead-letter streams if they are missing and brings each
        task type's consumer to this router's config, as ``Worker.running`` does. Run it
        before the broker starts: ``FastStream(broker, on_startup=[tasks.declare])``,
        or ``await tasks.declare()`` before ``await broker.start()``.

        Raises:
            RuntimeError: the router is not included in a ``NatsBroker``.
            ValueError: it was included with a subject prefix.
            contracts.errors.ConfigMismatch: a consumer cannot be made fit.
        """
        if self.config.prefix:
            raise ValueError(f"a TaskRouter's subjects are natsflow's: include it without "
                             f"a prefix (it has {self.config.prefix!r})")
        broker = self._broker()
        await broker.connect()
        # The broker's own JetStream context (FastStream's JsClient), with its options.
        await self._serving.declare(broker.config.connection_state.stream)

    def _broker(self) -> NatsBroker:
        node: Any = self
        while node is not None and not isinstance(node, NatsBroker):
            node = node.parent
        if node is None:
            raise RuntimeError("include the TaskRouter in a NatsBroker first")
        return node
