"""Two and three orchestrator processes on one deployment; one is SIGKILLed mid-run.

The replicas split the partitions' engine and timer consumers between them (the
members bucket), and share the shared consumers, the KV records (compare-and-set) and
the API's queue group. One of them dies with work in hand and is not restarted: the
others take its partitions once its member key has aged out, and what it held once the
engine ack wait has passed, and every workflow completes and passes the promise checker
(promises 1-3).
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_procs import (
    ENGINE_ACK_WAIT,
    Service,
    drain,
    not_completed,
    oracle,
    submit_all,
    supervise,
    wait_ready,
    workload,
)

from contracts.subjects import PARTITIONS, partition_of
from natsflow.client import NatsflowClient
from transport.connect import NatsSettings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

N = 200


@pytest.mark.parametrize("replicas", [2, 3])
async def test_every_workflow_completes_when_one_of_several_replicas_is_killed(
        replicas: int, settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    client = NatsflowClient(client.nc, client.subjects, timeout=3.0)
    orchs = [Service(f"orchestrator{r}", ["orchestrator"], settings, tmp_path,
                     env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                     ready_line="orchestrator ready")
             for r in range(replicas)]
    worker = Service("worker", ["worker", "natsflow.demo:worker"], settings, tmp_path,
                     ready_line="serving")
    configs = workload(N, seed=replicas, sleepy=0.5)
    ids = [str(c["id"]) for c in configs]
    victim, *survivors = orchs
    async with supervise(*orchs, worker):
        await wait_ready([*orchs, worker])
        submitting = asyncio.create_task(submit_all(client, configs, rate=50))
        open_ = await _a_fifth_done(client, ids)
        victim.restart = False
        victim.kill()
        await submitting
        still_open = await drain(client, ids, timeout=60)
        statuses, violations = await oracle(client, ids)
    assert len(open_) >= 0.5 * N, "the replica died after the work was done: nothing proven"
    assert not violations, "\n".join(map(str, violations[:20]))
    assert not still_open and not not_completed(statuses), not_completed(statuses)
    assert victim.deaths == [-signal.SIGKILL]
    assert all(o.deaths == [] for o in survivors) and worker.deaths == []
    # The victim had finished workflows of its own before it died: the work was shared.
    assert " completed" in victim.logs(), victim.logs()


async def _a_fifth_done(client: NatsflowClient, ids: list[str]) -> set[str]:
    """Wait until a fifth of the workflows is finished; the ids still open then."""
    while True:
        open_ = await drain(client, ids, timeout=0.2)
        if len(open_) <= 0.8 * N:
            return open_
        await asyncio.sleep(0.1)


def _shares(svc: Service) -> list[set[int]]:
    """The partitions each ``owning partitions`` line of ``svc``'s logs names, in order."""
    lines = re.findall(r"owning partitions ([0-9,]*|none) ", svc.logs(tail=100_000))
    return [set() if s == "none" else {int(k) for k in s.split(",")} for s in lines]


async def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_killed_owners_partitions_are_taken_over_and_every_workflow_completes_once(
        settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    client = NatsflowClient(client.nc, client.subjects, timeout=3.0)
    orchs = [Service(f"orchestrator{r}", ["orchestrator"], settings, tmp_path,
                     env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                     ready_line="orchestrator ready")
             for r in range(2)]
    worker = Service("worker", ["worker", "natsflow.demo:worker"], settings, tmp_path,
                     ready_line="serving")
    configs = workload(N, seed=7, sleepy=0.5)
    ids = [str(c["id"]) for c in configs]
    victim, survivor = orchs
    every = set(range(PARTITIONS))
    async with supervise(*orchs, worker):
        # Both start at once: which sees the other first is a race (alone, an
        # orchestrator owns every partition: tests/test_partitions.py).
        await wait_ready([victim, survivor, worker])

        def split() -> bool:
            a, b = (_shares(o)[-1] if _shares(o) else set() for o in orchs)
            return bool(a) and bool(b) and a.isdisjoint(b) and a | b == every

        await _until(split, "the two never split the partitions")
        lost = _shares(victim)[-1]
        submitting = asyncio.create_task(submit_all(client, configs, rate=50))
        open_ = await _a_fifth_done(client, ids)
        victim.restart = False
        victim.kill()
        # Nothing answers its liveness subject now: the survivor takes its partitions.
        await _until(lambda: _shares(survivor)[-1] == every,
                     f"the survivor never took partitions {sorted(lost)}")
        await submitting
        still_open = await drain(client, ids, timeout=60)
        statuses, violations = await oracle(client, ids)
    assert len(open_) >= 0.5 * N, "the owner died after the work was done: nothing proven"
    assert {partition_of(i) for i in open_} & lost, "none of its partitions had work left"
    assert not violations, "\n".join(map(str, violations[:20]))
    assert not still_open and not not_completed(statuses), not_completed(statuses)
    assert victim.deaths == [-signal.SIGKILL]
    assert survivor.deaths == [] and worker.deaths == []
    assert " completed" in victim.logs(), victim.logs()  # it had done its share meanwhile
