"""What transport/_natspy_shortcut.py relies on in nats-py still means what it assumes.

Each test checks a behaviour of nats-py's internals on a real nats-server (not merely
that a name exists), so a nats-py release that changes one fails here: the bytes
``publish`` writes and how it hands them to the flusher, what the outgoing buffer does,
the arguments and counters of the message dispatch, and that the pending-buffer limit
and nats-py's errors are the same on the short way and the public way.
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from natsflow.embedded import EmbeddedNats
from transport import _natspy_shortcut as shortcut
from transport.connect import NatsSettings, connect
from transport.publish import AsyncPublisher

#: (subject, reply, payload, headers) that the short cut writes itself ...
PLAIN = [("wire.a", "", b"x", None),
         ("wire.b", "r.1", b"", {"Nats-Msg-Id": "ev:w1:1"}),
         ("wire.c", "r.2", bytes(range(256)) + b"\r\n", {
             "Nats-Msg-Id": "task:k", "traceparent": "00-0af7-b7ad-01", "tracestate": "a=b"})]
#: ... and what it leaves to nats-py, which trims and cleans header values.
ODD = [("wire.d", "", b"x", {"K": " padded "}),
       ("wire.e", "", b"x", {"K": "two\r\nlines"})]
#: Empty headers: nats-py writes an empty header block, the short cut none (the
#: subscriber sees the same).
EMPTY = ("wire.f", "", b"x", {})


def test_the_installed_nats_py_is_the_verified_and_pinned_one() -> None:
    assert shortcut.ENABLED  # else the hot path quietly goes the public way
    major, minor = (int(part) for part in version("nats-py").split(".")[:2])
    assert (major, minor) in shortcut.VERIFIED
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("nats-py")]
    # the pin admits exactly the verified minor releases
    assert pins == [f"nats-py>={major}.{minor},<{major}.{minor + 1}"]


async def test_publish_writes_the_short_cuts_bytes_then_wakes_the_flusher(
        nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    send_command, flush_pending = nc._send_command, nc._flush_pending

    async def record_command(cmd: bytes, priority: bool = False) -> None:
        calls.append(("send", (cmd, priority)))
        await send_command(cmd, priority)

    async def record_flush(force_flush: bool = False) -> Any:
        calls.append(("flush", nc._flush_queue.empty() if nc._flush_queue else None))
        return await flush_pending(force_flush)

    monkeypatch.setattr(nc, "_send_command", record_command)
    monkeypatch.setattr(nc, "_flush_pending", record_flush)

    async def written(publish: Any, case: tuple[Any, ...]) -> list[tuple[str, Any]]:
        await nc.flush()  # the flusher idle, its queue empty
        calls.clear()
        await publish(case[0], case[2], reply=case[1], headers=case[3])
        return list(calls)

    def send(subject: str, payload: bytes, **kw: Any) -> Any:
        return shortcut.send(nc, subject, payload, **kw)

    for case in PLAIN:
        expected = [("send", (shortcut.pub_command(*case), False)), ("flush", True)]
        assert await written(nc.publish, case) == expected
        assert await written(send, case) == expected
    for case in ODD:  # left to nats-py: then the short way writes what it writes
        assert shortcut.pub_command(*case) is None
        theirs = await written(nc.publish, case)
        assert await written(send, case) == theirs and theirs[0][1][0].startswith(b"HPUB ")
    assert await written(nc.publish, EMPTY) == [
        ("send", (b"HPUB wire.f  12 13\r\nNATS/1.0\r\n\r\nx\r\n", False)), ("flush", True)]
    assert await written(send, EMPTY) == [
        ("send", (shortcut.pub_command(*EMPTY[:3], None), False)), ("flush", True)]


async def test_either_way_the_subscriber_gets_the_same_and_stats_count_the_same(
        nc: Client) -> None:
    sub = await nc.subscribe("wire.>")
    for subject, reply, payload, headers in [*PLAIN, *ODD, EMPTY]:
        before = dict(nc.stats)
        await shortcut.send(nc, subject, payload, reply=reply, headers=headers)
        ours = {k: nc.stats[k] - before[k] for k in ("out_msgs", "out_bytes")}
        before = dict(nc.stats)
        await nc.publish(subject, payload, reply=reply, headers=headers)
        theirs = {k: nc.stats[k] - before[k] for k in ("out_msgs", "out_bytes")}
        assert ours == theirs == {"out_msgs": 1, "out_bytes": len(payload)}
    for _ in [*PLAIN, *ODD, EMPTY]:
        first, second = [await sub.next_msg(timeout=5) for _ in range(2)]
        assert (first.subject, first.reply, first.data, first.headers) == (
            second.subject, second.reply, second.data, second.headers)
    assert set(nc.stats) == {"in_msgs", "out_msgs", "in_bytes", "out_bytes", "reconnects",
                             "errors_received"}


async def test_send_command_buffers_and_flush_pending_writes_it_out(nc: Client) -> None:
    sub = await nc.subscribe("buffered")
    await nc.flush()
    cmd = shortcut.pub_command("buffered", "", b"held", None)
    assert cmd is not None and nc.pending_data_size == 0
    await nc._send_command(cmd)
    assert nc.pending_data_size == len(cmd)  # in the buffer, not yet on the socket
    assert nc._flush_queue is not None and nc._flush_queue.empty()
    await nc._flush_pending()
    assert (await sub.next_msg(timeout=5)).data == b"held"
    assert nc.pending_data_size == 0


async def test_the_dispatch_gets_every_message_as_parsed_bytes_by_subscription_id(
        nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []
    dispatch = nc._process_msg

    async def record(sid: int, subject: bytes, reply: bytes, data: bytes,
                     headers: bytes | None) -> None:
        seen.append((sid, subject, reply, data, headers))
        await dispatch(sid, subject, reply, data, headers)  # type: ignore[arg-type]

    monkeypatch.setattr(nc, "_process_msg", record)
    sub = await nc.subscribe("parsed.*")
    before = nc.stats["in_msgs"], nc.stats["in_bytes"]
    await nc.publish("parsed.a", b"one", reply="r.1")
    await nc.publish("parsed.b", b"two", headers={"K": "v"})
    assert (await sub.next_msg(timeout=5)).data == b"one"
    assert (await sub.next_msg(timeout=5)).headers == {"K": "v"}
    assert seen == [(sub._id, b"parsed.a", b"r.1", b"one", None),
                    (sub._id, b"parsed.b", b"", b"two", b"NATS/1.0\r\nK: v\r\n\r\n")]
    assert (nc.stats["in_msgs"], nc.stats["in_bytes"]) == (before[0] + 2, before[1] + 6)


async def test_a_route_takes_plain_messages_the_callback_the_rest_and_both_count(
        nc: Client) -> None:
    routed: list[tuple[bytes, bytes]] = []
    called: list[Msg] = []

    async def callback(msg: Msg) -> None:
        called.append(msg)

    sub = await nc.subscribe("routed.*", cb=callback)
    assert shortcut.route(nc, sub, lambda subject, data: routed.append((subject, data)))
    before = nc.stats["in_msgs"], nc.stats["in_bytes"]
    await nc.publish("routed.a", b"plain")
    await nc.publish("routed.b", b"with", headers={"Status": "503"})
    await nc.flush()
    for _ in range(100):
        if routed and called:
            break
        await asyncio.sleep(0.05)
    assert routed == [(b"routed.a", b"plain")]
    assert [(m.subject, m.data) for m in called] == [("routed.b", b"with")]
    assert (nc.stats["in_msgs"], nc.stats["in_bytes"]) == (before[0] + 2, before[1] + 9)
    shortcut.unroute(nc, sub)
    await nc.publish("routed.c", b"plain again")
    await nc.flush()
    for _ in range(100):
        if len(called) == 2:
            break
        await asyncio.sleep(0.05)
    assert [m.subject for m in called] == ["routed.b", "routed.c"] and len(routed) == 1
    await sub.unsubscribe()


@pytest.fixture
async def lonely_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A server of this test's own, to be killed."""
    server = EmbeddedNats(tmp_path / "store").start()
    yield server
    server.kill()


async def test_a_full_pending_buffer_while_reconnecting_raises_as_nats_py_does(
        lonely_server: EmbeddedNats) -> None:
    async def quiet(error: Exception) -> None:
        pass  # the lost server, reported as expected

    nc = await nats.connect(lonely_server.url, pending_size=4096, max_reconnect_attempts=-1,
                            reconnect_time_wait=60, connect_timeout=1, error_cb=quiet)
    publisher = await AsyncPublisher(nc).start()
    lonely_server.kill()
    for _ in range(200):
        if nc.is_reconnecting:
            break
        await asyncio.sleep(0.05)
    assert nc.is_reconnecting
    payload = b"x" * 1000
    with pytest.raises(nats.errors.OutboundBufferLimitError):
        for _ in range(10):  # buffered until 4096 bytes are pending
            await shortcut.send(nc, "full.a", payload)
    with pytest.raises(nats.errors.OutboundBufferLimitError):
        await nc.publish("full.a", payload)  # the public way agrees: full
    with pytest.raises(nats.errors.OutboundBufferLimitError):
        await publisher.publish("full.b", payload)
    assert publisher.pending() == 0  # the refused message waits for no ack
    await publisher.close()
    with contextlib.suppress(ConnectionResetError):  # nats-py's close, mid-reconnect
        await nc.close()
    assert nc.is_closed
    with pytest.raises(nats.errors.ConnectionClosedError):
        await shortcut.send(nc, "closed", b"x")


async def test_a_tiny_pending_size_while_connected_flushes_as_nats_py_does(
        settings: NatsSettings) -> None:
    nc = await nats.connect(settings.servers[0], pending_size=64)
    sub = await nc.subscribe("tiny.*")
    await shortcut.send(nc, "tiny.a", b"y" * 1000)  # over the limit: flushed at once
    await nc.publish("tiny.b", b"z" * 1000)
    assert [(await sub.next_msg(timeout=5)).subject for _ in range(2)] == ["tiny.a", "tiny.b"]
    await nc.close()


async def test_nats_py_refusals_are_the_same_on_the_short_way(
        nc: Client, settings: NatsSettings) -> None:
    for subject, headers, payload, error in [
            ("two words", None, b"x", nats.errors.BadSubjectError),
            ("", None, b"x", nats.errors.BadSubjectError),
            ("wire.f", {"bad key": "v"}, b"x", nats.errors.BadHeaderError),
            ("wire.g", None, b"x" * (nc.max_payload + 1), nats.errors.MaxPayloadError)]:
        with pytest.raises(error):
            await nc.publish(subject, payload, headers=headers)
        with pytest.raises(error):
            await shortcut.send(nc, subject, payload, headers=headers)
    closed = await connect(settings, name="closed")
    await closed.drain()  # draining, then closed: nats-py's publish says no
    with pytest.raises(nats.errors.ConnectionClosedError):
        await shortcut.send(closed, "wire.h", b"x")
