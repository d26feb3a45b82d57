"""A trigger while its orchestrator is SIGKILLed: every message starts its workflow once.

A plain nats-py publisher, knowing nothing of natsflow, publishes 1,000 ``orders.*``
messages, 100 of them twice, while the one orchestrator process is killed (and started
again, as a supervisor would) in the middle. The capture stream keeps what arrives
meanwhile, a message taken and not acked comes again after the ack wait, and the id
expression makes a message seen twice the same workflow: exactly 900 workflows start,
each with its input mapped from its message.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import nats
import pytest
from fault_procs import ENGINE_ACK_WAIT, Service, supervise, wait_ready

from natsflow.client import NatsflowClient
from natsflow.trigger_client import TriggerClient
from transport.connect import NatsSettings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

DISTINCT = 900
TWICE = 100
NOOP = {"name": "noop", "steps": [{"id": "echo", "kind": "transform",
                                   "output": "${input}"}]}


async def _workflows(nc: nats.NATS, bucket: str) -> set[str]:
    kv = await nc.jetstream().key_value(bucket)
    try:
        return set(await kv.keys())
    except nats.js.errors.NoKeysError:
        return set()


async def test_each_message_starts_one_workflow_through_a_kill(
        settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    triggers = TriggerClient(client.nc, client.subjects, timeout=3.0)
    orch = Service("orchestrator", ["orchestrator"], settings, tmp_path,
                   env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                   ready_line="orchestrator ready")
    rng = random.Random(18)
    messages = [{"id": i, "amount": i * 3} for i in range(DISTINCT)]
    messages += [messages[i] for i in rng.sample(range(DISTINCT), TWICE)]
    rng.shuffle(messages)
    async with supervise(orch):
        await wait_ready([orch])
        await client.put_definition("noop", NOOP)
        await triggers.create_trigger({
            "name": "orders", "subject": "orders.*", "definition": "noop",
            "id": "order-${msg.data.id}",
            "input": {"order": "${msg.data.id}", "amount": "${msg.data.amount}",
                      "subject": "${msg.subject}"}})
        publisher = await nats.connect(settings.servers[0])  # knows nothing of natsflow
        try:
            for n, m in enumerate(messages):
                await publisher.publish(f"orders.{'created' if n % 2 else 'updated'}",
                                        json.dumps(m).encode())
                if n % 100 == 99:
                    await publisher.flush()
                    await asyncio.sleep(0.1)
                if n == len(messages) // 2:
                    orch.kill()  # the supervisor starts it again
            await publisher.flush()
        finally:
            await publisher.close()
        s = settings.subjects
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 45
        while len(ids := await _workflows(client.nc, s.workflows_bucket)) < DISTINCT:
            assert loop.time() < deadline, f"{len(ids)} workflows:\n{orch.logs()}"
            await asyncio.sleep(0.25)
        await asyncio.sleep(ENGINE_ACK_WAIT + 1)  # whatever was redelivered has landed
        ids = await _workflows(client.nc, s.workflows_bucket)
        assert ids == {f"order-{i}" for i in range(DISTINCT)}
        assert orch.deaths, "the orchestrator was killed"
        for i in rng.sample(range(DISTINCT), 20):
            status = (await client.get(f"order-{i}")).status
            assert status is not None
            assert status.input["order"] == i and status.input["amount"] == i * 3
            assert status.labels["trigger"] == "orders"
        # Counters are a replica's, flushed each second: a killed one loses its last.
        stats = (await triggers.get_trigger("orders")).stats
        # Core NATS subjects are the server's, shared by every test on it: the trigger's
        # capture stream must not outlive the test (the last trigger's delete drops it).
        await triggers.delete_trigger("orders")
        assert stats.failed == 0 and stats.skipped == 0
        assert stats.started + stats.duplicates == stats.matched > 0
