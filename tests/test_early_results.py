"""A task's result can reach the engine before the write that dispatched it.

Tasks leave together with the record's write (orchestrator/runtime.py), so with several
replicas a result can come to a replica whose copy of the record is older than that
write. Such a result is handed back until the write lands, never dropped. Here the result
is published before its workflow even exists (no worker runs at all): it must be applied
once the workflow dispatches that attempt.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from contracts.messages import TaskSucceeded
from contracts.models import WorkflowConfig, WorkflowState
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from transport.connect import NatsSettings


async def test_a_result_that_comes_first_waits_for_its_dispatch(
        engine: Orchestrator, nc: Client, settings: NatsSettings,
        client: NatsflowClient) -> None:
    s = settings.subjects
    # The token the attempt will be dispatched with: the deployment's key gives it.
    token = engine.engine_settings.token("early1", "a", 1)
    result = TaskSucceeded(workflow_id="early1", step_id="a", attempt=1, output={"v": 42},
                           token=token)
    await nc.jetstream().publish(s.result("early1"), result.model_dump_json().encode(),
                                 headers={"Nats-Msg-Id": f"early1:a:1:result:{token}"})
    handed_back = engine.metrics.early_results
    for _ in range(100):  # the engine has seen it, and handed it back
        if handed_back._value.get() >= 1:
            break
        await asyncio.sleep(0.05)
    assert handed_back._value.get() >= 1
    config = WorkflowConfig.model_validate({
        "name": "early", "id": "early1",
        "steps": [{"id": "a", "task": "nobody.serves.this"},
                  {"id": "b", "kind": "transform",
                   "depends_on": ["a"], "output": "${steps.a.output.v + 1}"}]})
    await client.create(config)
    final = await client.wait("early1", timeout=20)
    assert final.status is not None
    assert final.status.state == WorkflowState.COMPLETED
    by_id = {st.id: st for st in final.status.steps}
    assert by_id["a"].output == {"v": 42} and by_id["b"].output == 43
