"""Continuous pull consumption against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
from helpers import wait_for
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from transport.consume import (
    ConsumerStalled,
    PullConsumer,
    PullGroup,
    delivery_count,
    stream_sequence,
)


async def _setup(nc: Client, prefix: str, *, ack_wait: float = 30) -> str:
    js = nc.jetstream()
    stream = f"{prefix.upper()}_C"
    await js.add_stream(name=stream, subjects=[f"{prefix}.c.>"])
    await js.add_consumer(stream, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT,
                                                 ack_wait=ack_wait))
    return stream


async def test_hands_over_what_arrived_as_one_batch_and_bounds_the_batch(
        nc: Client, prefix: str) -> None:
    stream = await _setup(nc, prefix)
    consumer = await PullConsumer(nc, stream, "c", batch=8).start()
    try:
        assert await consumer.next_batch(8, timeout=0.2) == []  # nothing yet
        js = nc.jetstream()
        for i in range(20):
            await js.publish(f"{prefix}.c.x", str(i).encode())
        got: list[bytes] = []
        while len(got) < 20:
            batch = await consumer.next_batch(5, timeout=2)
            assert 1 <= len(batch) <= 5
            for msg in batch:
                got.append(msg.data)
                await msg.ack()
        assert got == [str(i).encode() for i in range(20)]
    finally:
        await consumer.stop()


async def test_keeps_asking_after_requests_expire(nc: Client, prefix: str) -> None:
    stream = await _setup(nc, prefix)
    consumer = await PullConsumer(nc, stream, "c", batch=4, expires=0.3, heartbeat=0.1).start()
    try:
        assert await consumer.next_batch(4, timeout=1.0) == []  # outlives one request
        await nc.jetstream().publish(f"{prefix}.c.x", b"late")
        batch = await consumer.next_batch(4, timeout=2)
        assert [m.data for m in batch] == [b"late"]
    finally:
        await consumer.stop()


async def test_stop_hands_back_messages_not_taken(nc: Client, prefix: str) -> None:
    stream = await _setup(nc, prefix)
    js = nc.jetstream()
    for i in range(3):
        await js.publish(f"{prefix}.c.x", str(i).encode())
    first = await PullConsumer(nc, stream, "c", batch=8).start()
    taken = await first.next_batch(1, timeout=2)
    await asyncio.sleep(0.2)  # the other two arrive but are not taken
    await taken[0].ack()
    await first.stop()
    second = await PullConsumer(nc, stream, "c", batch=8).start()
    try:
        got: list[bytes] = []
        for _ in range(20):
            got += [m.data for m in await second.next_batch(8, timeout=0.5)]
            if len(got) == 2:
                break
        assert sorted(got) == [b"1", b"2"]  # well before the 30 s ack wait
    finally:
        await second.stop()


async def test_reports_a_consumer_that_stopped_answering(nc: Client, prefix: str) -> None:
    stream = await _setup(nc, prefix)
    consumer = await PullConsumer(nc, stream, "c", batch=4, heartbeat=0.1).start()
    try:
        await consumer.next_batch(4, timeout=0.2)
        await nc.jetstream().delete_consumer(stream, "c")
        with pytest.raises(ConsumerStalled):
            for _ in range(50):
                await consumer.next_batch(4, timeout=0.1)
    finally:
        await consumer.stop()


async def test_delivery_count_reads_the_ack_subject_as_nats_py_metadata_does(
        nc: Client) -> None:
    js = nc.jetstream()
    name = "DC_" + os.urandom(4).hex()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.publish(f"{name}.a", b"x")
    sub = await js.pull_subscribe(f"{name}.>", durable="dc")
    for delivered in (1, 2, 3):
        msg, = await sub.fetch(1, timeout=5)
        assert delivery_count(msg) == msg.metadata.num_delivered == delivered
        assert stream_sequence(msg) == msg.metadata.sequence.stream == 1
        await msg.nak()
    v2 = "$JS.ACK.hub.ACCHASH.S.C.7.100.90.1700000000000000000.0.tok"
    assert delivery_count(Msg(nc, reply=v2)) == Msg(nc, reply=v2).metadata.num_delivered == 7
    assert stream_sequence(Msg(nc, reply=v2)) == Msg(nc, reply=v2).metadata.sequence.stream
    for other in ("", "_INBOX.x.y", "$JS.ACK.S.C.notanumber.1.1.1.0"):
        assert delivery_count(Msg(nc, reply=other)) == 1
    for other in ("", "_INBOX.x.y", "$JS.ACK.S.C.1.notanumber.1.1.0"):
        assert stream_sequence(Msg(nc, reply=other)) is None


async def test_halt_ends_a_waiting_fetch_at_once_and_stop_hands_back_what_came_after(
        nc: Client, prefix: str) -> None:
    # A stop used to wait for every loop's fetch to time out (1 s per process): halt()
    # ends the wait now. The pull request stays open on the server until stop(), so
    # what it brings meanwhile must be handed back, not dropped to the ack wait.
    stream = await _setup(nc, prefix)
    js = nc.jetstream()
    first = await PullConsumer(nc, stream, "c", batch=8).start()
    waiting = asyncio.ensure_future(first.next_batch(8, timeout=60))
    await asyncio.sleep(0.2)
    first.halt()
    assert await asyncio.wait_for(waiting, 5) == []
    for i in range(2):
        await js.publish(f"{prefix}.c.x", str(i).encode())
    # Brought by the request still open.
    await wait_for(lambda: first.ready == 2, timeout=10, what="the late messages")
    assert await asyncio.wait_for(first.next_batch(8, timeout=60), 5) == []  # halted
    await first.stop()
    second = await PullConsumer(nc, stream, "c", batch=8).start()
    try:
        got: list[bytes] = []
        async with asyncio.timeout(10):  # well before the 30 s ack wait
            while len(got) < 2:
                got += [m.data for m in await second.next_batch(8, timeout=0.5)]
        assert sorted(got) == [b"0", b"1"]
    finally:
        await second.stop()


@contextlib.asynccontextmanager
async def _group(nc: Client, prefix: str, *, batch: int, heartbeat: float = 1.0
                 ) -> AsyncIterator[tuple[str, PullConsumer, PullConsumer, PullGroup]]:
    """A stream with consumers ``a`` and ``b`` (on ``<prefix>.c.a`` and ``<prefix>.c.b``),
    pulled and taken from as one group: (the stream, a, b, the group)."""
    js = nc.jetstream()
    stream = f"{prefix.upper()}_C"
    await js.add_stream(name=stream, subjects=[f"{prefix}.c.>"])
    for name in ("a", "b"):
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=name, ack_policy=AckPolicy.EXPLICIT,
            filter_subject=f"{prefix}.c.{name}"))
    a = await PullConsumer(nc, stream, "a", batch=batch, heartbeat=heartbeat).start()
    b = await PullConsumer(nc, stream, "b", batch=batch, heartbeat=heartbeat).start()
    group = PullGroup()
    group.add(a)
    group.add(b)
    try:
        yield stream, a, b, group
    finally:
        await a.stop()
        await b.stop()


async def test_a_group_hands_over_what_its_consumers_received_as_one_batch(
        nc: Client, prefix: str) -> None:
    # The orchestrator takes from every partition it owns in one loop: a message on
    # either consumer ends the wait, and what both hold comes in one batch.
    js = nc.jetstream()
    async with _group(nc, prefix, batch=8) as (_, _, _, group):
        assert await group.next_batch(8, timeout=0.2) == []  # nothing yet
        waiting = asyncio.ensure_future(group.next_batch(8, timeout=60))
        await asyncio.sleep(0.1)
        await js.publish(f"{prefix}.c.b", b"b0")  # the second consumer ends the wait
        first = await asyncio.wait_for(waiting, 5)
        assert [m.data for m in first] == [b"b0"]
        for i in range(3):
            await js.publish(f"{prefix}.c.a", f"a{i}".encode())
            await js.publish(f"{prefix}.c.b", f"b{i + 1}".encode())
        await wait_for(lambda: group.ready == 6, timeout=10, what="six messages in hand")
        both = await group.next_batch(8, timeout=1)
        assert sorted(m.data for m in both) == [b"a0", b"a1", b"a2", b"b1", b"b2", b"b3"]
        # Bounded as one consumer's batch is, and taken from each consumer in turn.
        for i in range(4):
            await js.publish(f"{prefix}.c.a", f"a{i + 3}".encode())
            await js.publish(f"{prefix}.c.b", f"b{i + 4}".encode())
        await wait_for(lambda: group.ready == 8, timeout=10, what="eight messages in hand")
        starts = set()
        for _ in range(4):
            batch = await group.next_batch(2, timeout=1)
            assert len(batch) == 2
            starts.add(batch[0].subject)
            for msg in batch:
                await msg.ack()
        assert starts == {f"{prefix}.c.a", f"{prefix}.c.b"}  # neither always comes first
        for msg in [*first, *both]:
            await msg.ack()


async def test_a_consumer_removed_from_a_group_is_taken_from_no_more(
        nc: Client, prefix: str) -> None:
    # A partition given up: its messages stay with its consumer, whose stop hands them
    # back for the next owner, while the group goes on with the others.
    js = nc.jetstream()
    async with _group(nc, prefix, batch=8) as (_, a, b, group):
        assert await group.next_batch(8, timeout=0.2) == []  # both have asked
        await js.publish(f"{prefix}.c.a", b"a0")
        await wait_for(lambda: a.ready == 1, timeout=10, what="a's message")
        group.remove(b)
        group.remove(a)
        group.add(b)
        assert await group.next_batch(8, timeout=0.3) == []  # a's message is not taken
        assert a.ready == 1 and a.on_wake is None
        await js.publish(f"{prefix}.c.b", b"b0")
        assert [m.data for m in await group.next_batch(8, timeout=5)] == [b"b0"]
        group.halt()
        assert await asyncio.wait_for(group.next_batch(8, timeout=60), 5) == []


async def test_a_stalled_consumer_is_reported_and_does_not_hold_up_the_group(
        nc: Client, prefix: str) -> None:
    js = nc.jetstream()
    async with _group(nc, prefix, batch=4, heartbeat=0.1) as (stream, a, _, group):
        await group.next_batch(4, timeout=0.2)
        await js.delete_consumer(stream, "a")
        stalled = False
        got: list[bytes] = []
        for i in range(100):
            await js.publish(f"{prefix}.c.b", f"b{i}".encode())
            await asyncio.sleep(0.05)  # a is asked again only after a pause
            try:
                got += [m.data for m in await group.next_batch(4, timeout=0.1)]
            except ConsumerStalled as exc:
                stalled = True
                assert exc.args == (a.subject,)
                break
        assert stalled
        async with asyncio.timeout(10):  # b's messages keep coming
            while len(got) < i + 1:
                got += [m.data for m in await group.next_batch(4, timeout=0.5)]
        assert got == [f"b{n}".encode() for n in range(i + 1)]
