"""A three-node JetStream cluster in Docker containers, failing as containers fail.

The nodes are containers of the scratch nats-server image (natsflow/containers.py) on
the host's network. Two ``natsflow orchestrator --replicas 3`` processes and two ledger
workers run against all three URLs, as compose.yaml runs them, while workflows keep
arriving. Then, one after the other: the INBOX stream's leader is ``docker kill``ed and
started again (same container, same store); the workflows bucket's leader is
``docker pause``d for ten seconds and unpaused; the TASKS stream's leader is
``docker restart``ed. A majority stays up throughout, so every workflow the API
accepted completes, passes the promise checker, and the ledger holds one side effect
per idempotency key of a first attempt (a redelivered task may repeat one, under the
same key: promise 4).

Needs a Docker engine (``.ci/run`` starts one). Without one these tests FAIL, unless
NATSFLOW_SKIP_CONTAINERS=1 says to skip them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_env import require_docker
from fault_procs import (
    ENGINE_ACK_WAIT,
    TASK_ACK_WAIT,
    Service,
    create_until_accepted,
    drain,
    not_completed,
    oracle,
    supervise,
    wait_ready,
)
from ledger_worker import LEDGER_TASK, read_ledger
from nats.aio.client import Client

from contracts.subjects import Subjects
from natsflow.client import NatsflowClient
from natsflow.containers import NatsContainerCluster
from transport.connect import NatsSettings, connect

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

#: Workflows per second while the faults come (two ledger steps each).
RATE = 3.0
#: At most this many workflows, however long the faults take.
MOST = 300
#: Seconds a node stays paused.
PAUSE = 10.0


@pytest.fixture
def cluster() -> Iterator[NatsContainerCluster]:
    require_docker()
    with NatsContainerCluster(3, name="faults") as found:
        yield found


@pytest.fixture
async def cluster_nc(cluster: NatsContainerCluster, prefix: str
                     ) -> AsyncIterator[tuple[NatsSettings, Client]]:
    settings = NatsSettings(servers=cluster.urls, prefix=prefix)
    nc = await connect(settings, name="fault-test")
    try:
        yield settings, nc
    finally:
        await nc.close()


def ledger_flow(i: int) -> dict[str, Any]:
    return {"name": "ledger", "id": f"wf-{i}", "steps": [
        {"id": "one", "task": LEDGER_TASK, "input": {"n": i}},
        {"id": "two", "task": LEDGER_TASK, "depends_on": ["one"],
         "input": {"n": "${steps.one.output.n}"}}]}


async def leader(nc: Client, stream: str, *, timeout: float = 30.0) -> str:
    """The server name of ``stream``'s leader, once it has one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            info = await nc.jetstream().stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        except Exception:  # no leader yet: the request times out or errors
            pass
        assert loop.time() < deadline, f"{stream} has no leader after {timeout}s"
        await asyncio.sleep(0.2)


async def submit_steadily(client: NatsflowClient, until: asyncio.Event) -> dict[str, int]:
    """Create workflows through the API at RATE a second until ``until`` is set (at most
    MOST), each retried until answered; the ids accepted, with the tries each took."""
    tries: dict[str, asyncio.Task[int]] = {}
    while not until.is_set() and len(tries) < MOST:
        config = ledger_flow(len(tries))
        tries[config["id"]] = asyncio.create_task(create_until_accepted(client, config))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), 1.0 / RATE)
    return {wid: await task for wid, task in tries.items()}


async def run_with_faults(cluster: NatsContainerCluster, nc: Client, s: Subjects
                          ) -> list[str]:
    """Kill, pause and restart a leader each, while the workload goes on; what was done."""
    done: list[str] = []
    await asyncio.sleep(3.0)
    killed = cluster.node(await leader(nc, s.inbox_stream))
    await asyncio.to_thread(killed.kill)
    done.append(f"kill {killed.name}")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(killed.start)
    await asyncio.to_thread(cluster.wait_formed)

    paused = cluster.node(await leader(nc, f"KV_{s.workflows_bucket}"))
    await asyncio.to_thread(paused.pause)
    done.append(f"pause {paused.name}")
    await asyncio.sleep(PAUSE)
    await asyncio.to_thread(paused.unpause)
    await asyncio.to_thread(cluster.wait_formed)

    restarted = cluster.node(await leader(nc, s.tasks_stream))
    await asyncio.to_thread(restarted.restart)
    done.append(f"restart {restarted.name}")
    return done


async def test_a_cluster_of_containers_killed_paused_and_restarted_loses_nothing(
        cluster: NatsContainerCluster, cluster_nc: tuple[NatsSettings, Client],
        tmp_path: Path) -> None:
    settings, nc = cluster_nc
    client = NatsflowClient(nc, settings.subjects, timeout=3.0)
    s = settings.subjects
    ledger = tmp_path / "ledger.jsonl"
    orchs = [Service(f"orchestrator{r}", ["orchestrator", "--replicas", "3"], settings,
                     tmp_path, env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                     ready_line="orchestrator ready") for r in range(2)]
    workers = [Service(f"worker{w}", ["worker", "ledger_worker:worker"], settings, tmp_path,
                       env={"LEDGER_PATH": str(ledger), "LEDGER_ACK_WAIT": str(TASK_ACK_WAIT)},
                       ready_line="serving") for w in range(2)]
    services = (*orchs, *workers)
    # The orchestrators first: a worker that came first would create the TASKS stream at
    # R1, and the orchestrators exit while they scale it to R3 (issue 14, item 20).
    async with supervise(*orchs):
        await wait_ready(orchs, timeout=60)
        async with supervise(*workers):
            await wait_ready(workers, timeout=60)
            for stream in (s.inbox_stream, s.tasks_stream, f"KV_{s.workflows_bucket}"):
                info = await nc.jetstream().stream_info(stream)
                assert info.config.num_replicas == 3, (stream, info.config.num_replicas)
            stop = asyncio.Event()
            submitting = asyncio.create_task(submit_steadily(client, stop))
            faults = await run_with_faults(cluster, nc, s)
            await asyncio.sleep(2.0)  # workflows after the last fault too
            assert not submitting.done(), f"{MOST} workflows before {faults} were done"
            stop.set()
            tries = await submitting
            ids = sorted(tries)
            still_open = await drain(client, ids, timeout=60)
            statuses, violations = await oracle(client, ids)
    logs = "".join(svc.logs() for svc in services)
    assert not violations, "\n".join(map(str, violations[:20])) + logs
    assert not still_open and not not_completed(statuses), (not_completed(statuses), faults)
    assert all(svc.deaths == [] for svc in services), (
        {svc.name: svc.deaths for svc in services}, logs)
    assert max(tries.values()) > 1, "no create was ever refused: the faults reached no client"

    # Exactly once per idempotency key: each step ran as its first attempt, its result
    # is the one the workflow kept, and nothing ran that no workflow asked for.
    for wid, status in statuses.items():
        assert status is not None
        assert [(st.id, st.attempts) for st in status.steps] == [("one", 1), ("two", 1)], wid
        output = status.step("two").output
        assert output is not None and output["n"] == int(wid.removeprefix("wf-")), output
    effects = Counter(e["idempotency_key"] for e in read_ledger(ledger)
                      if e["phase"] == "effect")
    assert sorted(effects) == sorted(f"{wid}:{step}:1" for wid in ids
                                     for step in ("one", "two")), effects
