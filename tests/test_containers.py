"""natsflow.containers: nats-server in Docker containers, killed, paused and restarted.

Needs a Docker engine (see docker_env.py); the fault suite's cluster scenario is in
tests/faults/test_faults_containers.py.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from docker_env import require_docker
from nats.aio.client import Client

from natsflow.containers import LABEL, NatsContainer, build_nats_image, nats_container


@pytest.fixture
def server() -> Iterator[NatsContainer]:
    require_docker()
    with nats_container(name="single") as node:
        yield node


@pytest.fixture
async def nc(server: NatsContainer) -> AsyncIterator[Client]:
    # Reconnect for ever: the server goes away and comes back in this test.
    client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    yield client
    await client.close()


async def messages(nc: Client, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.messages)


async def test_a_server_in_a_container_keeps_its_store_across_kill_and_restart(
        server: NatsContainer, nc: Client) -> None:
    assert server.url.startswith("nats://127.0.0.1:")
    js = nc.jetstream()
    await js.add_stream(name="S", subjects=["s.>"])
    await js.publish("s.1", b"one")

    await asyncio.to_thread(server.kill)
    assert server.state() == "exited"
    with pytest.raises(ConnectionRefusedError):  # nothing listens on its port
        socket.create_connection(("127.0.0.1", server.port), timeout=1.0).close()
    await asyncio.to_thread(server.start)  # the same container: same port, same store
    await js.publish("s.2", b"two", timeout=10)
    assert await messages(nc, "S") == 2

    await asyncio.to_thread(server.restart)  # SIGTERM, then start
    await js.publish("s.3", b"three", timeout=10)
    assert await messages(nc, "S") == 3


async def test_a_paused_server_answers_nothing_until_unpaused(
        server: NatsContainer, nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name="P", subjects=["p.>"])
    await asyncio.to_thread(server.pause)
    try:
        assert server.state() == "paused"
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("p.1", b"frozen", timeout=1.0)
    finally:
        await asyncio.to_thread(server.unpause)
    await js.publish("p.2", b"thawed", timeout=10)
    # The publish sent while frozen waited in the socket and was stored once thawed.
    assert await messages(nc, "P") == 2


def test_a_closed_container_is_gone_and_the_image_is_built_once() -> None:
    require_docker()
    from testcontainers.core.docker_client import DockerClient

    tag = build_nats_image()
    assert build_nats_image() == tag  # the second call finds it
    with nats_container(name="gone") as node:
        name = node.container_name
    docker = DockerClient().client
    try:
        left = docker.containers.list(all=True, filters={"label": LABEL, "name": name})
        assert left == []
        (image,) = [i for i in docker.images.list() if tag in i.tags]
        # FROM scratch: one layer, the binary; nothing came from a registry.
        assert len(image.history()) == 2  # COPY, plus the metadata-only ENTRYPOINT
    finally:
        docker.close()


def test_the_example_in_the_deploy_doc_runs() -> None:
    require_docker()
    text = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
    (block,) = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    exec(compile(block, "docs/deploy.md", "exec"), {"__name__": "deploy_doc"})
