"""The orchestrator warns when it runs streams of one replica on a NATS cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from natsflow.embedded import EmbeddedNats, free_port
from orchestrator.service import Orchestrator, cluster_of
from transport.connect import NatsSettings


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    """Three nats-servers routed into the cluster ``C1``."""
    ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in ports)
    servers = [EmbeddedNats(tmp_path / f"n{i}", extra_args=[
        "-n", f"n{i}", "--cluster_name", "C1", "--cluster", f"nats://127.0.0.1:{port}",
        "--routes", routes]) for i, port in enumerate(ports)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_cluster_of_names_the_cluster_or_none(nats_server: EmbeddedNats,
                                                    cluster: list[EmbeddedNats]) -> None:
    for url, expected in ((nats_server.url, None), (cluster[0].url, "C1")):
        nc = await nats.connect(url)
        js = nc.jetstream()
        name = "CLU_" + str(free_port())
        for _ in range(100):  # a new cluster elects its JetStream leader first
            try:
                await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
                break
            except nats.errors.Error:
                await asyncio.sleep(0.2)
        assert await cluster_of(js, name) == expected
        await nc.close()


async def test_one_replica_on_a_cluster_is_warned_of(cluster: list[EmbeddedNats],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    orch = Orchestrator(NatsSettings(servers=[cluster[0].url], prefix="clu"),
                        builtins=False, webhooks=False)
    with caplog.at_level(logging.WARNING, logger="natsflow.orchestrator"):
        await asyncio.wait_for(orch.start(), 60)
        await orch.stop()
    assert any("NATS is a cluster (C1)" in r.getMessage() for r in caplog.records)
