"""Partitions of the engine's work: the subjects, the hash, and their consumers."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig, SubjectTransform

from contracts.subjects import PARTITIONS, Subjects, partition_of
from orchestrator import Orchestrator
from transport.connect import NatsSettings


def test_partition_of_is_fnv1a_32_of_the_utf8_id_mod_8() -> None:
    # The FNV-1a test vectors (32 bits): "" -> 0x811c9dc5, "a" -> 0xe40c292c,
    # "foobar" -> 0xbf9cf968.
    assert partition_of("") == 0x811C9DC5 % 8
    assert partition_of("a") == 0xE40C292C % 8
    assert partition_of("foobar") == 0xBF9CF968 % 8
    assert partition_of("foobar", 5) == 0xBF9CF968 % 5
    ids = [f"wf-{i}" for i in range(4000)]
    counts = [sum(partition_of(i) == k for i in ids) for k in range(PARTITIONS)]
    assert min(counts) > 400  # spread: 500 each on average


def test_per_workflow_subjects_carry_the_partition_and_parse_both_ways() -> None:
    s = Subjects("acme.nf")
    k = partition_of("wf1")
    assert s.workflow_command("wf1") == f"acme.nf.cmd.wf.{k}.wf1"
    assert s.result("wf1") == f"acme.nf.result.{k}.wf1"
    assert s.timer("wf1") == f"acme.nf.timer.{k}.wf1"
    for subject, kind in [(s.workflow_command("wf1"), "wf"), (s.result("wf1"), "result"),
                          (s.timer("wf1"), "timer"), ("acme.nf.cmd.wf.wf1", "wf"),
                          ("acme.nf.result.wf1", "result"), ("acme.nf.timer.wf1", "timer")]:
        assert s.kind_of(subject) == (kind, "wf1")
    for bad in ("acme.nf.result.8.wf1", "acme.nf.result.x.wf1", "acme.nf.cmd.wf.1.2.wf1"):
        with pytest.raises(ValueError):
            s.kind_of(bad)


def _matches(subject: str, pattern: str) -> bool:
    a, b = subject.split("."), pattern.split(".")
    if b[-1] == ">":
        return len(a) >= len(b) and all(p in ("*", t) for p, t in zip(b[:-1], a, strict=False))
    return len(a) == len(b) and all(p in ("*", t) for p, t in zip(b, a, strict=True))


def test_each_inbox_subject_is_read_by_exactly_one_consumer() -> None:
    """The INBOX is a work queue: consumers' filters may not overlap, and a subject no
    consumer reads would sit there for ever."""
    s = Subjects("p")
    filters = {s.engine_consumer: s.engine_filters, s.timer_consumer: [s.timer_filter],
               s.schedule_consumer: [s.schedule_filter]}
    for k in range(PARTITIONS):
        filters[s.engine_partition_consumer(k)] = s.engine_partition_filters(k)
        filters[s.timer_partition_consumer(k)] = [s.timer_partition_filter(k)]
    samples = [s.submit, s.batch_command("b1"), s.schedule_tick("nightly"),
               "p.cmd.wf.wf1", "p.result.wf1", "p.timer.wf1",
               *(f(f"wf{i}") for i in range(64)
                 for f in (s.workflow_command, s.result, s.timer))]
    for subject in samples:
        readers = [c for c, fs in filters.items() if any(_matches(subject, f) for f in fs)]
        assert len(readers) == 1, (subject, readers)
        assert any(_matches(subject, f) for f in s.inbox_subjects), subject
    k = partition_of("wf1")
    assert [c for c, fs in filters.items()
            if any(_matches(s.result("wf1"), f) for f in fs)] == [f"engine-{k}"]
    assert [c for c, fs in filters.items()
            if any(_matches(s.timer("wf1"), f) for f in fs)] == [f"timers-{k}"]


async def test_partition_of_agrees_with_the_servers_partition_mapping(nc: Client,
                                                                      prefix: str) -> None:
    """nats-server's ``{{partition(8,1)}}`` puts every id where partition_of does."""
    js = nc.jetstream()
    stream = f"{prefix.upper()}_PART"
    await js.add_stream(StreamConfig(
        name=stream, subjects=[f"{prefix}.in.*"],
        subject_transform=SubjectTransform(
            src=f"{prefix}.in.*", dest=f"{prefix}.out.{{{{partition({PARTITIONS},1)}}}}."
                                       "{{wildcard(1)}}")))
    ids = [f"wf-{i}" for i in range(200)] + [uuid.uuid4().hex for _ in range(50)] + ["é✓"]
    for wid in ids:
        await js.publish(f"{prefix}.in.{wid}", b"")
    info = await js.stream_info(stream, subjects_filter=">")
    stored = set((info.state.subjects or {}).keys())
    assert stored == {f"{prefix}.out.{partition_of(wid)}.{wid}" for wid in ids}
    await js.delete_stream(stream)


async def test_one_orchestrator_pulls_every_partition(settings: NatsSettings,
                                                      nc: Client) -> None:
    s = settings.subjects
    async with Orchestrator(settings, builtins=False, webhooks=False) as orch:
        js = nc.jetstream()
        names = {c.name for c in await js.consumers_info(s.inbox_stream)}
        assert {*s.engine_consumers, *s.timer_consumers} <= names
        assert set(orch._lanes) == {None, *range(PARTITIONS)}
        # Every partition consumer has a pull request of this orchestrator waiting.
        for _ in range(100):
            infos = [await js.consumer_info(s.inbox_stream, n)
                     for n in (*s.engine_consumers, *s.timer_consumers)]
            if all(i.num_waiting for i in infos):
                break
            await asyncio.sleep(0.05)
        assert all(i.num_waiting for i in infos)
