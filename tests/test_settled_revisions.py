"""A record that left the cache is not republished if this process saw its outbox stored.

The orchestrator keeps one bit per record revision whose whole outbox it saw acked on
its current connection (``orchestrator.cache.SettledRevisions``). A record read back
from KV at such a revision is not republished, as a cached copy would not be; any
other revision is (``tests/test_outbox_inputs.py``, and, for what a reconnect forgets,
``tests/faults/test_faults_nats.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import read_events
from nats.aio.client import Client
from test_outbox_inputs import WAIT, outcomes, published

from contracts.models import Event
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator, runtime
from orchestrator.cache import RecordCache, SettledRevisions
from transport.connect import NatsSettings


def test_revisions_are_kept_a_bit_each_and_the_oldest_chunk_leaves_first() -> None:
    bits = SettledRevisions(max_chunks=2)
    size = SettledRevisions.CHUNK_BITS
    assert 5 not in bits and bits.nbytes == 0
    bits.add(5)
    bits.add(size + 1)  # a second chunk
    assert 5 in bits and size + 1 in bits
    assert 4 not in bits and 6 not in bits and size not in bits and size + 2 not in bits
    assert bits.nbytes == 2 * size // 8
    bits.add(2 * size + 7)  # a third: the lowest chunk leaves
    assert 5 not in bits and size + 1 in bits and 2 * size + 7 in bits
    bits.add(3)  # older than everything kept: not kept
    assert 3 not in bits and bits.nbytes == 2 * size // 8
    bits.clear()
    assert size + 1 not in bits and bits.nbytes == 0


def test_a_cleared_cache_holds_nothing_and_counts_nothing() -> None:
    cache: RecordCache[Any] = RecordCache(budget=100)
    cache.put("a", 1, object(), 30)
    cache.clear()
    assert len(cache) == 0 and cache.used == 0 and "a" not in cache


async def signal_parked(settings: NatsSettings, nc: Client, wid: str, *,
                        forget: bool) -> tuple[list[Event], list[Event], dict[str, float]]:
    """Park ``wid`` with an orchestrator whose cache holds nothing (every record leaves
    it as soon as it is written), then signal it (after clearing the orchestrator's bits,
    if ``forget``); (its parked events, the events published after, the outcomes)."""
    client = NatsflowClient(nc, settings.subjects)
    async with Orchestrator(settings) as orch:
        assert orch.processor is not None
        await client.create({**WAIT, "id": wid})
        parked = await read_events(nc, settings.subjects, wid, terminals=None,
                                   count=3, timeout=20, linger=0.2)
        assert wid not in orch.processor.wf.cache
        if forget:
            orch.processor.wf.settled.clear()
        async with published(nc, settings, wid) as seen:
            await client.signal(wid, "go")
            await read_events(nc, settings.subjects, wid, timeout=20, linger=0.2)
        return parked, seen, outcomes(orch)


async def test_a_record_that_left_the_cache_is_not_republished_when_its_outbox_was_seen_stored(
        settings: NatsSettings, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "RecordCache", lambda: RecordCache(budget=0))
    parked, seen, counts = await signal_parked(settings, nc, "seen1", forget=False)
    assert counts == {}, "no stored outbox was taken for unpublished"
    last = max(e.seq for e in parked)
    assert seen and all(e.seq > last for e in seen), [(e.seq, e.type.value) for e in seen]
    assert seen[-1].type.value == "workflow.completed"


async def test_a_record_whose_outbox_this_process_did_not_see_stored_is_republished(
        settings: NatsSettings, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, but the bit is not there (as for a record another replica wrote)."""
    monkeypatch.setattr(runtime, "RecordCache", lambda: RecordCache(budget=0))
    parked, seen, counts = await signal_parked(settings, nc, "unseen1", forget=True)
    assert counts == {"republished": 1.0}
    assert {e.seq for e in parked} <= {e.seq for e in seen}, "the parked outbox went again"
    assert seen[-1].type.value == "workflow.completed"
