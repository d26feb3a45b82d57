"""The Python worker SDK: serve natsflow task types with plain async functions.

Example::

    from natsflow.worker import TaskContext, TaskError, Worker

    worker = Worker(concurrency=64)

    @worker.task("demo.add")
    async def add(ctx: TaskContext, data: AddIn) -> AddOut:
        return AddOut(sum=data.a + data.b)

    await worker.run(NatsSettings.from_env())

The wire protocol the SDK implements is documented in ``docs/workers.md`` and in
:mod:`contracts.messages`.
"""

from ._context import TaskContext
from ._errors import TaskError
from ._worker import Worker

__all__ = ["Worker", "TaskContext", "TaskError"]
