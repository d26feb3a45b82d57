"""Pipelined JetStream publishing: send now, await the store's ack later.

nats-py's ``publish_async`` does this too, but pays for it per message: a task for its
stall semaphore (``wait_for``), random bytes from the OS for the reply token, and a
parsed ``PubAck``. This publisher keeps one reply subscription, numbers its replies
with a counter, and resolves each future with the stream sequence. It is the hot path
of the orchestrator (every outbox, every record write).

Messages are written, and plain acks taken, through :mod:`transport._natspy_shortcut`:
the one module that uses nats-py's private internals (measured, pinned and tested
there). Where it steps aside, everything goes through nats-py's public API (``publish``,
the reply subscription's callback) with the same results and nats-py's own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.headers import EXPECTED_LAST_SUBJECT_SEQ, STATUS_HEADER
from transport import _natspy_shortcut
from transport._natspy_shortcut import send

__all__ = ["EXPECTED_LAST_SUBJECT_SEQ", "WRONG_LAST_SEQUENCE", "AckedPublisher", "AsyncPublisher",
           "PublishError", "send"]

#: JetStream error codes of a failed ``Nats-Expected-Last-Subject-Sequence`` check.
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
#: The usual ack: ``{"stream":"S","seq":N}``, perhaps with more fields after.
_PLAIN_ACK = re.compile(rb'\{"stream":"[^"]*","seq":(\d+)[,}]')
#: How often waiting messages are checked against their deadlines (seconds).
_SWEEP_EVERY = 0.25


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
            ``TimeoutError``, unless its own call says otherwise. The waiting messages
            are swept every quarter of a second while there are any, so a deadline
            holds without a timer per message.
    """

    def __init__(self, nc: Client, *, timeout: float = 30.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = ""
        self._sub: Subscription | None = None
        self._next = 0
        # token -> (the ack's future, its deadline on the loop's clock)
        self._waiting: dict[str, tuple[asyncio.Future[int], float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> AsyncPublisher:
        """Subscribe to the replies (once, however many callers race to it)."""
        async with self._starting:
            if self._sub is None:
                prefix = self.nc.new_inbox() + "."
                self._sub = await self.nc.subscribe(prefix + "*", cb=self._on_reply)
                self._prefix = prefix
                # plain acks as they are parsed; the rest through _on_reply
                _natspy_shortcut.route(self.nc, self._sub, self._on_plain_reply)
        return self

    async def close(self) -> None:
        """Stop listening; whatever still waits fails with ConnectionClosedError."""
        if self._sub is not None:
            _natspy_shortcut.unroute(self.nc, self._sub)
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())

    def pending(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._waiting)

    async def publish(self, subject: str, payload: bytes,
                      headers: dict[str, str] | None = None, *,
                      timeout: float | None = None) -> asyncio.Future[int]:
        """Send one message; the returned future resolves when JetStream has stored it.

        Does not suspend unless the client's outgoing buffer is full (or this is the
        first message and the reply subscription is made now). The future fails with
        ``TimeoutError`` after ``timeout`` seconds (default: the publisher's) unanswered.
        """
        if self._sub is None:
            await self.start()
        loop = asyncio.get_running_loop()
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[int] = loop.create_future()
        self._waiting[token] = (future,
                                loop.time() + (self.timeout if timeout is None else timeout))
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_EVERY, self._sweep, loop)
        try:
            await send(self.nc, subject, payload, reply=self._prefix + token,
                       headers=headers)
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return future

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail what is past its deadline; come back while anything is waiting."""
        self._sweeper = None
        now = loop.time()
        for token in [t for t, (_, deadline) in self._waiting.items() if deadline < now]:
            future, _ = self._waiting.pop(token)
            if not future.done():
                future.set_exception(TimeoutError("no ack from JetStream"))
        if self._waiting:
            self._sweeper = loop.call_later(_SWEEP_EVERY, self._sweep, loop)

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
        return await (await self.publish(subject, payload, headers, timeout=timeout))

    def _on_plain_reply(self, subject: bytes, data: bytes) -> None:
        self._resolve(subject[len(self._prefix):].decode(), data)

    async def _on_reply(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        self._resolve(msg.subject[len(self._prefix):], msg.data, no_stream=status == "503")

    def _resolve(self, token: str, data: bytes, *, no_stream: bool = False) -> None:
        future, _ = self._waiting.pop(token, (None, 0.0))
        if future is None or future.done():
            return
        if no_stream:  # a 503 status: no stream has the subject
            future.set_exception(nats.js.errors.NoStreamResponseError())
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
