"""The pipelined JetStream publisher (transport/publish.py), on a real nats-server."""

from __future__ import annotations

import asyncio
import os

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StreamConfig

from transport import _natspy_shortcut
from transport.publish import (
    WRONG_LAST_SEQUENCE,
    AckedPublisher,
    AsyncPublisher,
    PublishError,
)


@pytest.fixture(autouse=True, params=["short cut", "public API"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test both ways: through transport/_natspy_shortcut.py, and as if this
    nats-py were not one it was verified on (nats-py's public API only)."""
    if request.param == "public API":
        monkeypatch.setattr(_natspy_shortcut, "ENABLED", False)
    return str(request.param)


async def test_acks_resolve_in_order_to_stream_sequences(nc: Client) -> None:
    name = "PUB_" + os.urandom(4).hex()
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    pub = await AsyncPublisher(nc).start()
    futures = [await pub.publish(f"{name}.x", str(i).encode()) for i in range(500)]
    assert pub.pending() > 0 or all(f.done() for f in futures)
    assert await asyncio.gather(*futures) == list(range(1, 501))
    assert pub.pending() == 0
    stored = await nc.jetstream().get_msg(name, 250)
    assert stored.data == b"249"  # stored in the order sent
    dup = await pub.publish(f"{name}.x", b"again", {"Nats-Msg-Id": "m1"})
    assert await dup == 501
    assert await (await pub.publish(f"{name}.x", b"again", {"Nats-Msg-Id": "m1"})) == 501
    await pub.close()


async def test_acks_skip_the_subscription_and_either_path_gives_the_same(
        nc: Client, way: str) -> None:
    name = "HOOK_" + os.urandom(4).hex()
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    first = await AsyncPublisher(nc).start()
    second = await AsyncPublisher(nc).start()  # the same short cut serves it
    plain = await AsyncPublisher(nc).start()
    assert plain._sub is not None
    _natspy_shortcut.unroute(nc, plain._sub)  # as if never routed
    futures = [await pub.publish(f"{name}.x", b"m")
               for _ in range(50) for pub in (first, second, plain)]
    assert await asyncio.gather(*futures) == list(range(1, 151))
    routed = 0 if way == "short cut" else 50  # else every ack through the callback
    assert [p._sub.delivered for p in (first, second, plain)  # type: ignore[union-attr]
            ] == [routed, routed, 50]
    await first.close()
    assert await (await second.publish(f"{name}.x", b"m")) == 151
    assert await (await plain.publish(f"{name}.x", b"m")) == 152
    await second.close()
    await plain.close()
    assert getattr(nc, "_natsflow_routes", {}) == {}


async def test_compare_and_set_and_refusals_fail_their_futures(nc: Client) -> None:
    kv = await nc.jetstream().create_key_value(
        KeyValueConfig(bucket="pub_" + os.urandom(4).hex()))
    pub = await AsyncPublisher(nc).start()
    subject = kv._pre + "k"
    first = await pub.store(subject, b"1", last=0)
    second = await pub.store(subject, b"2", last=first)
    assert second > first and (await kv.get("k")).value == b"2"
    with pytest.raises(PublishError) as stale:
        await pub.store(subject, b"3", last=first)  # someone else wrote since
    assert stale.value.err_code in WRONG_LAST_SEQUENCE
    with pytest.raises(PublishError):
        await pub.store(subject, b"4", last=0)  # "must not exist" on an existing key
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await (await pub.publish("no.stream." + os.urandom(4).hex(), b"x"))
    assert (await kv.get("k")).value == b"2"
    await pub.close()


async def test_unanswered_messages_time_out_and_close_fails_the_rest(nc: Client) -> None:
    loop = asyncio.get_running_loop()
    pub = AsyncPublisher(nc, timeout=0.2)
    # Core subscribers that never answer stand in for a stream that does not reply.
    await nc.subscribe("silent.>")
    sent = loop.time()
    lost = await pub.publish("silent.a", b"x")  # starts the publisher on first use
    done, _ = await asyncio.wait([lost], timeout=5)  # nothing else is sent meanwhile
    assert done and isinstance(lost.exception(), TimeoutError)
    assert loop.time() - sent >= 0.2
    patient = await pub.publish("silent.b", b"x", timeout=30)  # a call's own deadline
    quick = await pub.publish("silent.c", b"x", timeout=0.05)
    with pytest.raises(TimeoutError):
        await pub.stored("silent.d", b"x", timeout=0.05)
    done, _ = await asyncio.wait([quick], timeout=5)
    assert done and isinstance(quick.exception(), TimeoutError) and not patient.done()
    await pub.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await patient


async def test_acked_publisher_returns_once_stored_like_jetstream_publish(nc: Client) -> None:
    name = "ACKED_" + os.urandom(4).hex()
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    pub = AckedPublisher(AsyncPublisher(nc), timeout=0.5)
    assert await pub.publish(f"{name}.a", b"1", headers={"Nats-Msg-Id": "r1"}) == 1
    assert await pub.publish(f"{name}.a", b"1 again", headers={"Nats-Msg-Id": "r1"}) == 1
    assert (await nc.jetstream().get_msg(name, 1)).data == b"1"
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await pub.publish("no.stream." + os.urandom(4).hex(), b"x")
    await nc.subscribe(f"silent{name}.>")  # answers nothing: no ack ever comes
    with pytest.raises(TimeoutError):
        await pub.publish(f"silent{name}.x", b"x")
    await pub.publisher.close()
