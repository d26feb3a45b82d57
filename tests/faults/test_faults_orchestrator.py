"""An orchestrator process SIGKILLed again and again; nothing accepted is lost.

Real processes: ``natsflow orchestrator`` and ``natsflow worker natsflow.demo:worker``
against the session's nats-server, restarted by the test whenever they die. Small DAGs
(some with a retried flaky step) are submitted both through the NATS API and
fire-and-forget on the submit subject while the orchestrator dies

- at a named crash point of its shell (``NATSFLOW_CRASH_AT``): ``before-save`` (decided,
  nothing written), ``after-save`` (record and outbox written, nothing published),
  ``after-publish`` (published, inbox messages not acked);
- at random moments (a seeded killer, 0.5-1.5 s after each restart became ready).

Then every workflow must complete and pass the promise checker (promises 1-3).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from fault_procs import (
    ENGINE_ACK_WAIT,
    Service,
    drain,
    killer,
    not_completed,
    oracle,
    submit_all,
    supervise,
    wait_ready,
    workload,
)

from natsflow.client import NatsflowClient
from transport.connect import NatsSettings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

#: Workflows per scenario: enough that every crash lands on work in flight, few enough
#: that the file stays near a minute and a half on a shared 2-core machine.
N = 200
#: Deaths per scenario; afterwards the orchestrator runs clean so the work can drain.
CRASHES = 3


def orchestrator(settings: NatsSettings, log_dir: Path, *, crash_at: str | None = None,
                 seed: int = 0) -> Service:
    """``natsflow orchestrator``; its first CRASHES lives armed with ``crash_at``."""

    def crash_env(life: int) -> dict[str, str]:
        if crash_at is None or life >= CRASHES:
            return {}
        return {"NATSFLOW_CRASH_AT": crash_at, "NATSFLOW_CRASH_SEED": str(seed * 100 + life)}

    return Service("orchestrator", ["orchestrator"], settings, log_dir,
                   env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)}, env_of_life=crash_env,
                   ready_line="orchestrator ready")


def demo_worker(settings: NatsSettings, log_dir: Path) -> Service:
    return Service("worker", ["worker", "natsflow.demo:worker"], settings, log_dir,
                   ready_line="serving")


def fault_client(nc_client: NatsflowClient) -> NatsflowClient:
    """The test's client with a short API timeout: a crash must not stall a retry long."""
    return NatsflowClient(nc_client.nc, nc_client.subjects, timeout=3.0)


async def run_and_check(client: NatsflowClient, orch: Service, configs: list[dict[str, object]]
                        ) -> None:
    """Wait for the work to drain, then hold every workflow to promises 1-3."""
    ids = [str(c["id"]) for c in configs]
    still_open = await drain(client, ids, timeout=60)
    statuses, violations = await oracle(client, ids)
    assert not violations, "\n".join(map(str, violations[:20])) + "\n" + orch.logs()
    assert not still_open, sorted(still_open)[:10]
    assert len(statuses) == len(configs)
    assert not not_completed(statuses), not_completed(statuses)


@pytest.mark.parametrize("point", ["before-save", "after-save", "after-publish"])
async def test_every_workflow_completes_when_the_orchestrator_dies_at_a_crash_point(
        point: str, settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    client = fault_client(client)
    configs = workload(N, seed=len(point))
    orch = orchestrator(settings, tmp_path, crash_at=f"{point}:0.02", seed=len(point))
    worker = demo_worker(settings, tmp_path)
    async with supervise(orch, worker):
        await wait_ready([orch, worker])
        await submit_all(client, configs, rate=60)
        await run_and_check(client, orch, configs)
    # Every armed life died by its own SIGKILL at the point, with work in hand.
    assert orch.deaths == [-signal.SIGKILL] * CRASHES, orch.logs()
    assert worker.deaths == []


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_workflow_completes_when_the_orchestrator_is_killed_at_random(
        seed: int, settings: NatsSettings, client: NatsflowClient, tmp_path: Path) -> None:
    client = fault_client(client)
    configs = workload(N, seed=seed)
    orch = orchestrator(settings, tmp_path)
    worker = demo_worker(settings, tmp_path)
    loop = asyncio.get_running_loop()
    submitted = asyncio.Event()
    async with supervise(orch, worker):
        await wait_ready([orch, worker])
        kills = asyncio.create_task(killer(orch, seed=seed, until=submitted))
        # Slow enough that the kills fall while workflows keep arriving and running: a
        # life is its start-up (about 2.3 s here, more on a loaded machine) and 0.5-1.5 s,
        # so 200 workflows at 12/s (16.7 s) leave room for CRASHES kills and more.
        await submit_all(client, configs, rate=12)
        submitted.set()
        done_submitting = loop.time()
        killed_at = await kills
        await run_and_check(client, orch, configs)
    assert len(killed_at) >= CRASHES, killed_at
    assert all(t < done_submitting for t in killed_at)
    assert orch.deaths == [-signal.SIGKILL] * len(killed_at)
    assert worker.deaths == []
