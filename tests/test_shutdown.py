"""Graceful shutdown on SIGTERM: stop taking work, hand back what is unfinished, exit in time.

Real processes (``natsflow orchestrator``, ``natsflow worker``) on the session nats-server.
What a stopped process held is visible in JetStream: after a graceful exit its
consumers have nothing left pending an ack, so another replica takes the work at once
instead of after the ack wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import running_demo_worker
from nats.aio.client import Client

from natsflow._cli_common import settings_env
from natsflow.client import NatsflowClient
from natsflow.promises import check_all
from orchestrator import Orchestrator
from transport.connect import NatsSettings
from transport.streams import ENGINE_ACK_WAIT, TASK_ACK_WAIT


@pytest.fixture
def spawn(settings: NatsSettings, tmp_path: Path) -> Iterator[
        list[tuple[subprocess.Popen[bytes], Path]]]:
    """Processes started by the test, killed at the end whatever happened."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    yield procs
    for proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start(procs: list[tuple[subprocess.Popen[bytes], Path]], settings: NatsSettings,
           log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings)}
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "natsflow.cli", *args], env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    procs.append((proc, log))
    return proc


async def _terminate(proc: subprocess.Popen[bytes], bound: float) -> tuple[int, float]:
    """SIGTERM, then (exit code, seconds it took)."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, proc.wait, bound + 10)
    return code, time.monotonic() - began


def _chain(i: int, seconds: float) -> dict[str, object]:
    return {"name": "chain", "id": f"term-{i}", "steps": [
        {"id": f"s{k}", "task": "demo.sleep", "input": {"seconds": seconds},
         **({"depends_on": [f"s{k - 1}"]} if k else {})} for k in range(3)]}


async def test_a_terminated_orchestrator_hands_back_its_work_and_exits_in_time(
        settings: NatsSettings, nc: Client, client: NatsflowClient, tmp_path: Path,
        spawn: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    proc = _start(spawn, settings, tmp_path / "orch.log", "orchestrator")
    deadline = time.monotonic() + 30
    while not await client.ping(timeout=0.5):
        assert proc.poll() is None, (tmp_path / "orch.log").read_text()
        assert time.monotonic() < deadline, "the orchestrator did not come up"
    ids = []
    async with running_demo_worker(settings):
        for i in range(40):
            ids.append((await client.create(_chain(i, 0.2))).id)
        await asyncio.sleep(0.6)  # results now stream into the engine
        code, took = await _terminate(proc, bound=12)
        log = (tmp_path / "orch.log").read_text()
        assert code == 0, log
        assert took < 12, f"took {took:.1f}s to stop\n{log}"
        assert "stopped serving" in log
        # What it held was handed back: the next replica finishes everything well inside
        # the engine consumer's ack wait, which is when held messages would come back.
        async with Orchestrator(settings, builtins=False):
            for wid in ids:
                final = (await client.wait(wid, timeout=ENGINE_ACK_WAIT - 10)).status
                assert final is not None and final.state == "completed", final
            checked, violations = await check_all(client, ids)
            assert checked == 40 and violations == []


async def test_a_terminated_worker_hands_its_running_task_to_another(
        settings: NatsSettings, nc: Client, client: NatsflowClient, engine: object,
        tmp_path: Path, spawn: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    proc = _start(spawn, settings, tmp_path / "worker.log", "worker", "natsflow.demo:worker")
    reply = await client.create({"name": "long", "id": "long-1", "steps": [
        {"id": "nap", "task": "demo.sleep", "input": {"seconds": 60, "steps": 60}}]})
    deadline = time.monotonic() + 30
    while (await client.get(reply.id)).status.step("nap").state != "running":  # type: ignore[union-attr]
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        assert time.monotonic() < deadline, "the worker did not take the task"
        await asyncio.sleep(0.1)
    # The handler outlives the worker's 10 s grace: it is cancelled and handed back.
    code, took = await _terminate(proc, bound=16)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log
    assert took < 16, f"took {took:.1f}s to stop\n{log}"
    assert "stopped serving" in log
    # Handed back, not left to the ack wait: another worker has it within seconds.
    async with running_demo_worker(settings) as probe:
        await asyncio.wait_for(probe.started.wait(), timeout=TASK_ACK_WAIT - 20)
    status = (await client.get(reply.id)).status
    assert status is not None and status.step("nap").attempts == 1  # the same attempt


async def test_an_orchestrator_cancelled_while_it_starts_still_stops(
        settings: NatsSettings, nc: Client) -> None:
    # bench/_serve.py stops a service by cancelling Orchestrator.run(). A cancel that came
    # while start() was still going (its API already answers pings; the schedules,
    # triggers and limiter still starting) skipped stop(): the process hung with every
    # loop and the connection open (a benchmark's stop waited 15 s, then SIGKILL).
    client = NatsflowClient(nc, settings.subjects)
    orchestrator = Orchestrator(settings)
    run = asyncio.ensure_future(orchestrator.run())
    deadline = time.monotonic() + 60
    while not await client.ping(timeout=0.2):
        assert time.monotonic() < deadline and not run.done()
        await asyncio.sleep(0.01)
    run.cancel()
    await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)
    assert orchestrator.nc is not None and orchestrator.nc.is_closed
    await asyncio.sleep(0.2)
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()
            and "/orchestrator/" in getattr(getattr(task.get_coro(), "cr_code", None),
                                            "co_filename", "")]
    assert left == [], left


async def test_an_idle_orchestrator_stops_without_waiting_out_its_fetches(
        settings: NatsSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    # stop() waited for the engine and timer loops' fetches to time out (1 s each time,
    # up to the 5 s bound with a longer fetch): it halts them instead.
    monkeypatch.setattr("orchestrator.service.FETCH_WAIT", 60.0)
    orchestrator = Orchestrator(settings)
    await orchestrator.start()
    await asyncio.sleep(0.3)  # the loops are waiting in their fetches
    began = time.monotonic()
    await asyncio.wait_for(orchestrator.stop(), 60)
    assert time.monotonic() - began < 4  # the loops' bound is 5 s
