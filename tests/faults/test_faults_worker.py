"""A worker process SIGKILLed mid-task, and after its side effect but before its result.

Two ``natsflow worker ledger_worker:worker`` processes serve ``ledger.write`` (restarted
when they die) next to a real ``natsflow orchestrator``. The first execution of every
task dies; JetStream redelivers the task after the worker consumer's ack wait, the other
(or restarted) worker finishes it, and the workflow completes. The ledger then shows
both executions under one idempotency key with one attempt number (promise 4), and
every workflow passes the promise checker (promises 1-3).
"""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from fault_procs import (
    ENGINE_ACK_WAIT,
    TASK_ACK_WAIT,
    Service,
    drain,
    not_completed,
    oracle,
    supervise,
    wait_ready,
)
from helpers import read_dead_letters
from ledger_worker import LEDGER_TASK, read_ledger

from natsflow.client import NatsflowClient
from transport.connect import NatsSettings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

#: Workflows per scenario; each has two tasks, and each task's first execution dies.
N = 3


def ledger_flow(i: int) -> dict[str, Any]:
    return {"name": "ledger", "id": f"wf-{i}", "steps": [
        {"id": "one", "task": LEDGER_TASK, "input": {"n": i}},
        {"id": "two", "task": LEDGER_TASK, "depends_on": ["one"],
         "input": {"n": "${steps.one.output.n}"}}]}


@pytest.mark.parametrize("crash", ["mid-task", "after-write"])
async def test_a_task_whose_worker_died_is_redelivered_under_the_same_idempotency_key(
        crash: str, settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    orch = Service("orchestrator", ["orchestrator"], settings, tmp_path,
                   env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                   ready_line="orchestrator ready")
    workers = [Service(f"worker{w}", ["worker", "ledger_worker:worker"], settings, tmp_path,
                       env={"LEDGER_PATH": str(ledger), "LEDGER_CRASH": crash,
                            "LEDGER_ACK_WAIT": str(TASK_ACK_WAIT)},
                       ready_line="serving")
               for w in range(2)]
    configs = [ledger_flow(i) for i in range(N)]
    ids = [c["id"] for c in configs]
    async with supervise(orch, *workers):
        await wait_ready([orch, *workers])
        s = settings.subjects
        js = client.nc.jetstream()
        # The short ack waits are the deployment's: every life declares them again.
        tasks = await js.consumer_info(s.tasks_stream, s.worker_consumer(LEDGER_TASK))
        engine = await js.consumer_info(s.inbox_stream, s.engine_consumer)
        assert (tasks.config.ack_wait, engine.config.ack_wait) == (TASK_ACK_WAIT,
                                                                   ENGINE_ACK_WAIT)
        for config in configs:
            await client.create(config)
        still_open = await drain(client, ids, timeout=60)
        statuses, violations = await oracle(client, ids)
    logs = "".join(w.logs() for w in workers)
    assert not violations, "\n".join(map(str, violations)) + logs
    assert not still_open and not not_completed(statuses), not_completed(statuses)

    # Redelivered, not retried: one attempt per step, and the output of the survivor.
    for wid, status in statuses.items():
        assert status is not None
        assert [(s.id, s.attempts) for s in status.steps] == [("one", 1), ("two", 1)], wid
    # Every first execution died by its own SIGKILL (a worker runs one task at a time).
    deaths = [code for w in workers for code in w.deaths]
    assert deaths == [-signal.SIGKILL] * (2 * N), deaths
    dead = {pid for w in workers for pid in w.dead_pids}

    runs: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for entry in read_ledger(ledger):
        assert entry["attempt"] == 1, entry
        runs[entry["idempotency_key"]][entry["phase"]].append(entry["pid"])
    assert sorted(runs) == sorted(f"{wid}:{step}:1" for wid in ids for step in ("one", "two"))
    for key, phases in runs.items():
        begun = phases["begin"]
        assert len(begun) == 2, (key, phases)  # the execution that died, the redelivery
        died, finished = begun
        assert died in dead and finished != died, (key, phases, dead)
        if crash == "after-write":
            # The side effect was done twice under one key: the worker must dedupe by it.
            assert phases["effect"] == [died, finished], (key, phases)
        else:
            assert phases["effect"] == [finished], (key, phases)


async def test_a_task_that_kills_every_worker_ends_in_the_dead_letter_stream(
        settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    """Promise 5: a poison task is given up after bounded deliveries, with a reason,
    and the work of other task types goes on meanwhile."""
    ledger = tmp_path / "ledger.jsonl"
    orch = Service("orchestrator", ["orchestrator"], settings, tmp_path,
                   env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                   ready_line="orchestrator ready")
    poisoned = Service("poisoned", ["worker", "ledger_worker:worker"], settings, tmp_path,
                       env={"LEDGER_PATH": str(ledger), "LEDGER_CRASH": "always",
                            "LEDGER_ACK_WAIT": str(TASK_ACK_WAIT),
                            "LEDGER_MAX_DELIVERIES": "3"},
                       ready_line="serving")
    demo = Service("demo", ["worker", "natsflow.demo:worker"], settings, tmp_path,
                   ready_line="serving")
    async with supervise(orch, poisoned, demo):
        await wait_ready([orch, poisoned, demo])
        await client.create({"name": "poison", "id": "poison-1", "steps": [
            {"id": "deadly", "task": LEDGER_TASK, "input": {"n": 1}}]})
        others = [f"fine-{i}" for i in range(5)]
        for wid in others:
            await client.create({"name": "fine", "id": wid, "steps": [
                {"id": "add", "task": "demo.add", "input": {"a": 1, "b": 2}}]})
        assert not await drain(client, [*others, "poison-1"], timeout=60)
        statuses, violations = await oracle(client, [*others, "poison-1"])
        letters = await read_dead_letters(client.nc, settings.subjects, count=1)
    assert not violations, "\n".join(map(str, violations))
    assert not not_completed({w: statuses[w] for w in others})
    status = statuses["poison-1"]
    assert status is not None and status.state == "failed"
    error = status.step("deadly").error
    assert error is not None and error.code == "too-many-deliveries"
    assert status.step("deadly").attempts == 1  # given up, not retried forever
    ((subject, letter),) = letters
    assert subject == settings.subjects.dlq("too-many-deliveries")
    assert letter.reason.code == "too-many-deliveries" and letter.deliveries == 4
    # Three executions died; the fourth delivery was not run.
    assert len([e for e in read_ledger(ledger) if e["phase"] == "begin"]) == 3
    assert poisoned.deaths == [-signal.SIGKILL] * 3
