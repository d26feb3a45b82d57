"""Partitions of the engine's work: the subjects, the hash, and their consumers."""

from __future__ import annotations

import asyncio
import uuid

import nats.js.errors
import pytest
from helpers import counted, read_dead_letters, running_demo_worker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig, SubjectTransform

from contracts.messages import TaskMessage, TaskSucceeded
from contracts.models import WorkflowState
from contracts.subjects import PARTITIONS, Subjects, partition_of
from natsflow.client import NatsflowClient
from orchestrator import Orchestrator
from orchestrator.members import MEMBER_TTL
from transport.connect import NatsSettings
from transport.streams import Topology, declare_bucket


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


async def _split(*orchs: Orchestrator, timeout: float = 20.0) -> None:
    """Until the orchestrators pull disjoint shares of the partitions, all of them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        shares = [frozenset(k for k in o._lanes if k is not None) for o in orchs]
        if (sum(map(len, shares)) == PARTITIONS
                and frozenset().union(*shares) == frozenset(range(PARTITIONS))):
            return
        assert loop.time() < deadline, shares
        await asyncio.sleep(0.05)


async def test_two_orchestrators_split_the_partitions_and_both_make_progress(
        settings: NatsSettings, client: NatsflowClient) -> None:
    a = Orchestrator(settings, builtins=False, webhooks=False, member="a")
    b = Orchestrator(settings, builtins=False, webhooks=False, member="b")
    async with a:
        assert set(a._lanes) == {None, *range(PARTITIONS)}  # alone: all of them
        async with b:
            await _split(a, b)
            assert a.members is not None and b.members is not None
            shares = [a.members.owned, b.members.owned]
            assert all(shares) and shares[0].isdisjoint(shares[1]), shares
            async with running_demo_worker(settings):
                ids = [f"wf-{i}" for i in range(40)]
                assert {partition_of(i) for i in ids} == set(range(PARTITIONS))
                for wid in ids:
                    await client.create({"id": wid, "name": "one",
                                         "steps": [{"id": "a", "task": "demo.noop"}]})
                for wid in ids:
                    await wait_state(client, wid, WorkflowState.COMPLETED)
            # Both decided, each only for its own partitions: no record was written by
            # two of them at once.
            for o in (a, b):
                assert o.processor is not None
                assert counted(o.metrics.registry, "natsflow_workflows_finished_total") > 0
            assert sum(counted(o.metrics.registry, "natsflow_cas_retries_total")
                       for o in (a, b)) == 0
            finished = [counted(o.metrics.registry, "natsflow_workflows_finished_total")
                        for o in (a, b)]
            assert sum(finished) == len(ids)
            owned = {o: {wid for wid in ids if partition_of(wid) in o.members.owned}  # type: ignore[union-attr]
                     for o in (a, b)}
            assert finished == [len(owned[a]), len(owned[b])]
        # b stopped: it left the bucket, and a takes its partitions back at its next look.
        await _split(a)


async def wait_state(client: NatsflowClient, wid: str, state: WorkflowState, *,
                     timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await client.get(wid)
        if reply.status is not None and reply.status.state == state:
            return
        assert loop.time() < deadline, reply
        await asyncio.sleep(0.05)


async def test_a_result_on_the_subject_without_a_partition_is_still_taken(
        engine: Orchestrator, nc: Client, settings: NatsSettings,
        client: NatsflowClient) -> None:
    """A task queued before an upgrade names the old ``reply_to``; its result counts."""
    s = settings.subjects
    await client.create({"id": "old1", "name": "one",
                         "steps": [{"id": "a", "task": "legacy.noop"}]})
    js = nc.jetstream()
    sub = await js.pull_subscribe(s.task("legacy.noop"), durable="legacy",
                                  stream=s.tasks_stream)
    [msg] = await sub.fetch(1, timeout=10)
    task = TaskMessage.model_validate_json(msg.data)
    assert task.reply_to == s.result("old1")
    old = f"{s.prefix}.result.old1"
    assert s.kind_of(old) == ("result", "old1") and old != s.result("old1")
    done = TaskSucceeded(workflow_id="old1", step_id=task.step_id, attempt=task.attempt,
                         token=task.token, output={"ok": True})
    await js.publish(old, done.model_dump_json().encode())
    await msg.ack()
    await wait_state(client, "old1", WorkflowState.COMPLETED)
    shared = await js.consumer_info(s.inbox_stream, s.engine_consumer)
    assert shared.delivered.consumer_seq == 1  # the shared consumer took it


async def test_a_members_bucket_that_is_gone_is_declared_again(
        settings: NatsSettings, nc: Client) -> None:
    """A server restarted without the bucket: the next renewal makes it again (else no
    renewal would succeed, and the shares would stay those of the members seen last)."""
    s = settings.subjects
    async with Orchestrator(settings, builtins=False, webhooks=False, member="a") as orch:
        assert orch.members is not None
        js = nc.jetstream()
        await js.delete_key_value(s.members_bucket)
        await orch.members.beat()
        kv = await js.key_value(s.members_bucket)
        assert await kv.keys() == ["a"]
        assert orch.members.owned == frozenset(range(PARTITIONS))


async def test_a_member_whose_connection_is_gone_is_left_out_before_its_key_ages_out(
        settings: NatsSettings, nc: Client) -> None:
    """A key outlives its orchestrator by up to the TTL (a SIGKILL leaves it behind): an
    orchestrator restarted in its place owned only its share meanwhile, and the other
    partitions waited (the fault suite's random kills took 3-5x longer). Nothing answers
    the dead member's liveness subject: it is left out at once."""
    s = settings.subjects
    kv = await declare_bucket(nc.jetstream(), Topology(s).members_kv(MEMBER_TTL))
    await kv.put("ghost", b"{}")  # a killed member's key, still within its TTL
    async with Orchestrator(settings, builtins=False, webhooks=False, member="a") as orch:
        assert orch.members is not None
        assert "ghost" in await kv.keys()
        assert orch.members.owned == frozenset(range(PARTITIONS))
        # A member that answers is not left out.
        async def answer(msg: Msg) -> None:
            await msg.respond(b"")

        sub = await nc.subscribe(s.member_ping("ghost"), cb=answer)
        try:
            await orch.members.beat()
            assert orch.members.owned != frozenset(range(PARTITIONS))
        finally:
            await sub.unsubscribe()
        await orch.members.beat()
        assert orch.members.owned == frozenset(range(PARTITIONS))


async def test_hostile_messages_on_partitioned_subjects_are_dead_lettered_or_refused(
        settings: NatsSettings, nc: Client) -> None:
    """Garbage, NaN, deep nesting and a wrong partition on the partitioned inbox subjects
    end in the dead letters with a reason; a partition that does not exist is refused by
    the stream (nothing stored that no consumer reads); garbage sent to an orchestrator's
    liveness subject changes nothing."""
    s = settings.subjects
    js = nc.jetstream()
    wrong = (partition_of("wf1") + 1) % PARTITIONS
    sent = [(s.result("wf1"), b"not json"),
            (s.result("wf1"), b'{"kind": "succeeded", "attempt": NaN}'),
            (s.workflow_command("wf1"), b"[" * 5000),
            (s.timer("wf1"), b"\xff\xfe\x00"),
            (s.result("wf1", wrong), b'{"kind": "nothing"}')]
    async with Orchestrator(settings, builtins=False, webhooks=False, member="a") as orch:
        for subject, data in sent:
            await js.publish(subject, data)
        letters = await read_dead_letters(nc, s, count=len(sent), timeout=20)
        assert sorted(letter.subject for _, letter in letters) == sorted(x for x, _ in sent)
        assert all(letter.reason.code for _, letter in letters)
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await js.publish(f"{s.prefix}.result.{PARTITIONS}.wf1", b"{}")
        assert orch.members is not None
        reply = await nc.request(s.member_ping("a"), b"\x00garbage" * 100, timeout=5)
        assert reply.data == b""
        await orch.members.beat()
        assert orch.members.owned == frozenset(range(PARTITIONS))
        assert await NatsflowClient(nc, s).ping(timeout=5)  # still serving
