"""Pipelined JetStream publishing: send now, await the store's ack later.

nats-py's ``publish_async`` does this too, but pays for it per message: a task for its
stall semaphore (``wait_for``), random bytes from the OS for the reply token, and a
parsed ``PubAck``. This publisher keeps one reply subscription, numbers its replies
with a counter, and resolves each future with the stream sequence. It is the hot path
of the orchestrator (every outbox, every record write).

Acks take a short cut past nats-py's subscription machinery (a message object, a queue
and a task switch per message): the client's message dispatch is wrapped so that a
plain ack for this publisher resolves its future as it is parsed. Anything else, and
every ack if a nats-py release stops calling that hook, goes the ordinary way, through
the subscription's callback, with the same result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["EXPECTED_LAST_SUBJECT_SEQ", "WRONG_LAST_SEQUENCE", "AckedPublisher", "AsyncPublisher",
           "PublishError"]

#: JetStream error codes of a failed ``Nats-Expected-Last-Subject-Sequence`` check.
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
#: The usual ack: ``{"stream":"S","seq":N}``, perhaps with more fields after.
_PLAIN_ACK = re.compile(rb'\{"stream":"[^"]*","seq":(\d+)[,}]')
#: Header of a conditional write: store only if the subject's last sequence is this.
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"


class PublishError(nats.js.errors.APIError):
    """JetStream refused a message (the error's ``err_code`` says why)."""


class AsyncPublisher:
    """Publishes to JetStream without waiting; each call returns the ack's future.

    Messages are sent in call order on the one connection, so a stream stores them in
    that order. A future resolves to the stored message's stream sequence, or fails
    with :class:`PublishError` (JetStream said no), ``NoStreamResponseError`` (no stream
    has the subject) or ``ConnectionClosedError`` (the publisher was closed first).

    Args:
        nc: Connected NATS client.
        timeout: Seconds after which an unanswered message's future fails with
            ``TimeoutError`` (checked as more messages are sent).
    """

    def __init__(self, nc: Client, *, timeout: float = 30.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = ""
        self._sub: Subscription | None = None
        self._next = 0
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._deadlines: deque[tuple[float, str]] = deque()  # in sending order
        self._starting = asyncio.Lock()
        self._sid: int | None = None

    async def start(self) -> AsyncPublisher:
        """Subscribe to the replies (once, however many callers race to it)."""
        async with self._starting:
            if self._sub is None:
                prefix = self.nc.new_inbox() + "."
                self._sub = await self.nc.subscribe(prefix + "*", cb=self._on_reply)
                self._prefix = prefix
                self._hook()
        return self

    def _hook(self) -> None:
        """Take this publisher's plain acks straight from the client's parser."""
        dispatch = getattr(self.nc, "_process_msg", None)
        sid = getattr(self._sub, "_id", None)
        if dispatch is None or not isinstance(sid, int):
            return  # another client shape: the subscription's callback does it all
        self._sid = sid
        skip = len(self._prefix)

        async def process_msg(msg_sid: int, subject: bytes, reply: bytes, data: bytes,
                              headers: bytes | None) -> None:
            if msg_sid == self._sid and not headers:
                self._resolve(subject[skip:].decode(), data)
                return
            await dispatch(msg_sid, subject, reply, data, headers)

        self.nc._process_msg = process_msg  # type: ignore[method-assign,assignment]

    async def close(self) -> None:
        """Stop listening; whatever still waits fails with ConnectionClosedError."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
            self._sid = None
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())

    def pending(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._waiting)

    async def publish(self, subject: str, payload: bytes,
                      headers: dict[str, str] | None = None) -> asyncio.Future[int]:
        """Send one message; the returned future resolves when JetStream has stored it.

        Does not suspend unless the client's outgoing buffer is full (or this is the
        first message and the reply subscription is made now).
        """
        if self._sub is None:
            await self.start()
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._expire(now)
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[int] = loop.create_future()
        self._waiting[token] = future
        self._deadlines.append((now + self.timeout, token))
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token,
                                  headers=headers)
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return future

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] < now:
            future = self._waiting.pop(deadlines.popleft()[1], None)
            if future is not None and not future.done():
                future.set_exception(TimeoutError("no ack from JetStream"))

    async def store(self, subject: str, payload: bytes, *, last: int,
                    timeout: float = 10.0) -> int:
        """Compare-and-set on a subject (a KV key): store only if its last sequence is
        ``last`` (0: none yet); returns the new sequence.

        Raises:
            PublishError: with an ``err_code`` in :data:`WRONG_LAST_SEQUENCE` when the
                subject moved on (someone else wrote first).
        """
        return await self.stored(subject, payload, {EXPECTED_LAST_SUBJECT_SEQ: str(last)},
                                 timeout=timeout)

    async def stored(self, subject: str, payload: bytes,
                     headers: dict[str, str] | None = None, *, timeout: float = 10.0) -> int:
        """Send one message and wait until JetStream has stored it; its stream sequence.

        Raises:
            PublishError: JetStream refused it.
            TimeoutError: no ack within ``timeout`` seconds.
        """
        future = await self.publish(subject, payload, headers)
        async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
            return await future

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix):]
        if msg.headers and msg.headers.get("Status") == "503":
            future = self._waiting.pop(token, None)
            if future is not None and not future.done():
                future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        self._resolve(token, msg.data)

    def _resolve(self, token: str, data: bytes) -> None:
        future = self._waiting.pop(token, None)
        if future is None or future.done():
            return
        plain = _PLAIN_ACK.match(data)
        if plain is not None and b'"error"' not in data:
            future.set_result(int(plain[1]))  # no JSON parser for the usual ack
            return
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError:
            future.set_exception(PublishError(description=f"unreadable ack: {data[:100]!r}"))
            return
        error = reply.get("error")
        if error is not None:
            future.set_exception(PublishError(
                code=error.get("code"), err_code=error.get("err_code"),
                description=error.get("description")))
            return
        future.set_result(int(reply.get("seq", 0)))


class AckedPublisher:
    """``JetStreamContext.publish``'s shape (returns once stored) over an AsyncPublisher.

    For code written against that shape, e.g. the worker SDK's results: each call
    costs one message and its ack, without nats-py's per-request inbox and task.
    """

    def __init__(self, publisher: AsyncPublisher, *, timeout: float = 10.0) -> None:
        self.publisher = publisher
        self.timeout = timeout

    async def publish(self, subject: str, payload: bytes = b"", *,
                      headers: dict[str, Any] | None = None) -> int:
        """Store one message; its stream sequence (errors as :meth:`AsyncPublisher.stored`)."""
        return await self.publisher.stored(subject, payload, headers, timeout=self.timeout)
