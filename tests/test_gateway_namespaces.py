"""Namespaces over HTTP (issue 15): an API key sees and touches nothing outside the
namespaces it is bound to, on every route; a key bound to ``*`` and a gateway without
keys see everything.

A real nats-server with an orchestrator and the index; the gateway in-process through
``httpx.ASGITransport`` (and uvicorn for the never-ending ``GET /events``), with keys made
in the keys bucket as ``natsflow keys create`` makes them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client

from contracts.errors import BatchNotFound, WorkflowNotFound
from contracts.keys import CreateKeyRequest, Scope
from contracts.models import Event, WorkflowState
from gateway import create_app
from gateway._auth import ANONYMOUS, Principal
from natsflow.client import NatsflowClient
from natsflow.embedded import free_port
from orchestrator.index import IndexService
from transport.connect import NatsSettings
from transport.keys import KeyStore
from transport.streams import Topology

A, B = "team-a", "team-b"
PROBLEM = "application/problem+json"
#: A tenant's key: everything but admin.
TENANT = (Scope.WORKFLOWS_READ, Scope.WORKFLOWS_WRITE, Scope.DEFINITIONS_READ,
          Scope.DEFINITIONS_WRITE)


def _waiting(wid: str, namespace: str | None = None, **fields: Any) -> dict[str, Any]:
    """A workflow that stays running until it gets the signal ``go``."""
    config: dict[str, Any] = {"name": "hold", "id": wid, **fields, "steps": [
        {"id": "w", "kind": "wait", "signal": "go"}]}
    if namespace is not None:
        config["namespace"] = namespace
    return config


def _quick(wid: str, namespace: str | None = None) -> dict[str, Any]:
    """A workflow that completes at once (no worker needed)."""
    return {**_waiting(wid, namespace), "steps": [
        {"id": "t", "kind": "transform", "output": wid}]}


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    return body


@dataclass
class Keys:
    """One gateway with keys on, and a client (an ``httpx`` one) per key."""

    app: FastAPI
    a: httpx.AsyncClient  #: bound to team-a, tenant scopes
    b: httpx.AsyncClient  #: bound to team-b, tenant scopes
    a_admin: httpx.AsyncClient  #: bound to team-a, admin (bulk, batches)
    two: httpx.AsyncClient  #: bound to team-a and shared, tenant scopes
    root: httpx.AsyncClient  #: bound to every namespace (``*``), admin


async def _key(store: KeyStore, *scopes: Scope, namespaces: list[str]) -> str:
    made = await store.create(CreateKeyRequest(
        name="k" + uuid.uuid4().hex[:8], scopes=list(scopes), namespaces=namespaces),
        now=datetime.now(UTC))
    return made.key


@pytest.fixture
async def indexer(settings: NatsSettings, nc: Client) -> AsyncIterator[IndexService]:
    service = IndexService(settings, nc=nc)
    await service.start()
    yield service
    await service.stop()


@asynccontextmanager
async def _as(app: FastAPI, key: str | None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw", headers=headers) as http:
        yield http


@pytest.fixture
async def keys(engine: object, indexer: IndexService, settings: NatsSettings,
               nc: Client) -> AsyncIterator[Keys]:
    store = await KeyStore.open(nc.jetstream(), Topology(settings.subjects))
    made = {
        "a": await _key(store, *TENANT, namespaces=[A]),
        "b": await _key(store, *TENANT, namespaces=[B]),
        "a_admin": await _key(store, Scope.ADMIN, namespaces=[A]),
        "two": await _key(store, *TENANT, namespaces=[A, "shared"]),
        "root": await _key(store, Scope.ADMIN, namespaces=["*"]),
    }
    app = create_app(settings, nc=nc, request_timeout=5.0)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.keys.ready.wait(), 10)
        async with _as(app, made["a"]) as a, _as(app, made["b"]) as b, \
                _as(app, made["a_admin"]) as a_admin, _as(app, made["two"]) as two, \
                _as(app, made["root"]) as root:
            yield Keys(app, a, b, a_admin, two, root)


async def _same_as_missing(http: httpx.AsyncClient, method: str, path: str, hidden: str,
                           *, code: str = "workflow-not-found",
                           json: Any = None) -> None:
    """``path`` on ``hidden`` is a 404 exactly as on an id that does not exist."""
    outside = _problem(await http.request(method, path.format(hidden), json=json), 404, code)
    absent = _problem(await http.request(method, path.format("no-such-id"), json=json),
                      404, code)

    def said(body: dict[str, Any], wid: str) -> dict[str, Any]:
        return {k: (v.replace(wid, "<id>") if isinstance(v, str) else v)
                for k, v in body.items()}

    assert said(outside, hidden) == said(absent, "no-such-id"), (method, path)


async def _listed(http: httpx.AsyncClient, expected: int, **params: Any) -> list[str]:
    ids: list[str] = []
    for _ in range(200):  # the index follows the summaries bucket: eventually consistent
        resp = await http.get("/workflows", params=params)
        assert resp.status_code == 200, resp.text
        ids = sorted(w["id"] for w in resp.json()["items"])
        if len(ids) >= expected:
            return ids
        await asyncio.sleep(0.05)
    return ids


# -- the principal ------------------------------------------------------------------------


def test_the_principals_scope_and_home_namespace() -> None:
    def bound(*namespaces: str) -> Principal:
        return Principal(key_id="k", name="k", scopes=frozenset(),
                         namespaces=frozenset(namespaces))

    assert bound("*").namespace_scope is None and ANONYMOUS.namespace_scope is None
    assert bound("b", "a").namespace_scope == ["a", "b"]
    assert bound().namespace_scope == []  # bound to nothing: sees nothing
    assert bound("a").home_namespace == "a"
    assert bound("a", "b").home_namespace == "default"
    assert bound("*").home_namespace == "default"
    assert bound("*", "a").namespace_scope is None


# -- by id ----------------------------------------------------------------------------------


async def test_a_key_cannot_reach_another_namespaces_workflow(
        keys: Keys, client: NatsflowClient) -> None:
    await client.create(_waiting("b1", B))
    await client.create(_waiting("b_draft", B, start=False))
    await client.create(_waiting("b_stopped", B))
    await client.stop("b_stopped")
    await client.wait("b_stopped", timeout=30)
    for wid in ("a1", "a_stopped"):
        await client.create(_waiting(wid, A))
    await client.stop("a_stopped")
    await client.wait("a_stopped", timeout=30)

    a = keys.a
    for method, path, hidden, body in (
            ("GET", "/workflows/{}", "b1", None),
            ("POST", "/workflows/{}/start", "b_draft", None),
            ("POST", "/workflows/{}/signals/go", "b1", {"stolen": True}),
            ("POST", "/workflows/{}/pause", "b1", None),
            ("POST", "/workflows/{}/resume", "b1", None),
            ("POST", "/workflows/{}/retry", "b_stopped", None),
            ("POST", "/workflows/{}/rerun", "b1", {"new_id": "stolen"}),
            ("GET", "/workflows/{}/events", "b1", None),
            ("POST", "/workflows/{}/stop", "b1", None)):
        await _same_as_missing(a, method, path, hidden, json=body)

    # None of it reached team-b: still waiting, unsignalled, never paused, not started,
    # not retried; no rerun made.
    b1 = (await client.get("b1")).status
    assert b1 is not None and b1.state == WorkflowState.RUNNING and b1.signals == []
    assert (await client.get("b_draft")).status.state == WorkflowState.CREATED  # type: ignore[union-attr]
    stopped = (await client.get("b_stopped")).status
    assert stopped is not None and stopped.state == WorkflowState.STOPPED
    assert stopped.runs == 1
    with pytest.raises(WorkflowNotFound):
        await client.get("stolen")

    # The same key does all of it in its own namespace.
    assert (await a.get("/workflows/a1")).json()["namespace"] == A
    assert (await a.post("/workflows/a1/pause")).status_code == 200
    assert (await a.post("/workflows/a1/resume")).status_code == 200
    assert (await a.post("/workflows/a_stopped/retry")).status_code == 202
    rerun = await a.post("/workflows/a1/rerun", json={"new_id": "a1_again"})
    assert rerun.status_code == 202 and rerun.json()["namespace"] == A
    assert (await a.post("/workflows/a1/signals/go", json={"ok": 1})).status_code == 202
    events = [Event.model_validate_json(line.removeprefix("data: "))
              for line in (await a.get("/workflows/a1/events")).text.splitlines()
              if line.startswith("data: ")]
    assert events[-1].type == "workflow.completed"
    # And the key of team-b (or one for every namespace) reaches team-b's.
    assert (await keys.b.get("/workflows/b1")).status_code == 200
    assert (await keys.root.post("/workflows/b1/stop")).status_code == 202
    assert (await keys.b.post("/workflows/b_draft/start")).status_code == 200


async def test_a_child_workflow_is_in_its_parents_namespace_over_http(
        keys: Keys) -> None:
    kid = {"steps": [{"id": "t", "kind": "transform", "output": "kid"}]}
    assert (await keys.a.put("/definitions/kid", json=kid)).status_code == 201
    parent = await keys.a.post("/workflows", json={"name": "parent", "id": "p1", "steps": [
        {"id": "child", "kind": "workflow", "definition": "kid"}]})
    assert parent.status_code == 202, parent.text
    for _ in range(200):
        done = (await keys.a.get("/workflows/p1")).json()
        if done["state"] == "completed":
            break
        await asyncio.sleep(0.05)
    assert done["state"] == "completed" and done["namespace"] == A, done
    child = await keys.a.get("/workflows/p1-child-1")
    assert child.status_code == 200 and child.json()["namespace"] == A
    await _same_as_missing(keys.b, "GET", "/workflows/{}", "p1-child-1")


# -- creates --------------------------------------------------------------------------------


async def test_a_key_creates_in_its_namespace_and_is_forbidden_elsewhere(
        keys: Keys, client: NatsflowClient) -> None:
    made = await keys.a.post("/workflows", json=_waiting("c1", A))
    assert made.status_code == 202 and made.json()["namespace"] == A
    # Naming no namespace, a key bound to exactly one creates in it.
    home = await keys.a.post("/workflows", json=_waiting("c2"))
    assert home.status_code == 202 and home.json()["namespace"] == A
    again = await keys.a.post("/workflows", json=_waiting("c2"))
    assert again.status_code == 200  # the same config: recognised, not a conflict

    for config in (_waiting("c3", B), _waiting("c4", "default")):
        body = _problem(await keys.a.post("/workflows", json=config), 403,
                        "namespace-forbidden")
        assert body["field"] == "config.namespace"
    # A key bound to more than one namespace names one: by default it is `default`.
    _problem(await keys.two.post("/workflows", json=_waiting("c5")), 403,
             "namespace-forbidden")
    shared = await keys.two.post("/workflows", json=_waiting("c6", "shared"))
    assert shared.status_code == 202 and shared.json()["namespace"] == "shared"
    for wid in ("c3", "c4", "c5"):
        with pytest.raises(WorkflowNotFound):
            await client.get(wid)

    # Batches (admin): the same rules.
    batch = {"inputs": [{}], "workflow": {"name": "m", "steps": [
        {"id": "t", "kind": "transform", "output": 1}]}}
    _problem(await keys.a_admin.post("/batches", json={**batch, "id": "xb",
                                                       "namespace": B}),
             403, "namespace-forbidden")
    with pytest.raises(BatchNotFound):
        await client.get_batch("xb")
    mine = await keys.a_admin.post("/batches", json={**batch, "id": "ab"})
    assert mine.status_code == 202 and mine.json()["namespace"] == A
    # The key for every namespace creates anywhere; naming none is `default`.
    anywhere = await keys.root.post("/workflows", json=_waiting("c7", B))
    assert anywhere.status_code == 202 and anywhere.json()["namespace"] == B
    plain = await keys.root.post("/workflows", json=_waiting("c8"))
    assert plain.status_code == 202 and plain.json()["namespace"] == "default"


# -- definitions ----------------------------------------------------------------------------


async def test_definitions_are_per_namespace_over_http(keys: Keys) -> None:
    theirs = {"steps": [{"id": "t", "kind": "transform", "output": "b's"}]}
    ours = {"steps": [{"id": "t", "kind": "transform", "output": "a's"}]}
    put = await keys.b.put("/definitions/greet", json=theirs)  # home: team-b
    assert put.status_code == 201 and put.json()["namespace"] == B
    assert put.headers["location"] == f"/definitions/greet/versions/1?namespace={B}"
    assert (await keys.root.get(put.headers["location"])).json()["namespace"] == B

    # Another namespace's definition answers as a missing one, under every route.
    a = keys.a
    for path in ("/definitions/{}", "/definitions/{}?namespace=team-b",
                 "/definitions/{}/versions/1?namespace=team-b"):
        await _same_as_missing(a, "GET", path, "greet", code="definition-not-found")
    assert (await a.get("/definitions")).json()["definitions"] == []
    assert (await a.get("/definitions", params={"namespace": B})).json()[
        "definitions"] == []
    # Neither written to nor run from there.
    _problem(await a.put("/definitions/greet?namespace=team-b", json=ours), 403,
             "namespace-forbidden")
    _problem(await a.post("/workflows", json={"definition": "greet", "namespace": B}),
             403, "namespace-forbidden")
    _problem(await a.post("/workflows", json={"definition": "greet", "id": "r0"}),
             404, "definition-not-found")  # team-a has no greet (yet)
    info = (await keys.b.get("/definitions/greet")).json()
    assert [v["version"] for v in info["versions"]] == [1]

    # In its own namespace the key stores, reads, lists and runs its own.
    assert (await a.put("/definitions/greet?namespace=team-a", json=ours)).status_code == 201
    assert (await a.get("/definitions/greet")).json()["latest"]["config"]["steps"][0][
        "output"] == "a's"
    one = await a.get("/definitions/greet/versions/1")
    assert one.status_code == 200 and one.json()["namespace"] == A
    listed = (await a.get("/definitions")).json()["definitions"]
    assert [(d["namespace"], d["name"]) for d in listed] == [(A, "greet")]
    ran = await a.post("/workflows", json={"definition": "greet", "id": "r1"})
    assert ran.status_code == 202, ran.text
    assert ran.json()["namespace"] == A
    # Every namespace's, for the key bound to all of them.
    every = (await keys.root.get("/definitions")).json()["definitions"]
    assert sorted((d["namespace"], d["name"]) for d in every) == [(A, "greet"), (B, "greet")]
    only_b = (await keys.root.get("/definitions", params={"namespace": B})).json()
    assert [d["namespace"] for d in only_b["definitions"]] == [B]
    bad = await a.get("/definitions", params={"namespace": "not a token"})
    _problem(bad, 400, "validation-failed")


# -- lists, bulk, batches -------------------------------------------------------------------


async def test_lists_and_bulk_hold_only_the_keys_namespaces(
        keys: Keys, client: NatsflowClient) -> None:
    for wid, ns in (("la1", A), ("la2", A), ("lb1", B), ("ld1", None)):
        await client.create(_waiting(wid, ns))
    assert await _listed(keys.root, 4) == ["la1", "la2", "lb1", "ld1"]
    assert await _listed(keys.a, 2) == ["la1", "la2"]
    assert await _listed(keys.b, 1) == ["lb1"]
    assert await _listed(keys.a, 0, namespace=B) == []  # a filter never widens
    assert await _listed(keys.root, 1, namespace=B) == ["lb1"]
    assert await _listed(keys.root, 1, namespace="default") == ["ld1"]
    _problem(await keys.a.get("/workflows", params={"namespace": "a.b"}), 400,
             "validation-failed")

    bulk = keys.a_admin
    dry = await bulk.post("/workflows/bulk/stop", json={"all": True, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert sorted(dry.json()["ids"]) == ["la1", "la2"]
    elsewhere = await bulk.post("/workflows/bulk/stop", json={"filter": {"namespace": B}})
    assert (elsewhere.json()["matched"], elsewhere.json()["ids"]) == (0, [])
    done = (await bulk.post("/workflows/bulk/stop", json={"all": True})).json()
    assert (done["matched"], done["done"]) == (2, 2)
    for wid in ("la1", "la2"):
        assert (await client.wait(wid, timeout=30)).status.state == "stopped"  # type: ignore[union-attr]
    for wid in ("lb1", "ld1"):
        assert (await client.get(wid)).status.state == "running"  # type: ignore[union-attr]
    # The key for every namespace selects them all.
    every = await keys.root.post("/workflows/bulk/stop", json={"all": True, "dry_run": True})
    assert sorted(every.json()["ids"]) == ["la1", "la2", "lb1", "ld1"]


async def test_a_batch_in_another_namespace_is_not_found(
        keys: Keys, client: NatsflowClient) -> None:
    await client.create_batch({"id": "bb", "namespace": B, "inputs": [{}], "workflow": {
        "name": "m", "steps": [{"id": "w", "kind": "wait", "signal": "go"}]}})
    for method, path in (("GET", "/batches/{}"), ("POST", "/batches/{}/stop")):
        await _same_as_missing(keys.a_admin, method, path, "bb", code="batch-not-found")
    assert (await client.get_batch("bb")).status.state == "running"  # type: ignore[union-attr]
    await _same_as_missing(keys.a_admin, "GET", "/workflows/{}", "bb-0")
    assert (await keys.root.get("/batches/bb")).json()["namespace"] == B
    assert (await keys.root.post("/batches/bb/stop")).status_code == 202


# -- the event feed (SSE) -------------------------------------------------------------------


async def _feed_until(base: str, key: str, last: str) -> set[str]:
    """The workflow ids of ``GET /events?deliver=all`` up to ``last``'s terminal event."""
    seen: set[str] = set()
    async with httpx.AsyncClient(base_url=base, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as http, \
            http.stream("GET", "/events", params={"deliver": "all"}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                event = Event.model_validate_json(line.removeprefix("data: "))
                seen.add(event.workflow_id)
                if event.workflow_id == last and event.type == "workflow.completed":
                    return seen
    raise AssertionError("the stream ended")


async def test_the_event_feed_carries_only_the_keys_namespaces(
        engine: object, settings: NatsSettings, nc: Client,
        client: NatsflowClient) -> None:
    # team-b's events are in the stream before team-a's last one.
    for wid, ns in (("fb", B), ("fd", None), ("fa", A)):
        await client.create(_quick(wid, ns))
        await client.wait(wid, timeout=30)
    store = await KeyStore.open(nc.jetstream(), Topology(settings.subjects))
    a_key = await _key(store, Scope.WORKFLOWS_READ, namespaces=[A])
    root_key = await _key(store, Scope.WORKFLOWS_READ, namespaces=["*"])
    port = free_port()
    app = create_app(settings, nc=nc, heartbeat=0.2)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           ws="none", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        await asyncio.wait_for(app.state.keys.ready.wait(), 10)
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.wait_for(_feed_until(base, a_key, "fa"), 30) == {"fa"}
        assert await asyncio.wait_for(_feed_until(base, root_key, "fa"), 30) == {
            "fa", "fb", "fd"}
    finally:
        server.should_exit = True
        await serving


# -- without keys ---------------------------------------------------------------------------


async def test_without_keys_every_namespace_is_seen(
        engine: object, indexer: IndexService, settings: NatsSettings, nc: Client,
        client: NatsflowClient) -> None:
    app = create_app(settings, auth=None, nc=nc, request_timeout=5.0)
    async with _as(app, None) as http:
        for config in (_waiting("o_a", A), _waiting("o_b", B), _waiting("o_d")):
            assert (await http.post("/workflows", json=config)).status_code == 202
        assert (await http.get("/workflows/o_d")).json()["namespace"] == "default"
        assert (await http.get("/workflows/o_b")).json()["namespace"] == B
        assert await _listed(http, 3) == ["o_a", "o_b", "o_d"]
        assert await _listed(http, 1, namespace=A) == ["o_a"]
        assert (await http.post("/workflows/o_b/signals/go")).status_code == 202
        assert (await client.wait("o_b", timeout=30)).status.state == "completed"  # type: ignore[union-attr]
        put = await http.put("/definitions/d?namespace=team-b", json={"steps": [
            {"id": "t", "kind": "transform", "output": 1}]})
        assert put.status_code == 201 and put.json()["namespace"] == B
        assert (await http.get("/definitions/d?namespace=team-b")).status_code == 200
        _problem(await http.get("/definitions/d"), 404, "definition-not-found")
