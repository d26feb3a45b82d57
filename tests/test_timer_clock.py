"""Timers and the wall clock: absolute deadlines, waited out by JetStream, not by us.

A timer message carries its absolute due time. When it is not due, the orchestrator
hands it back to JetStream with a delay (``nak(delay)``), and JetStream keeps that
delay: a restart does not lose it, and a jump of the orchestrator's wall clock does
not make every parked timer fire at once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from natsflow.client import NatsflowClient
from natsflow.promises import check_all
from orchestrator import Orchestrator
from transport.connect import NatsSettings


class JumpingClock:
    """UTC now, plus an offset the test can change."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def _states(client: NatsflowClient, ids: list[str]) -> list[str]:
    out = []
    for wid in ids:
        status = (await client.get(wid)).status
        assert status is not None
        out.append(status.state.value)
    return out


async def _steps(client: NatsflowClient, ids: list[str]) -> list[str]:
    out = []
    for wid in ids:
        status = (await client.get(wid)).status
        assert status is not None
        out.append(status.step("nap").state.value)
    return out


async def test_a_clock_jump_does_not_fire_parked_timers_and_a_restart_keeps_them(
        settings: NatsSettings, client: NatsflowClient) -> None:
    clock = JumpingClock()
    ids = [f"nap-{i}" for i in range(10)]
    orch = Orchestrator(settings, builtins=False, webhooks=False, clock=clock)
    await orch.start()
    try:
        for wid in ids:
            await client.create({"name": "nap", "id": wid, "steps": [
                {"id": "nap", "kind": "sleep", "duration": 4}]})
        began = time.monotonic()
        deadline = began + 10
        while await _steps(client, ids) != ["waiting"] * len(ids):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the timer loop has seen each timer and parked it
        clock.offset = timedelta(hours=6)
        await orch.stop()
        # A restarted orchestrator, its clock hours ahead: the parked timers still wait.
        orch = Orchestrator(settings, builtins=False, webhooks=False, clock=clock)
        await orch.start()
        await asyncio.sleep(max(0.0, began + 2.5 - time.monotonic()))
        assert await _states(client, ids) == ["running"] * len(ids)
        for wid in ids:
            final = (await client.wait(wid, timeout=20)).status
            assert final is not None and final.state == "completed"
        took = time.monotonic() - began
        assert took >= 3.5, f"the sleeps ended after {took:.1f}s, before their 4s"
        checked, violations = await check_all(client, ids)
        assert checked == len(ids) and violations == []
    finally:
        await orch.stop()
