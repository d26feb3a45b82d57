"""A stored outbox whose inputs were all acked is not republished (issue 17).

A record names the INBOX sequences of the inputs whose transitions made its outbox
(``outbox_inputs``). An input is acked only once that outbox is stored, and the INBOX is
a work queue, so when none of them is left in the stream the outbox was published and a
reader from KV need not send it again. Each test here fails if that check is broken
either way: skipping an outbox that was not published, or republishing one that was.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from helpers import read_events
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.models import Event
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator, letters, runtime
from orchestrator.outbox import Part
from transport.connect import NatsSettings

WAIT = {"name": "parked", "steps": [{"id": "park", "kind": "wait", "signal": "go"}]}


def outcomes(orch: Orchestrator) -> dict[str, float]:
    """``natsflow_stale_outboxes_total`` by outcome."""
    return {s.labels["outcome"]: s.value for m in orch.metrics.registry.collect()
            for s in m.samples if s.name == "natsflow_stale_outboxes_total"}


@asynccontextmanager
async def published(nc: Client, settings: NatsSettings, wid: str) -> AsyncIterator[list[Event]]:
    """Every event message published for ``wid`` while inside, as a core subscriber sees
    it: a republished event shows up here even when the stream drops it as a duplicate."""
    seen: list[Event] = []

    async def got(msg: Msg) -> None:
        seen.append(Event.model_validate_json(msg.data))
    sub = await nc.subscribe(settings.subjects.events_of(wid), cb=got)
    try:
        yield seen
    finally:
        await nc.flush()
        await sub.unsubscribe()


async def park(settings: NatsSettings, nc: Client, wid: str) -> list[Event]:
    """Create ``wid`` and see it wait, with an orchestrator that is then stopped (so the
    next one reads the record from KV, not from its cache)."""
    async with Orchestrator(settings):
        await NatsflowClient(nc, settings.subjects).create({**WAIT, "id": wid})
        return await read_events(nc, settings.subjects, wid, terminals=None,
                                 count=3, timeout=20, linger=0.2)


async def stored(nc: Client, settings: NatsSettings, wid: str) -> tuple[dict[str, Any], int]:
    kv = await nc.jetstream().key_value(settings.subjects.workflows_bucket)
    entry = await kv.get(wid)
    assert entry.value is not None and entry.revision is not None
    return json.loads(entry.value), entry.revision


async def signal_and_finish(settings: NatsSettings, nc: Client, wid: str
                            ) -> tuple[list[Event], dict[str, float]]:
    """Signal the parked ``wid`` with a fresh orchestrator; (events published meanwhile,
    that orchestrator's outcomes)."""
    async with Orchestrator(settings) as orch, published(nc, settings, wid) as seen:
        await NatsflowClient(nc, settings.subjects).signal(wid, "go", {"by": "test"})
        await read_events(nc, settings.subjects, wid, timeout=20, linger=0.2)
        return seen, outcomes(orch)


async def test_a_record_whose_inputs_were_acked_is_not_republished(
        settings: NatsSettings, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "SKIP_SETTLED", True)  # off by default: see there
    parked = await park(settings, nc, "acked1")
    assert [e.type.value for e in parked][-1] == "step.waiting"
    record, _ = await stored(nc, settings, "acked1")
    assert record["outbox"] and record["outbox_inputs"], "the record names its inputs"
    seen, counts = await signal_and_finish(settings, nc, "acked1")
    assert counts == {"settled": 1.0}
    # Nothing of the parked transition's outbox went out again, only what came after.
    last = max(e.seq for e in parked)
    assert seen and all(e.seq > last for e in seen), [(e.seq, e.type.value) for e in seen]
    assert seen[-1].type.value == "workflow.completed"


async def test_a_record_without_inputs_still_loads_and_is_republished(
        settings: NatsSettings, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record written before outbox_inputs existed (or with an input of no sequence)."""
    monkeypatch.setattr(runtime, "SKIP_SETTLED", True)  # with it off, nothing names inputs
    parked = await park(settings, nc, "old1")
    record, revision = await stored(nc, settings, "old1")
    del record["outbox_inputs"]
    kv = await nc.jetstream().key_value(settings.subjects.workflows_bucket)
    await kv.update("old1", json.dumps(record).encode(), last=revision)
    seen, counts = await signal_and_finish(settings, nc, "old1")
    assert counts == {"republished": 1.0}
    last = max(e.seq for e in parked)
    assert any(e.seq <= last for e in seen), "the parked outbox went out again"
    assert seen[-1].type.value == "workflow.completed"


class CrashAfterSave:
    """Crash points that fail a transition right after its record is written, as a
    crash there would leave it (the outbox stored, nothing of it published)."""

    def __init__(self, times: int) -> None:
        self.left = times

    def reach(self, point: str) -> None:
        if point == "after-save" and self.left > 0:
            self.left -= 1
            raise ConnectionError("simulated crash after the state write")


async def test_a_record_whose_input_is_still_in_the_stream_is_republished(
        settings: NatsSettings, nc: Client) -> None:
    crash = CrashAfterSave(times=1)
    async with Orchestrator(settings, crash_points=crash) as orch, \
            published(nc, settings, "crashed1") as seen:
        await NatsflowClient(nc, settings.subjects).create({**WAIT, "id": "crashed1"})
        # Only the republication of the stored outbox can publish these: the
        # redelivered create changes nothing.
        events = await read_events(nc, settings.subjects, "crashed1", terminals=None,
                                   count=3, timeout=20, linger=0.2)
        counts = outcomes(orch)
    assert crash.left == 0
    assert [e.type.value for e in events][-1] == "step.waiting"
    assert counts.get("republished", 0) >= 1 and "settled" not in counts
    assert seen


@contextmanager
def give_up_after(deliveries: int) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(letters, "MAX_DELIVERIES", deliveries)
        mp.setattr(runtime, "MAX_DELIVERIES", deliveries)
        yield


async def test_an_input_dead_lettered_after_its_save_leaves_the_outbox_to_be_republished(
        settings: NatsSettings, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one way an input leaves the stream unacked after its record was written: it
    keeps failing and is dead-lettered. The record is first written again naming no
    inputs, so the next reader republishes its outbox rather than take it as sent."""
    monkeypatch.setattr(runtime, "SKIP_SETTLED", True)  # what it guards: off by default
    with give_up_after(3):
        async with Orchestrator(settings, crash_points=CrashAfterSave(times=1)) as orch:
            processor = orch.processor
            assert processor is not None

            async def failing_flush(*args: Any) -> None:
                raise ConnectionError("simulated: the outbox cannot be published")
            processor.outbox.flush_stale = failing_flush  # type: ignore[method-assign]
            await NatsflowClient(nc, settings.subjects).create({**WAIT, "id": "poison1"})
            for _ in range(200):
                record, _ = await stored_or_none(nc, settings, "poison1")
                dlq = await nc.jetstream().stream_info(settings.subjects.dlq_stream)
                if record is not None and dlq.state.messages >= 1:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the create was not dead-lettered")
    assert record is not None and record["outbox"]
    assert record.get("outbox_inputs") is None
    async with Orchestrator(settings) as orch:
        await NatsflowClient(nc, settings.subjects).signal("poison1", "go", {})
        events = await read_events(nc, settings.subjects, "poison1", timeout=20, linger=0.2)
        counts = outcomes(orch)
    assert counts == {"republished": 1.0}
    assert [e.type.value for e in events][-1] == "workflow.completed"
    assert "step.waiting" in [e.type.value for e in events]


async def stored_or_none(nc: Client, settings: NatsSettings, wid: str
                         ) -> tuple[dict[str, Any] | None, int]:
    kv = await nc.jetstream().key_value(settings.subjects.workflows_bucket)
    try:
        entry = await kv.get(wid)
    except Exception:
        return None, 0
    return (json.loads(entry.value) if entry.value else None), entry.revision or 0


def _delivered(seq: int) -> Msg:
    """An INBOX delivery of stream sequence ``seq`` (as its ack subject tells)."""
    return Msg(_client=None, subject="p.wf.x",  # type: ignore[arg-type]
               reply=f"$JS.ACK.P_INBOX.engine.1.{seq}.{seq}.1700000000000000000.0")


async def test_a_record_names_the_inputs_of_the_parts_it_carries() -> None:
    """A transition saved while an earlier one's acks are still out carries that one's
    effects, so its record must name that one's inputs too (they are acked only once
    those effects are stored); one input without a sequence makes them all unknown."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    earlier = Part([], {}, done, inputs=(5, 6))
    item = runtime.Item("wf", "x", None, _delivered(42), None)
    own = runtime._inputs_of([item])
    assert runtime._outbox_inputs(own, []) == (42,)
    assert runtime._outbox_inputs(own, [earlier]) == (5, 6, 42)
    assert runtime._outbox_inputs(own, [Part([], {}, done, inputs=None)]) is None
    assert runtime._outbox_inputs(
        runtime._inputs_of([item, runtime.Item("wf", "x", None, None, None)]), []) is None
    done.cancel()
