"""JSON Schema for a workflow's input and a step's output."""

from __future__ import annotations

from typing import Any

import pytest
from test_engine import config, ok, run

from contracts.errors import InvalidGraph, SchemaMismatch
from contracts.language.schema import validate_instance
from contracts.models import WorkflowConfig, WorkflowState
from natsflow.client import NatsflowClient

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["amount"],
    "properties": {"amount": {"type": "number", "minimum": 0},
                   "email": {"type": "string", "format": "email"}},
}


def test_violations_name_each_json_path() -> None:
    with pytest.raises(SchemaMismatch) as exc:
        validate_instance({"amount": -1, "email": 3}, ORDER_SCHEMA, field="input")
    locs = [e.loc for e in exc.value.errors or []]
    assert locs == ["input.amount", "input.email"]
    assert exc.value.field == "input.amount" and "(and 1 more)" in exc.value.message
    validate_instance({"amount": 2}, ORDER_SCHEMA, field="input")


def test_a_config_whose_input_misses_its_schema_is_refused_on_arrival() -> None:
    steps = [{"id": "a", "task": "t"}]
    with pytest.raises(SchemaMismatch) as exc:
        WorkflowConfig.model_validate({"name": "x", "steps": steps, "input": {},
                                       "input_schema": ORDER_SCHEMA})
    assert exc.value.field == "input" and "amount" in exc.value.message
    with pytest.raises(InvalidGraph) as bad:
        WorkflowConfig.model_validate({"name": "x", "steps": steps,
                                       "input_schema": {"type": "nonsense"}})
    assert bad.value.field == "input_schema"
    with pytest.raises(InvalidGraph):
        WorkflowConfig.model_validate({"name": "x", "steps": [
            {"id": "a", "task": "t", "output_schema": {"minimum": "x"}}]})


def test_a_step_output_that_misses_its_schema_fails_the_step_for_good() -> None:
    cfg = config([{"id": "a", "task": "t", "retry": {"max_attempts": 3},
                   "output_schema": {"type": "object", "required": ["id"]}}])
    rec, _ = run(cfg, [ok("a", output={"name": "no id"})])
    assert rec.status.state == WorkflowState.FAILED
    err = rec.status.step("a").error
    assert err is not None and err.code == "schema-mismatch" and err.step == "a"
    assert rec.status.step("a").attempts == 1
    good, _ = run(cfg, [ok("a", output={"id": 1})])
    assert good.status.state == WorkflowState.COMPLETED


async def test_input_schema_over_nats_and_for_runs_of_definitions(
        engine: object, client: NatsflowClient) -> None:
    wf = {"name": "order", "input_schema": ORDER_SCHEMA,
          "steps": [{"id": "a", "task": "demo.echo"}]}
    with pytest.raises(SchemaMismatch) as exc:
        await client.create({**wf, "input": {"amount": "ten"}})
    assert exc.value.field == "input.amount"
    stored = await client.put_definition("order", wf)  # a definition has no input yet
    assert stored.created
    with pytest.raises(SchemaMismatch):
        await client.run("order", {"email": "a@b.c"})
    assert (await client.run("order", {"amount": 3}, workflow_id="o-1")).created
