"""natsflow task handlers in a FastStream app: workflow steps served by a FastStream service.

Example::

    from faststream import FastStream
    from faststream.nats import NatsBroker

    from natsflow.faststream import TaskRouter
    from natsflow.worker import TaskContext

    tasks = TaskRouter(prefix="natsflow")

    @tasks.task("shop.reserve")
    async def reserve(ctx: TaskContext, data: ReserveIn) -> ReserveOut:
        ...

    broker = NatsBroker("nats://127.0.0.1:4222")
    broker.include_router(tasks)
    app = FastStream(broker, on_startup=[tasks.declare])

The handlers, their contract and the wire protocol are ``natsflow.worker``'s; see
``docs/workers.md``, "In a FastStream app".
"""

from ._router import TaskRouter

__all__ = ["TaskRouter"]
