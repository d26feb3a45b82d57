"""Listing a KV bucket: every live key, every time (no watcher start-up race)."""

from __future__ import annotations

import asyncio
import os

import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from orchestrator.index import WorkflowIndex
from orchestrator.kvscan import scan


async def test_scan_lists_every_live_key_and_skips_deleted_ones(nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="scan_" + os.urandom(4).hex()))
    assert await scan(kv) == []
    await asyncio.gather(*(kv.put(f"k.{i}", str(i).encode()) for i in range(1500)))
    await kv.put("k.7", b"seven")  # a newer revision wins
    await kv.delete("k.8")
    await kv.purge("k.9")
    await kv.put("other.1", b"x")
    for _ in range(20):  # the watcher's race showed up in a few percent of listings
        entries = await scan(kv, "k.*")
        by_key = {e.key: e.value for e in entries}
        assert len(entries) == len(by_key) == 1498
        assert by_key["k.7"] == b"seven" and by_key["k.1499"] == b"1499"
        assert "k.8" not in by_key and "k.9" not in by_key and "other.1" not in by_key
    for key in ("k.0", "k.7", "k.1499"):  # each with its current revision
        assert next(e for e in entries if e.key == key).revision == (await kv.get(key)).revision
    keys = await scan(kv, keys_only=True)
    assert {e.key for e in keys} == set(by_key) | {"other.1"}
    assert all(e.value == b"" for e in keys)
    info = await js.consumers_info(f"KV_{kv._name}")
    assert info == []  # each scan removes its consumer


async def test_the_index_is_ready_only_with_every_summary_in(nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="idx_" + os.urandom(4).hex()))
    empty = WorkflowIndex(kv)
    await empty.start()
    await asyncio.wait_for(empty.ready.wait(), 5)
    await empty.stop()
    summary = ('{{"id":"wf-{i}","name":"n","state":"completed",'
               '"created_at":"2026-11-29T00:00:{s:02d}Z","labels":{{}}}}')
    await asyncio.gather(*(kv.put(f"wf-{i}", summary.format(i=i, s=i % 60).encode())
                           for i in range(800)))
    await kv.delete("wf-3")
    for _ in range(5):
        index = WorkflowIndex(kv)
        await index.start()
        await asyncio.wait_for(index.ready.wait(), 10)
        assert len(index) == 799
        await index.stop()


async def test_a_scan_whose_consumer_goes_away_fails_with_a_reason_instead_of_hanging(
        nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="gone_" + os.urandom(4).hex()))
    await asyncio.gather(*(kv.put(f"k.{i}", b"v") for i in range(10)))
    real = js.add_consumer

    async def created_then_deleted(stream: str, **kw: object) -> object:
        info = await real(stream, **kw)  # type: ignore[arg-type]
        await js.delete_consumer(stream, info.name)
        return info

    kv._js.add_consumer = created_then_deleted  # type: ignore[method-assign]
    try:
        with pytest.raises(TimeoutError, match="stalled with 10 left"):
            await asyncio.wait_for(scan(kv, fetch_timeout=1.0), 10)
    finally:
        del kv._js.add_consumer
    assert len(await scan(kv)) == 10
