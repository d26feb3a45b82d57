"""The definitions registry on a real nats-server: versions, runs by name, child workflows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import Probe
from nats.aio.client import Client

import orchestrator.definitions
from contracts.errors import DefinitionNotFound, InvalidGraph, ValidationFailed
from contracts.models import StepState, WorkflowState
from natsflow.client import NatsflowClient
from orchestrator.definitions import DefinitionStore
from transport.connect import NatsSettings
from transport.streams import Topology, declare_bucket

GREET: dict[str, Any] = {
    "steps": [{"id": "hi", "task": "demo.echo", "input": {"text": "hi ${input.who}"}}],
    "output": "${steps.hi.output.text}",
}


async def test_versions_are_immutable_and_an_identical_put_adds_none(
        engine: object, client: NatsflowClient) -> None:
    first = await client.put_definition("greet", GREET)
    assert (first.definition.version, first.created) == (1, True)
    again = await client.put_definition("greet", {**GREET, "name": "greet"})
    assert (again.definition.version, again.created) == (1, False)
    changed = {**GREET, "output": {"said": "${steps.hi.output.text}"}}
    second = await client.put_definition("greet", changed)
    assert (second.definition.version, second.created) == (2, True)
    info = await client.get_definition("greet")
    assert info.latest.version == 2 and [v.version for v in info.versions] == [1, 2]
    v1 = await client.get_definition_version("greet", 1)
    assert v1.config.output == "${steps.hi.output.text}"
    await client.put_definition("other", GREET)
    listed = await client.list_definitions()
    assert [(d.name, d.latest_version) for d in listed.definitions] == [
        ("greet", 2), ("other", 1)]


async def test_concurrent_puts_get_distinct_versions(engine: object,
                                                     client: NatsflowClient) -> None:
    configs = [{**GREET, "labels": {"n": str(i)}} for i in range(5)]
    replies = await asyncio.gather(*(client.put_definition("race", c) for c in configs))
    assert sorted(r.definition.version for r in replies) == [1, 2, 3, 4, 5]


async def test_invalid_definitions_are_refused_naming_the_field(
        engine: object, client: NatsflowClient) -> None:
    with pytest.raises(InvalidGraph) as graph:
        await client.put_definition("bad", {"steps": [
            {"id": "a", "task": "demo.echo", "depends_on": ["ghost"]}]})
    assert graph.value.field == "config.steps.0.depends_on" and graph.value.step == "a"
    with pytest.raises(ValidationFailed) as field:
        await client.put_definition("bad", {"steps": [{"id": "a", "task": "demo.echo",
                                                       "colour": "red"}]})
    assert field.value.field == "config.steps.0.colour"
    with pytest.raises(ValidationFailed):
        await client.put_definition("bad", {**GREET, "id": "fixed"})
    with pytest.raises(DefinitionNotFound):
        await client.get_definition("nothing")
    with pytest.raises(DefinitionNotFound):
        await client.run("nothing")


async def test_the_latest_version_another_orchestrator_stored_is_found_without_listing(
        settings: NatsSettings, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    kv = await declare_bucket(nc.jetstream(), Topology(settings.subjects).definitions_kv())
    here, there = DefinitionStore(kv), DefinitionStore(kv)  # two orchestrators' registries
    listed: list[str] = []
    real_scan = orchestrator.definitions.scan

    async def counted_scan(*args: Any, **kw: Any) -> Any:
        listed.append(args[1] if len(args) > 1 else ">")
        return await real_scan(*args, **kw)

    monkeypatch.setattr(orchestrator.definitions, "scan", counted_scan)
    for i in range(20):  # other names: a lookup of "greet" must not read them
        await there.put(f"other{i}", GREET)
    assert (await here.put("greet", GREET))[0].version == 1
    assert (await there.get("greet")).version == 1  # its first lookup lists greet.*
    listed.clear()
    await here.put("greet", {**GREET, "labels": {"v": "2"}})
    assert (await there.get("greet")).version == 2
    assert (await there.put("greet", {**GREET, "labels": {"v": "3"}}))[0].version == 3
    assert (await here.get("greet")).version == 3
    assert (await here.resolve_config("greet", None)).definition_version == 3
    assert listed == []  # known names: one read of the next version, no listing
    assert [v.version for v in (await here.info("greet")).versions] == [1, 2, 3]


async def test_a_run_by_name_pins_its_version_to_the_end(
        demo_worker: Probe, client: NatsflowClient) -> None:
    await client.put_definition("greet", GREET)
    reply = await client.run("greet", {"who": "ada"}, workflow_id="g1")
    assert reply.created
    status = (await client.wait("g1", timeout=30)).status
    assert status is not None and status.state == WorkflowState.COMPLETED
    assert (status.definition, status.definition_version) == ("greet", 1)
    assert status.output == "hi ada"
    await client.put_definition("greet", {**GREET, "output": "${steps.hi.output}"})
    pinned = (await client.run("greet", {"who": "bo"}, version=1, workflow_id="g2")).id
    latest = (await client.run("greet", {"who": "cy"}, workflow_id="g3")).id
    s2 = (await client.wait(pinned, timeout=30)).status
    s3 = (await client.wait(latest, timeout=30)).status
    assert s2 is not None and s2.definition_version == 1 and s2.output == "hi bo"
    assert s3 is not None and s3.definition_version == 2 and s3.output == {"text": "hi cy"}
    with pytest.raises(DefinitionNotFound):
        await client.run("greet", version=9)


async def test_a_workflow_step_runs_a_child_and_stopping_the_parent_stops_it(
        demo_worker: Probe, client: NatsflowClient) -> None:
    await client.put_definition("greet", GREET)
    await client.put_definition("slow", {"steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 30}}]})
    await client.create({"name": "parent", "id": "p1", "input": {"who": "kid"},
                         "steps": [{"id": "child", "kind": "workflow", "definition": "greet",
                                    "input": {"who": "${input.who}"}}]})
    parent = (await client.wait("p1", timeout=30)).status
    assert parent is not None and parent.state == WorkflowState.COMPLETED, parent.error
    assert parent.output == {"child": "hi kid"}
    child = (await client.get("p1-child-1")).status
    assert child is not None and child.parent is not None and child.parent.workflow_id == "p1"
    assert child.definition == "greet"

    await client.create({"name": "parent", "id": "p2", "steps": [
        {"id": "child", "kind": "workflow", "definition": "slow"}]})
    for _ in range(100):
        kid = (await client.get("p2")).status
        if kid is not None and kid.step("child").state == StepState.WAITING:
            break
        await asyncio.sleep(0.1)
    for _ in range(100):
        try:
            if (await client.get("p2-child-1")).status is not None:
                break
        except Exception:
            await asyncio.sleep(0.1)
    await client.stop("p2")
    stopped_child = (await client.wait("p2-child-1", timeout=30)).status
    assert stopped_child is not None and stopped_child.state == WorkflowState.STOPPED
    stopped_parent = (await client.wait("p2", timeout=30)).status
    assert stopped_parent is not None and stopped_parent.state == WorkflowState.STOPPED


async def test_a_child_of_an_unknown_definition_fails_its_step(
        demo_worker: Probe, client: NatsflowClient) -> None:
    await client.create({"name": "orphan", "id": "o1", "steps": [
        {"id": "child", "kind": "workflow", "definition": "ghost"}]})
    status = (await client.wait("o1", timeout=30)).status
    assert status is not None and status.state == WorkflowState.FAILED
    assert status.error is not None and status.error.code == "definition-not-found"
    # A name no definition can have (no key can hold it) is refused on arrival.
    with pytest.raises(ValidationFailed) as refused:
        await client.create({"name": "orphan", "id": "o2", "steps": [
            {"id": "child", "kind": "workflow", "definition": "gh>ost", "version": 1}]})
    assert refused.value.field == "steps.0.definition"
