"""Schemathesis against the gateway's own OpenAPI document, with API keys on (issue 15).

The gateway runs in-process (ASGI, in schemathesis' own event-loop thread), on a real
nats-server with an orchestrator, the index and the demo worker running in another
thread. Every operation gets a few generated requests, sent with an admin key: none may
answer a 5xx, and each answer must match the document. Then every operation is sent
once without a key: all but the open ones answer 401.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import schemathesis
from helpers import running_demo_worker
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from contracts.keys import CreateKeyRequest, Scope
from gateway import create_app
from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect
from transport.keys import KeyStore
from transport.streams import Topology

_T = TypeVar("_T")
#: Seconds a generated request may take; an event stream is cut there (it never ends).
READ_TIMEOUT = 2.0


class _LoopThread:
    """An event loop in a thread of its own, for the services the gateway talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 60.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _start_services(settings: NatsSettings, stack: AsyncExitStack) -> None:
    from orchestrator import Orchestrator
    from orchestrator.index import IndexService

    orch = Orchestrator(settings, stop_grace=2.0)
    await orch.start()
    stack.push_async_callback(orch.stop)
    index = IndexService(settings)
    await index.start()
    stack.push_async_callback(index.stop)
    await stack.enter_async_context(running_demo_worker(settings))


async def _admin_key(settings: NatsSettings) -> str:
    nc = await connect(settings, name="schemathesis-keys")
    try:
        store = await KeyStore.open(nc.jetstream(), Topology(settings.subjects))
        made = await store.create(CreateKeyRequest(name="fuzz", scopes=[Scope.ADMIN],
                                                   namespaces=["*"]), now=datetime.now(UTC))
        return made.key
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def deployment(nats_server: EmbeddedNats) -> Iterator[tuple[OpenApiSchema, dict[str, str]]]:
    """The gateway's schema (bound to the in-process app) and an admin key's header."""
    settings = NatsSettings(servers=[nats_server.url], prefix="st" + uuid.uuid4().hex[:10])
    services = _LoopThread()
    stack = AsyncExitStack()
    try:
        services.run(_start_services(settings, stack))
        headers = {"Authorization": f"Bearer {services.run(_admin_key(settings))}"}
        app = create_app(settings, request_timeout=5.0, heartbeat=0.5)
        yield schemathesis.openapi.from_asgi("/openapi.json", app), headers
    finally:
        services.run(stack.aclose())
        services.close()


@pytest.fixture
def gateway_schema(deployment: tuple[OpenApiSchema, dict[str, str]]) -> OpenApiSchema:
    """The schema, its app started and ready: connected to NATS, keys loaded.

    schemathesis' plugin ends the app's lifespan after each test; the first request of
    the next one starts it again, and the app connects and loads the keys in the
    background (answering 503 until then), so each test waits for that first.
    """
    schema, headers = deployment
    probe = schema["/workflows/{workflow_id}"]["GET"].Case(
        path_parameters={"workflow_id": "warm-up"})
    deadline = time.monotonic() + 30
    while probe.call(headers=headers).status_code != 404:
        assert time.monotonic() < deadline, "the gateway never became ready"
        time.sleep(0.05)
    return schema


@pytest.fixture(scope="module")
def admin(deployment: tuple[OpenApiSchema, dict[str, str]]) -> dict[str, str]:
    return deployment[1]


#: The operations in the document anyone may call (docs, metrics and AsyncAPI are not in it).
OPEN = {("GET", "/healthz"), ("GET", "/readyz")}
#: Every operation in the gateway's OpenAPI document (no NATS needed to build it).
OPERATIONS = sorted((method.upper(), path) for path, item in
                    create_app(NatsSettings(), auth=None).openapi()["paths"].items()
                    for method in item)


#: Checks left out, and why: the gateway checks more than the JSON Schema can say, and
#: refuses it with a documented 400 (a workflow needs steps and a valid graph, an event
#: filter has a grammar, a label is `key:value`, a bulk operation needs a filter or
#: `"all": true`), which `positive_data_acceptance` would count as a failure.
EXCLUDED_CHECKS = [positive_data_acceptance]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=str)
def test_no_generated_request_gets_a_5xx(gateway_schema: OpenApiSchema, admin: dict[str, str],
                                         method: str, path: str) -> None:
    # schemathesis' own pytest integration (from_fixture) reads a private attribute pytest
    # 9 no longer has; the same cases, driven through hypothesis directly.
    operation = gateway_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=6, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case: Case) -> None:
        case.call_and_validate(headers=admin, timeout=READ_TIMEOUT,
                               excluded_checks=EXCLUDED_CHECKS)

    check()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=str)
def test_no_operation_is_served_without_a_key(gateway_schema: OpenApiSchema, method: str,
                                              path: str) -> None:
    open_ = (method, path) in OPEN
    operation = gateway_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=3, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case: Case) -> None:
        # As generated (schemathesis makes up a bearer token for a secured operation),
        # then with no Authorization header at all.
        generated = case.call(timeout=READ_TIMEOUT)
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "authorization"}
        bare = case.call(timeout=READ_TIMEOUT)
        for response in (generated, bare):
            if open_:
                assert response.status_code != 401, response.text
            else:
                assert response.status_code == 401, response.text
                (challenge,) = response.headers["www-authenticate"]
                assert challenge.startswith('Bearer realm="natsflow"')
        if not open_:
            assert bare.headers["www-authenticate"] == ['Bearer realm="natsflow"']

    check()
