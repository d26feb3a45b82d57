"""Crash safety of the shell: a failure between the state write and the outbox publish.

The orchestrator's publish step is made to fail once, after the record (with its outbox)
was written: exactly what a crash at that point leaves behind. The redelivered message
must find the outbox and publish it — once, with no duplicated event — both within
JetStream's duplicate window and long after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import assert_history, read_events, running_demo_worker
from nats.aio.client import Client

from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from orchestrator.records import Effect, EventEffect
from transport.connect import NatsSettings

WORKFLOW = {"name": "crashy", "id": "crashy1", "input": {"n": 1},
            "steps": [{"id": "a", "task": "demo.echo", "input": {"v": "${input.n}"}},
                      {"id": "b", "task": "demo.echo", "depends_on": ["a"],
                       "input": {"w": "${steps.a.output.v}"}}]}


def crash_once_before_publishing(orch: Orchestrator, *, step: str,
                                 events_first: bool = False) -> list[int]:
    """Make the publish of the outbox that dispatches ``step`` fail once, after the
    record (with its outbox) was saved.

    The step's task itself has left with the save (it leaves early); what fails is
    everything sent after the save. With ``events_first`` the crash comes after the
    outbox's events were published.
    """
    processor = orch.processor
    assert processor is not None
    real = processor.outbox.send_all
    crashes: list[int] = []

    def dispatches(effect: Effect) -> bool:
        return (isinstance(effect, EventEffect) and effect.event.step_id == step
                and effect.event.type.value == "step.dispatched")

    async def send_all(key: str, effects: Sequence[Effect], trace: Any,
                       routed: Any = None) -> list[Any]:
        if any(dispatches(e) for e in effects) and not crashes:
            crashes.append(len(effects))
            if events_first:
                acks = await real(key, [e for e in effects if e.kind == "event"], trace,
                                  routed)
                await asyncio.gather(*acks)
            raise ConnectionError("simulated crash after the state write")
        return await real(key, effects, trace, routed)

    processor.outbox.send_all = send_all  # type: ignore[method-assign]
    return crashes


async def test_outbox_written_but_not_published_is_published_on_redelivery(
        settings: NatsSettings, nc: Client) -> None:
    async with Orchestrator(settings) as orch, running_demo_worker(settings):
        crashes = crash_once_before_publishing(orch, step="b")
        client = NatsflowClient(nc, settings.subjects)
        await client.create(WORKFLOW)
        events = await read_events(nc, settings.subjects, "crashy1", timeout=30)
    assert crashes, "the simulated crash happened"
    assert_history(events, terminal=None)
    assert [e.type.value for e in sorted(events, key=lambda e: e.seq)][-1] == \
        "workflow.completed"
    assert sum(1 for e in events if e.type.value == "step.dispatched" and e.step_id == "b") == 1


@pytest.mark.parametrize("events_first", [False, True])
async def test_an_outbox_older_than_the_dedupe_window_publishes_only_missing_events(
        settings: NatsSettings, nc: Client, events_first: bool) -> None:
    async with Orchestrator(settings) as orch, running_demo_worker(settings):
        processor = orch.processor
        assert processor is not None
        # The server must forget message ids quickly too, or its dedupe would hide a
        # duplicated event; the redelivery comes 0.5 s after the crash.
        await nc.jetstream().update_stream(
            dataclasses.replace(orch.topology.events(), duplicate_window=0.2))
        crashes = crash_once_before_publishing(orch, step="b", events_first=events_first)
        real_clock = processor.clock
        shifted: list[Any] = []

        def clock() -> datetime:
            # Once the crash has happened, time jumps ten minutes ahead: the stored
            # outbox is now far older than JetStream's duplicate window.
            if crashes and not shifted:
                shifted.append(True)
            return real_clock() + (timedelta(minutes=10) if shifted else timedelta())

        processor.clock = clock
        client = NatsflowClient(nc, settings.subjects)
        await client.create(WORKFLOW)
        events = await read_events(nc, settings.subjects, "crashy1", timeout=30)
    assert crashes and shifted
    assert_history(events)
    assert events[-1].time > datetime.now(UTC)  # decided on the shifted clock
    assert sum(1 for e in events if e.type.value == "step.dispatched" and e.step_id == "b") == 1
