"""Namespaces (tenancy) on a real nats-server: a client scoped to some namespaces sees and
touches nothing outside them, over the NATS API (orchestrator and index), events,
definitions, batches and child workflows; unscoped callers see everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Probe, running_demo_worker
from nats.aio.client import Client
from typer.testing import CliRunner

from contracts.errors import (
    BatchNotFound,
    DefinitionNotFound,
    NamespaceForbidden,
    NatsflowError,
    WorkflowNotFound,
)
from contracts.messages import IdRequest, ListWorkflowsRequest
from contracts.models import Event, WorkflowState, WorkflowStatus
from natsflow.cli import app
from natsflow.client import NatsflowClient
from orchestrator.index import IndexService
from transport.connect import NatsSettings

A, B = "team-a", "team-b"


def _waiting(wid: str, namespace: str | None = None) -> dict[str, Any]:
    """A workflow that stays running until it gets the signal ``go``."""
    config: dict[str, Any] = {"name": "hold", "id": wid, "steps": [
        {"id": "w", "kind": "wait", "signal": "go"}]}
    if namespace is not None:
        config["namespace"] = namespace
    return config


@pytest.fixture
async def indexer(settings: NatsSettings, nc: Client) -> AsyncIterator[IndexService]:
    service = IndexService(settings, nc=nc)
    await service.start()
    yield service
    await service.stop()


async def _refusal(call: Awaitable[Any]) -> NatsflowError:
    try:
        await call
    except NatsflowError as err:
        return err
    raise AssertionError("the call was not refused")


async def _same_as_missing(call: Callable[[str], Awaitable[Any]], hidden: str,
                           missing: type[NatsflowError] = WorkflowNotFound) -> None:
    """``call`` on ``hidden`` is refused exactly as on an id that does not exist."""
    outside = await _refusal(call(hidden))
    absent = await _refusal(call("no-such-id"))
    assert isinstance(outside, missing), outside

    def answer(err: NatsflowError, wid: str) -> str:
        return err.info().model_dump_json().replace(repr(wid), "<id>")

    # Word for word, but for the id it names.
    assert answer(outside, hidden) == answer(absent, "no-such-id")


def test_the_engine_answers_a_command_outside_its_scope_as_for_a_missing_workflow() -> None:
    from test_engine import T0, config, run

    from orchestrator.engine import decide
    from orchestrator.records import (
        PauseWorkflow,
        ResumeWorkflow,
        RetryWorkflow,
        SignalWorkflow,
        StartChildEffect,
        StartWorkflow,
        StopWorkflow,
    )

    cfg = config([{"id": "w", "kind": "wait", "signal": "go"},
                  {"id": "kid", "kind": "workflow", "definition": "d", "depends_on": ["w"]}],
                 namespace=B)
    record, _ = run(cfg, [])
    assert record.status.namespace == B
    for command in (StartWorkflow(namespaces=[A]), StopWorkflow(namespaces=[A]),
                    PauseWorkflow(namespaces=[A]), ResumeWorkflow(namespaces=[A]),
                    RetryWorkflow(namespaces=[A]), SignalWorkflow(name="go", namespaces=[A])):
        outside, missing = decide(record, command, T0), decide(None, command, T0)
        assert outside.record is None and outside.effects == []
        assert outside.reply == missing.reply and outside.reply.error is not None
        assert outside.reply.error.code == "workflow-not-found"
    # Inside the scope (or with none) the command applies; the child asked for is looked
    # up in, and run in, the parent's namespace.
    signalled = decide(record, SignalWorkflow(name="go", namespaces=[A, B]), T0)
    assert signalled.record is not None
    child = [e for e in signalled.effects if isinstance(e, StartChildEffect)]
    assert [c.namespace for c in child] == [B]
    assert decide(record, StopWorkflow(), T0).record is not None


async def test_a_scoped_client_cannot_reach_another_namespaces_workflow(
        engine: object, client: NatsflowClient) -> None:
    await client.create(_waiting("a1", A))
    await client.create(_waiting("b1", B))
    mine = [A]

    # What exists in the other namespace answers exactly like what does not exist.
    await _same_as_missing(lambda i: client.get(i, namespaces=mine), "b1")
    await _same_as_missing(lambda i: client.start(i, namespaces=mine), "b1")
    await _same_as_missing(lambda i: client.stop(i, namespaces=mine), "b1")
    await _same_as_missing(lambda i: client.signal(i, "go", namespaces=mine), "b1")
    await _same_as_missing(lambda i: client.pause(i, namespaces=mine), "b1")
    await _same_as_missing(lambda i: client.resume(i, namespaces=mine), "b1")
    await _same_as_missing(lambda i: client.retry(i, namespaces=mine), "b1")
    await _same_as_missing(lambda i: client.rerun(i, new_id="stolen", namespaces=mine),
                           "b1")

    async def events_of(wid: str) -> list[Event]:
        return [e async for e in client.events(wid, follow=False, namespaces=mine)]

    await _same_as_missing(events_of, "b1")
    await _same_as_missing(lambda i: client.wait(i, timeout=5, namespaces=mine), "b1")

    # None of it reached b1: still waiting, unsignalled, never paused; no rerun made.
    b1 = (await client.get("b1")).status
    assert b1 is not None and b1.state == WorkflowState.RUNNING and b1.namespace == B
    assert b1.signals == [] and b1.runs == 1
    with pytest.raises(WorkflowNotFound):
        await client.get("stolen")

    # Inside the scope everything works; an unscoped client sees both.
    a1 = (await client.get("a1", namespaces=[A, "other"])).status
    assert a1 is not None and a1.namespace == A
    assert [e.type for e in await events_of("a1")][:2] == ["workflow.created",
                                                          "workflow.started"]
    await client.signal("a1", "go", namespaces=mine)
    assert (await client.wait("a1", timeout=30, namespaces=mine)).status.state == "completed"  # type: ignore[union-attr]
    assert (await client.stop("b1")).id == "b1"
    assert (await client.wait("b1", timeout=30)).status.state == "stopped"  # type: ignore[union-attr]
    # An empty scope sees nothing at all.
    with pytest.raises(WorkflowNotFound):
        await client.get("a1", namespaces=[])


async def test_a_scoped_event_feed_carries_only_its_namespaces_events(
        engine: object, client: NatsflowClient) -> None:
    await client.create({**_waiting("fa", A), "steps": [
        {"id": "t", "kind": "transform", "output": "ok"}]})
    await client.create({**_waiting("fb", B), "steps": [
        {"id": "t", "kind": "transform", "output": "ok"}]})
    await client.wait("fa", timeout=30)
    await client.wait("fb", timeout=30)

    async def feed(scope: list[str] | None) -> set[str]:
        seen = set()
        stream = client.event_feed(client.subjects.events_of(), deliver_all=True,
                                   idle_timeout=1.0, namespaces=scope)
        async with contextlib.aclosing(stream):
            async for _, event in stream:
                seen.add(event.workflow_id)
        return seen

    assert await feed([A]) == {"fa"}
    assert await feed([B]) == {"fb"}
    assert await feed(None) == {"fa", "fb"}


async def test_a_create_outside_the_scope_is_namespace_forbidden(
        engine: object, client: NatsflowClient) -> None:
    err = await _refusal(client.create(_waiting("x1", B), namespaces=[A]))
    assert isinstance(err, NamespaceForbidden) and err.code == "namespace-forbidden"
    assert err.field == "config.namespace"
    await client.put_definition("greet", {"steps": [
        {"id": "t", "kind": "transform", "output": "hi"}]}, namespace=B)
    with pytest.raises(NamespaceForbidden):
        await client.run("greet", namespace=B, workflow_id="x2", namespaces=[A])
    with pytest.raises(NamespaceForbidden):
        await client.put_definition("greet", {"steps": [
            {"id": "t", "kind": "transform", "output": "mine"}]}, namespace=B,
            namespaces=[A])
    with pytest.raises(NamespaceForbidden):
        await client.create_batch({"id": "xb", "namespace": B, "inputs": [{}],
                                   "workflow": {"name": "m", "steps": [
                                       {"id": "t", "kind": "transform", "output": 1}]}},
                                  namespaces=[A])
    for wid in ("x1", "x2"):
        with pytest.raises(WorkflowNotFound):
            await client.get(wid)
    with pytest.raises(BatchNotFound):
        await client.get_batch("xb")
    assert (await client.get_definition("greet", namespace=B)).latest.version == 1
    # Inside the scope, each is created where it says.
    made = await client.create(_waiting("x3", A), namespaces=[A])
    assert made.created and made.status is not None and made.status.namespace == A


async def test_the_default_namespace_when_none_is_given(
        engine: object, client: NatsflowClient, nc: Client) -> None:
    config = _waiting("d1")
    status = (await client.create(config)).status
    assert status is not None and status.namespace == "default"
    # Stored and sent as before namespaces: no namespace in the config, no scope in an
    # unscoped request; an identical resubmit is recognised.
    kv = await nc.jetstream().key_value(client.subjects.workflows_bucket)
    record = json.loads((await kv.get("d1")).value or b"")
    assert "namespace" not in record["config"] and record["status"]["namespace"] == "default"
    assert IdRequest(id="d1").model_dump_json() == '{"id":"d1"}'
    again = await client.create(config)
    assert not again.created
    assert (await client.get("d1", namespaces=["default"])).id == "d1"
    with pytest.raises(WorkflowNotFound):
        await client.get("d1", namespaces=[A])
    # A record from before namespaces (no namespace anywhere) reads as the default one's.
    del record["status"]["namespace"]
    await kv.put("old", json.dumps({**record, "status": {**record["status"], "id": "old"}})
                 .encode())
    assert (await client.get("old", namespaces=["default"])).status.namespace == "default"  # type: ignore[union-attr]


async def test_idempotency_keys_are_per_namespace(
        engine: object, client: NatsflowClient) -> None:
    body = {"name": "hold", "steps": [{"id": "w", "kind": "wait", "signal": "go"}]}
    first = await client.create({**body, "namespace": A}, idempotency_key="order-1")
    other = await client.create({**body, "namespace": B}, idempotency_key="order-1")
    again = await client.create({**body, "namespace": A}, idempotency_key="order-1")
    assert first.created and other.created and not again.created
    assert first.id == again.id != other.id
    assert (await client.get(other.id, namespaces=[B])).status.namespace == B  # type: ignore[union-attr]


async def test_definitions_are_per_namespace(engine: object, client: NatsflowClient,
                                             nc: Client) -> None:
    plain = {"steps": [{"id": "t", "kind": "transform", "output": "default's"}]}
    theirs = {"steps": [{"id": "t", "kind": "transform", "output": "a's"}]}
    await client.put_definition("greet", plain)
    stored = (await client.put_definition("greet", theirs, namespace=A)).definition
    assert (stored.namespace, stored.version) == (A, 1)  # its own numbering

    assert (await client.get_definition("greet")).latest.config.steps[0].output == "default's"  # type: ignore[union-attr]
    info = await client.get_definition("greet", namespace=A, namespaces=[A])
    assert info.namespace == A and info.latest.config.steps[0].output == "a's"  # type: ignore[union-attr]
    one = await client.get_definition_version("greet", 1, namespace=A)
    assert one.namespace == A
    # Another namespace's definition answers as a missing one; so does an unknown name.
    hidden = await _refusal(client.get_definition("greet", namespace=A, namespaces=[B]))
    absent = await _refusal(client.get_definition("nope", namespace=A, namespaces=[A]))
    assert isinstance(hidden, DefinitionNotFound)
    assert hidden.info().model_dump() == absent.info().model_dump() | {
        "message": hidden.message}
    assert hidden.message == "no definition 'greet'"
    with pytest.raises(DefinitionNotFound):
        await client.get_definition_version("greet", 1, namespace=A, namespaces=[B])
    with pytest.raises(DefinitionNotFound):
        await client.get_definition("greet", namespace=B)

    listed = [(d.namespace, d.name) for d in (await client.list_definitions()).definitions]
    assert listed == [("default", "greet"), (A, "greet")]
    scoped = (await client.list_definitions(namespaces=[A])).definitions
    assert [(d.namespace, d.name) for d in scoped] == [(A, "greet")]
    assert (await client.list_definitions(namespace=A, namespaces=[B])).definitions == []

    # Running a definition takes it from its namespace and runs there.
    ran = await client.run("greet", namespace=A, workflow_id="r1", namespaces=[A])
    done = (await client.wait(ran.id, timeout=30)).status
    assert done is not None and done.namespace == A and done.output == {"t": "a's"}
    with pytest.raises(DefinitionNotFound):
        await client.run("greet", namespace=B, workflow_id="r2")

    # The default namespace's keys are those from before namespaces: no migration.
    kv = await nc.jetstream().key_value(client.subjects.definitions_bucket)
    assert sorted(await kv.keys()) == ["greet.1", f"{A}.greet.1"]


async def test_a_child_workflow_runs_in_its_parents_namespace(
        demo_worker: Probe, client: NatsflowClient) -> None:
    await client.put_definition("kid", {"steps": [
        {"id": "t", "kind": "transform", "output": "default kid"}]})
    await client.put_definition("kid", {"steps": [
        {"id": "t", "kind": "transform", "output": "a kid"}]}, namespace=A)
    await client.create({"name": "parent", "id": "p1", "namespace": A, "steps": [
        {"id": "child", "kind": "workflow", "definition": "kid"},
        {"id": "many", "kind": "map", "items": "[1, 2]",
         "step": {"kind": "workflow", "definition": "kid"}}]})
    parent = (await client.wait("p1", timeout=30, namespaces=[A])).status
    assert parent is not None and parent.state == WorkflowState.COMPLETED, parent.error
    assert parent.output == {"child": {"t": "a kid"}, "many": [{"t": "a kid"}] * 2}
    child = (await client.get("p1-child-1", namespaces=[A])).status
    assert child is not None and child.namespace == A and child.definition == "kid"
    with pytest.raises(WorkflowNotFound):
        await client.get("p1-child-1", namespaces=["default"])

    # A child is looked up in its parent's namespace only.
    await client.create({"name": "parent", "id": "p2", "namespace": B, "steps": [
        {"id": "child", "kind": "workflow", "definition": "kid"}]})
    failed = (await client.wait("p2", timeout=30)).status
    assert failed is not None and failed.state == WorkflowState.FAILED
    assert failed.error is not None and failed.error.code == "definition-not-found"


async def test_batch_members_are_in_the_batchs_namespace(
        engine: object, client: NatsflowClient) -> None:
    reply = await client.create_batch({
        "id": "bat", "namespace": A, "inputs": [{"n": 1}, {"n": 2}],
        "workflow": {"name": "m", "steps": [
            {"id": "w", "kind": "wait", "signal": "go"}]}}, namespaces=[A])
    assert reply.created and reply.status is not None and reply.status.namespace == A
    member = (await client.get("bat-0", namespaces=[A])).status
    assert member is not None and member.namespace == A and member.batch_id == "bat"
    await _same_as_missing(lambda i: client.get_batch(i, namespaces=[B]), "bat",
                           BatchNotFound)
    await _same_as_missing(lambda i: client.stop_batch(i, namespaces=[B]), "bat",
                           BatchNotFound)
    await _same_as_missing(lambda i: client.stop(i, namespaces=[B]), "bat-1")
    assert (await client.get_batch("bat", namespaces=[A])).status.state == "running"  # type: ignore[union-attr]
    await client.stop_batch("bat", namespaces=[A])
    for _ in range(100):
        status = (await client.get_batch("bat")).status
        if status is not None and status.state == "stopped":
            break
        await asyncio.sleep(0.1)
    assert status is not None and status.state == "stopped"


async def _listed(client: NatsflowClient, expected: int, **query: Any) -> list[str]:
    ids: list[str] = []
    for _ in range(100):  # the index follows the summaries bucket: eventually consistent
        ids = [w.id for w in (await client.list_workflows(**query)).items]
        if len(ids) >= expected:
            return ids
        await asyncio.sleep(0.05)
    return ids


async def test_the_index_lists_and_bulks_only_inside_the_scope(
        engine: object, indexer: IndexService, client: NatsflowClient) -> None:
    for wid, ns in (("la1", A), ("la2", A), ("lb1", B), ("ld1", None)):
        await client.create(_waiting(wid, ns))
    assert sorted(await _listed(client, 4)) == ["la1", "la2", "lb1", "ld1"]
    assert await _listed(client, 2, namespaces=[A]) == ["la2", "la1"]
    assert await _listed(client, 1, namespace=B) == ["lb1"]
    assert await _listed(client, 1, namespaces=[A, "default"], namespace="default") == ["ld1"]
    # A query that names a scope is narrowed by the caller's, never widened.
    query = ListWorkflowsRequest(namespaces=[A, B])
    page = await client.list_workflows(query, namespaces=[B])
    assert [(w.id, w.namespace) for w in page.items] == [("lb1", B)]
    assert (await client.list_workflows(namespace=B, namespaces=[A])).items == []

    dry = await client.bulk("stop", all_workflows=True, dry_run=True, namespaces=[A])
    assert sorted(dry.ids) == ["la1", "la2"]
    done = await client.bulk("stop", all_workflows=True, namespaces=[A])
    assert (done.matched, done.done, done.refused) == (2, 2, {})
    for wid in ("la1", "la2"):
        assert (await client.wait(wid, timeout=30)).status.state == "stopped"  # type: ignore[union-attr]
    for wid in ("lb1", "ld1"):
        assert (await client.get(wid)).status.state == "running"  # type: ignore[union-attr]
    # A filter naming another namespace still finds nothing outside the scope.
    none = await client.bulk("stop", namespaces=[A], namespace=B)
    assert (none.matched, none.ids) == (0, [])
    assert (await client.get("lb1")).status.state == "running"  # type: ignore[union-attr]


# -- the CLI -------------------------------------------------------------------------


@pytest.fixture
def served(settings: NatsSettings) -> Iterator[NatsSettings]:
    """The orchestrator, the index and the demo worker, on a loop of their own (the CLI
    runs its own loop in the test's thread)."""
    from orchestrator import Orchestrator

    ready, failed = threading.Event(), []
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        running.append((asyncio.get_running_loop(), asyncio.Event()))
        orch = Orchestrator(settings, stop_grace=2.0)
        index = IndexService(settings)
        try:
            await orch.start()
            await index.start()
            async with running_demo_worker(settings):
                ready.set()
                await running[0][1].wait()
        except BaseException as exc:
            failed.append(exc)
            ready.set()
            raise
        finally:
            await index.stop()
            await orch.stop()

    # asyncio.run: whatever the services leave pending is cancelled before the loop ends.
    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(60) and not failed, failed
    try:
        yield settings
    finally:
        loop, stop = running[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def test_the_cli_creates_in_and_looks_inside_a_namespace(
        served: NatsSettings, tmp_path: Path) -> None:
    cli = CliRunner(env={"NATS_URL": served.servers[0], "NATSFLOW_PREFIX": served.prefix})
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: hold\nid: c1\nsteps:\n  - {id: w, kind: wait, signal: go}\n")
    made = cli.invoke(app, ["submit", str(wf), "-n", A, "--json"])
    assert made.exit_code == 0, made.output
    assert WorkflowStatus.model_validate_json(made.stdout).namespace == A

    seen = cli.invoke(app, ["status", "c1", "--namespace", A, "--json"])
    assert seen.exit_code == 0 and WorkflowStatus.model_validate_json(seen.stdout).id == "c1"
    for args in (["status", "c1", "-n", B], ["stop", "c1", "-n", B],
                 ["signal", "c1", "go", "-n", B], ["events", "c1", "-n", B],
                 ["pause", "c1", "-n", B]):
        hidden = cli.invoke(app, args)
        assert hidden.exit_code == 2 and "workflow-not-found" in hidden.stderr, args
    from_env = cli.invoke(app, ["status", "c1"], env={"NATSFLOW_NAMESPACE": B})
    assert from_env.exit_code == 2 and "workflow-not-found" in from_env.stderr

    for _ in range(100):
        table = cli.invoke(app, ["ls"])
        if "c1" in table.stdout:
            break
    assert "namespace" in table.stdout and A in table.stdout, table.stdout
    other = cli.invoke(app, ["ls", "-n", B, "--json"])
    assert json.loads(other.stdout)["items"] == []

    definition = tmp_path / "kid.yaml"
    definition.write_text("name: kid\nsteps:\n  - {id: t, kind: transform, output: a}\n")
    applied = cli.invoke(app, ["definitions", "apply", str(definition), "-n", A])
    assert applied.exit_code == 0 and f"in namespace {A}" in applied.stdout, applied.output
    listed = cli.invoke(app, ["definitions", "ls", "-n", A, "--json"])
    assert [(d["namespace"], d["name"]) for d in json.loads(listed.stdout)["definitions"]] == [
        (A, "kid")]
    missing = cli.invoke(app, ["run", "kid"])
    assert missing.exit_code == 2 and "definition-not-found" in missing.stderr
    ran = cli.invoke(app, ["run", "kid", "-n", A, "--watch", "--json"])
    assert ran.exit_code == 0, ran.output
    assert WorkflowStatus.model_validate_json(ran.stdout).namespace == A
