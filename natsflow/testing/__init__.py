"""Test your workflows: NATS, an orchestrator in process, your workers, and time skipping.

Example (a pytest test; the ``natsflow_env`` fixture comes with natsflow)::

    async def test_charge(natsflow_env: WorkflowEnvironment) -> None:
        worker = Worker()

        @worker.task("billing.charge")
        async def charge(ctx: TaskContext, data: ChargeIn) -> ChargeOut: ...

        await natsflow_env.run_worker(worker)
        wid = await natsflow_env.submit({"name": "bill", "steps": [...]})
        status = await natsflow_env.wait(wid)   # a one-day sleep inside takes no time
        assert status.state == "completed"

Outside pytest: ``async with WorkflowEnvironment.start() as env: ...``. See
docs/testing.md.
"""

from ._clock import TimeSkippingClock
from ._env import WaitFailed, WorkflowEnvironment
from ._nats import NATS_PROVIDERS, EmbeddedNatsProvider, ExternalNats, NatsProvider, nats_provider

__all__ = [
    "WorkflowEnvironment",
    "WaitFailed",
    "TimeSkippingClock",
    "NatsProvider",
    "EmbeddedNatsProvider",
    "ExternalNats",
    "NATS_PROVIDERS",
    "nats_provider",
]
