"""A schedule firing every second while orchestrators are SIGKILLed and nats-server is
SIGKILLed and restarted: every fire time of the window runs exactly once.

Real processes: two ``natsflow orchestrator`` processes (restarted whenever they die, as
systemd would) against a nats-server of the test's own. The schedule fires every second
for ``NATSFLOW_SCHEDULE_PROOF_SECONDS`` seconds (20 by default, to keep CI short; 60 is
the issue's minute). During the window the orchestrators are killed in turn and the
server is killed and started again; afterwards every fire time of the window has exactly
one workflow (its id is the schedule's and the fire time's), started once and completed,
and no other workflow of the schedule exists.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fault_nats import NatsNode
from fault_procs import ENGINE_ACK_WAIT, Service, supervise, wait_ready
from helpers import read_events

from contracts.errors import NatsflowError
from contracts.models import WorkflowState
from contracts.schedules import run_id
from natsflow.client import NatsflowClient
from natsflow.schedule_client import ScheduleClient
from transport.connect import NatsSettings, connect

SECONDS = int(os.environ.get("NATSFLOW_SCHEDULE_PROOF_SECONDS", "20"))
pytestmark = [pytest.mark.faults, pytest.mark.timeout(90 + 2 * SECONDS)]

QUICK = {"name": "tick", "steps": [{"id": "t", "kind": "transform", "output": "${input}"}]}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NatsNode]:
    server = NatsNode(tmp_path / "store").start()
    try:
        yield server
    finally:
        server.close()


def orchestrator(name: str, settings: NatsSettings, log_dir: Path) -> Service:
    return Service(name, ["orchestrator"], settings, log_dir,
                   env={"NATSFLOW_ACK_WAIT": str(ENGINE_ACK_WAIT)},
                   ready_line="orchestrator ready")


async def create_until_stored(schedules: ScheduleClient, body: dict[str, object]) -> None:
    for _ in range(100):
        try:
            await schedules.create(body)
            return
        except NatsflowError:
            await asyncio.sleep(0.2)
    raise AssertionError("the schedule was never stored")


async def chaos(a: Service, b: Service, node: NatsNode, *, start: datetime,
                end: datetime) -> list[str]:
    """Kill an orchestrator or the server every few seconds of the window."""
    done: list[str] = []
    step = 0
    while True:
        at = start + timedelta(seconds=2 + 3 * step)
        if at >= end - timedelta(seconds=1):
            return done
        await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()))
        what = step % 4
        if what in (0, 2):
            victim = a if what == 0 else b
            victim.kill()
            done.append(f"kill {victim.name}")
        elif what == 1:
            await asyncio.to_thread(node.end, signal.SIGKILL)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(node.start)
            done.append("restart nats-server")
        else:
            a.kill()
            b.kill()  # both at once: no orchestrator for a moment
            done.append("kill both")
        step += 1


async def test_every_fire_time_runs_exactly_once_through_kills_and_a_server_restart(
        node: NatsNode, prefix: str, tmp_path: Path) -> None:
    settings = NatsSettings(servers=[node.url], prefix=prefix)
    a = orchestrator("orch-a", settings, tmp_path)
    b = orchestrator("orch-b", settings, tmp_path)
    async with supervise(a, b):
        await wait_ready([a, b])
        nc = await connect(settings, name="test", timeout=None)
        try:
            client = NatsflowClient(nc, settings.subjects, timeout=3.0)
            schedules = ScheduleClient(client)
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
            end = start + timedelta(seconds=SECONDS - 1)
            await create_until_stored(schedules, {
                "name": "proof", "workflow": {"config": QUICK}, "overlap": "allow_all",
                "catchup_window": 120,
                "spec": {"every": 1, "start": start.isoformat(), "end": end.isoformat()}})
            done = await chaos(a, b, node, start=start, end=end)
            assert "restart nats-server" in done and "kill orch-a" in done, done
            expected = {run_id("default", "proof", start + timedelta(seconds=i))
                        for i in range(SECONDS)}

            async def states() -> dict[str, WorkflowState | None]:
                out: dict[str, WorkflowState | None] = {}
                for wid in sorted(expected):
                    try:
                        reply = await client.get(wid)
                        out[wid] = reply.status.state if reply.status else None
                    except NatsflowError:
                        out[wid] = None
                return out

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while True:
                now = await states()
                if all(s is WorkflowState.COMPLETED for s in now.values()):
                    break
                assert loop.time() < deadline, (
                    {k: v for k, v in now.items() if v is not WorkflowState.COMPLETED},
                    a.logs(), b.logs())
                await asyncio.sleep(0.5)
            # No workflow of the schedule beyond the window's fire times.
            kv = await nc.jetstream().key_value(settings.subjects.workflows_bucket)
            ours = {k for k in await kv.keys() if k.startswith("proof-")}
            assert ours == expected
            # Each started once (one workflow.started event per run), and ended once.
            started = await read_events(nc, settings.subjects, "*", "workflow.started",
                                        terminals=None, count=SECONDS, linger=1.0)
            assert Counter(e.workflow_id for e in started) == Counter(
                {wid: 1 for wid in expected})
            ended = await read_events(nc, settings.subjects, "*", "workflow.completed",
                                      terminals=None, count=SECONDS, linger=1.0)
            assert Counter(e.workflow_id for e in ended) == Counter(
                {wid: 1 for wid in expected})
        finally:
            await nc.close()
    assert -signal.SIGKILL in a.deaths and -signal.SIGKILL in b.deaths
