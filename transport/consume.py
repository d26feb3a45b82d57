"""Continuous pull consumption: pull requests kept open ahead of need.

``fetch()`` pays two round trips per call and a long poll that ends with every batch;
this keeps pull requests outstanding (as nats.go's ``Consume`` does), so a message is
handed over the moment it arrives, and whatever has arrived meanwhile comes as one
batch. Flow control stays with JetStream: never more than ``batch`` messages are asked
for at once, and more are asked for only as they are taken.

On a cluster the consumer's leader can move (killed, hung, stepped down). The pull
requests it held are gone with it, so they are asked for again at once when the server
says so (``409 Leadership Change``), when the new leader is announced (the
``CONSUMER.LEADER_ELECTED`` advisory), when the connection comes back, or after three
missed idle heartbeats (1 s each), whichever comes first: work resumes within a
second or so of the new leader, not after the old requests' silence runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.headers import PENDING_MESSAGES_HEADER, STATUS_DESCRIPTION_HEADER, STATUS_HEADER

__all__ = ["ConsumerStalled", "PullConsumer", "PullGroup", "delivery_count", "stream_sequence"]

log = logging.getLogger("natsflow.consume")

#: Statuses that mean all is well: an idle heartbeat, a request that simply expired.
_FINE = frozenset({"100", "408"})
#: 409 descriptions that say the requests are gone but the consumer is not: ask again.
_MOVED = frozenset({"Leadership Change", "Server Shutdown"})
#: Seconds before asking again after the server refused (no one serves the consumer).
_REFUSED_PAUSE = 0.25


def _ack_token(msg: object, offset: int) -> int | None:
    """Token ``offset`` after the consumer's name in ``msg``'s ack subject,
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`` (or with a domain and an
    account hash before the stream), read as nats-py's metadata does, without building
    the rest of the metadata (a datetime among it) per message; None without one."""
    reply = getattr(msg, "reply", None)
    if isinstance(reply, str) and reply.startswith("$JS.ACK."):
        tokens = reply.split(".")
        at = 4 if len(tokens) == 9 else 6 if len(tokens) >= 11 else None
        if at is not None and tokens[at + offset].isdigit():
            return int(tokens[at + offset])
    return None


def delivery_count(msg: object) -> int:
    """How often JetStream has delivered ``msg`` (1 for a message without metadata)."""
    count = _ack_token(msg, 0)
    return 1 if count is None else count  # not a JetStream message: its first delivery


def stream_sequence(msg: object) -> int | None:
    """``msg``'s sequence in its stream (None for a message without metadata)."""
    return _ack_token(msg, 1)


class _Bell:
    """One waiter at a time, woken by :meth:`ring` or when its timeout passes (a bare
    future and a timer handle: no Event, no wait_for task)."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def ring(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self.ring)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


class ConsumerStalled(Exception):
    """The server stopped answering pull requests (consumer or stream gone?)."""


class PullConsumer:
    """Messages of one durable pull consumer, in batches, as soon as they arrive.

    Args:
        nc: Connected NATS client.
        stream: Stream name.
        consumer: Durable consumer name.
        batch: Most messages asked for and not yet received at any time.
        expires: Seconds each pull request lives on the server.
        heartbeat: Seconds between the server's idle heartbeats; silence for three of
            them (a lost connection, a leader gone without a word) makes it ask afresh.
    """

    def __init__(self, nc: Client, stream: str, consumer: str, *, batch: int = 256,
                 expires: float = 10.0, heartbeat: float = 1.0) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.leader_elected = f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{consumer}"
        self.batch = batch
        self.expires = expires
        self.heartbeat = heartbeat
        self._inbox = ""
        self._sub: Subscription | None = None
        self._leader_sub: Subscription | None = None
        self._ready: deque[Msg] = deque()
        self._bell = _Bell()  # the one waiter of next_batch
        self._outstanding = 0
        self._last_seen = time.monotonic()
        self._stalls = 0
        self._reconnects = 0
        self._quiet_until = 0.0  # no new request before (the server just refused one)
        self._halted = False
        #: Told whenever a waiting taker would be woken (the :class:`PullGroup` it is in).
        self.on_wake: Callable[[], None] | None = None

    async def start(self) -> PullConsumer:
        """Subscribe to this consumer's private inbox and to its leader's elections."""
        self._inbox = self.nc.new_inbox()
        self._reconnects = self.nc.stats["reconnects"]
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        self._leader_sub = await self.nc.subscribe(self.leader_elected, cb=self._on_leader)
        return self

    async def stop(self) -> None:
        """Stop receiving; messages received but not taken are handed back at once.

        Drained, not just unsubscribed: the server may be delivering to our open pull
        requests right now, and a message dropped here would wait out the ack wait.
        After the drain's round trip nothing more comes, and all that came is in hand.
        """
        if self._leader_sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._leader_sub.unsubscribe()
            self._leader_sub = None
        if self._sub is not None:
            try:
                await asyncio.wait_for(self._sub.drain(), 5.0)  # type: ignore[no-untyped-call]
            except (nats.errors.Error, TimeoutError):
                with contextlib.suppress(nats.errors.Error):
                    await self._sub.unsubscribe()
            self._sub = None
        while self._ready:
            with contextlib.suppress(nats.errors.Error):
                await self._ready.popleft().nak()

    def halt(self) -> None:
        """Ask for nothing more and end a waiting :meth:`next_batch` now (a stop begins).

        Takes effect at once, unlike :meth:`stop`: a loop blocked in a fetch returns
        empty-handed instead of waiting out its timeout. What the pull requests still
        open bring meanwhile is kept, and :meth:`stop` hands it back.
        """
        self._halted = True
        self._wake()

    @property
    def halted(self) -> bool:
        """Whether :meth:`halt` was called."""
        return self._halted

    @property
    def ready(self) -> int:
        """Messages received and not yet taken."""
        return len(self._ready)

    def take_ready(self, most: int) -> list[Msg]:
        """Up to ``most`` of the messages received and not yet taken, without asking."""
        out: list[Msg] = []
        while self._ready and len(out) < most:
            out.append(self._ready.popleft())
        return out

    def wake(self) -> None:
        """End a waiting :meth:`next_batch` now (with what it has, maybe nothing)."""
        self._wake()

    def _wake(self) -> None:
        self._bell.ring()
        if self.on_wake is not None:
            self.on_wake()

    def _ask_afresh(self) -> None:
        """Whatever was asked for is gone: the next top-up asks for it all again."""
        self._outstanding = 0
        self._last_seen = time.monotonic()
        self._quiet_until = 0.0
        self._wake()

    async def _on_leader(self, msg: Msg) -> None:
        # A new leader: the requests the old one held are lost with it (or answered
        # with a 409 that may never come, if it died). Ask the new one at once.
        self._stalls = 0
        self._ask_afresh()

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status is None or status in _FINE:
            # A message, an idle heartbeat, or a request that simply expired: all is well.
            self._last_seen = time.monotonic()
            self._stalls = 0
        elif (status == "409" and msg.headers
              and msg.headers.get(STATUS_DESCRIPTION_HEADER) in _MOVED):
            # The leader moved or its server is going: the consumer is fine, ask again
            # (of the new leader) at once. Not a stall: re-declaring would not help.
            self._last_seen = time.monotonic()
        else:
            # 409 (consumer deleted...), 503 (no one serves the consumer: gone, or
            # between leaders): something is wrong on the server's side. Do not ask
            # again in a tight loop.
            self._stalls += 1
            self._quiet_until = time.monotonic() + _REFUSED_PAUSE
        if status is None:
            self._outstanding = max(0, self._outstanding - 1)
            self._ready.append(msg)
            self._wake()
        elif status != "100":
            # The rest of that request will never come.
            unfilled = msg.headers.get(PENDING_MESSAGES_HEADER) if msg.headers else None
            if unfilled and unfilled.isdigit():
                self._outstanding = max(0, self._outstanding - int(unfilled))
            else:
                self._outstanding = 0
            self._wake()

    async def _top_up(self, limit: int) -> None:
        reconnects = self.nc.stats["reconnects"]
        if reconnects != self._reconnects:
            # A new connection, maybe to a restarted server: the pull requests made on
            # the old one are gone with it. Ask afresh now rather than after the silence.
            self._reconnects = reconnects
            self._outstanding = 0
            self._last_seen = time.monotonic()
        if self._outstanding and time.monotonic() - self._last_seen > 3 * self.heartbeat:
            # Nothing heard for too long (a leader gone without a word, a hung server):
            # whatever we asked for is lost; ask again. Not a stall by itself: a consumer
            # that is really gone answers the new request with a refusal.
            self._outstanding = 0
            self._last_seen = time.monotonic()
        if self._stalls >= 2:
            # Tell the caller when it keeps happening (it may need to re-declare).
            self._stalls = 0
            raise ConsumerStalled(self.subject)
        cap = min(self.batch, limit)
        want = cap - self._outstanding - len(self._ready)
        if want < max(1, cap // 2) or time.monotonic() < self._quiet_until:
            return
        request = {"batch": want, "expires": int(self.expires * 1e9),
                   "idle_heartbeat": int(self.heartbeat * 1e9)}
        try:
            await self.nc.publish(self.subject, json.dumps(request).encode(),
                                  reply=self._inbox)
        except nats.errors.Error as exc:
            log.warning("pull request failed: %s", exc)
            return
        self._outstanding += want

    async def next_batch(self, max_msgs: int, *, timeout: float = 1.0) -> list[Msg]:
        """Up to ``max_msgs`` messages: at least one, unless ``timeout`` passes first.

        Never more than ``max_msgs`` (nor ``batch``) messages are asked for and not yet
        taken, so a caller that can only take a few does not hoard messages. Once
        halted it returns nothing, at once.
        """
        if self._halted:
            return []
        await self._top_up(max_msgs)
        if not self._ready:
            quiet = self._quiet_until - time.monotonic()
            if 0 < quiet < timeout:
                timeout = quiet  # then ask again, rather than wait out the whole timeout
            await self._bell.wait(timeout)
            if not self._ready or self._halted:
                return []
        out: list[Msg] = []
        while self._ready and len(out) < max_msgs:
            out.append(self._ready.popleft())
        return out


class PullGroup:
    """Several pull consumers taken from as one: one waiter, one batch from all of them.

    A process that owns many consumers of one kind (the partitions it was given) takes
    from them in one loop, so that its batches are as large as one consumer's would be
    and it pays per batch once, not once per consumer. Each consumer keeps its own pull
    requests, flow control and recovery; consumers join and leave while it runs.
    """

    def __init__(self) -> None:
        self._subs: list[PullConsumer] = []
        self._bell = _Bell()
        self._halted = False
        self._turn = 0  # the consumer taken from first next time, so that none starves
        self._stalled: ConsumerStalled | None = None

    def add(self, sub: PullConsumer) -> None:
        """Take from ``sub`` too, from the next :meth:`next_batch` on."""
        sub.on_wake = self._bell.ring
        self._subs.append(sub)
        self._bell.ring()

    def remove(self, sub: PullConsumer) -> None:
        """Take nothing more from ``sub`` (what it holds is its own :meth:`PullConsumer.stop`'s)."""
        if sub in self._subs:
            self._subs.remove(sub)
        sub.on_wake = None

    def halt(self) -> None:
        """As :meth:`PullConsumer.halt`, for the group: nothing more is taken."""
        self._halted = True
        self._bell.ring()

    @property
    def ready(self) -> int:
        """Messages received by the group's consumers and not yet taken."""
        return sum(sub.ready for sub in self._subs)

    async def next_batch(self, max_msgs: int, *, timeout: float = 1.0) -> list[Msg]:
        """Up to ``max_msgs`` messages from the group's consumers, as
        :meth:`PullConsumer.next_batch`: at least one, unless ``timeout`` passes first.

        Each consumer is asked for up to ``max_msgs`` itself (what one partition gets
        does not wait for another's), and the messages are taken from the consumers in
        turn. A consumer that stalls (:class:`ConsumerStalled`) does not hold up the
        others: the stall is raised by the call after the one that saw it.
        """
        if self._halted:
            return []
        if self._stalled is not None:
            stalled, self._stalled = self._stalled, None
            raise stalled
        quiet = timeout
        now = time.monotonic()
        for sub in list(self._subs):
            try:
                await sub._top_up(max_msgs)
            except ConsumerStalled as exc:
                self._stalled = exc
            if 0 < sub._quiet_until - now < quiet:
                quiet = sub._quiet_until - now  # then ask again, not wait out the timeout
        if not self.ready:
            if self._stalled is not None:
                stalled, self._stalled = self._stalled, None
                raise stalled
            await self._bell.wait(quiet)
            if self._halted:
                return []
        out: list[Msg] = []
        subs = self._subs
        for i in range(len(subs)):
            if len(out) >= max_msgs:
                break
            out += subs[(self._turn + i) % len(subs)].take_ready(max_msgs - len(out))
        self._turn = (self._turn + 1) % max(1, len(subs))
        return out
