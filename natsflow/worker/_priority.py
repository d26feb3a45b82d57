"""Priority hand-out: which level of a task type a worker takes its next tasks from.

Each priority level of a task type has its own subject and consumer
(:meth:`contracts.subjects.Subjects.task`). JetStream hands out a consumer's messages in
order and knows nothing of priorities, so the choice is the worker's:

- :class:`HandOut` is the policy, pure: the most urgent level with tasks waiting, except
  that a level passed over ``every`` times in a row gets the next task.
- :class:`Doorbell` learns that a level has tasks waiting without taking one: a pull
  request of ``max_bytes: 1`` is answered ``409 Message Size Exceeds MaxBytes`` by the
  server as soon as the consumer has a message (which stays where it is, for the next
  pull request, this worker's or another's).
- :class:`Lanes` puts them together for one task type: while no other level has tasks it
  fetches the default level exactly as a worker without priorities does (the hot path
  is unchanged); once a doorbell rings it takes from the levels the policy says, with
  one ``no_wait`` pull each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.headers import STATUS_DESCRIPTION_HEADER, STATUS_HEADER
from contracts.priorities import DEFAULT_PRIORITY, LEVELS
from contracts.subjects import Subjects
from transport.consume import PullConsumer

__all__ = ["STARVATION_LIMIT", "Doorbell", "HandOut", "Lanes", "OneShotPull"]

log = logging.getLogger("natsflow.worker")

#: Tasks handed out from more urgent levels while a level waits, before it gets one.
STARVATION_LIMIT = 10
#: Seconds a doorbell's pull request lives; it is asked again when it expires.
BELL_EXPIRES = 10.0
#: Seconds a one-shot pull may take before what came is taken as all there is.
PULL_TIMEOUT = 2.0
#: What the server says to a pull request too small for the next message: a doorbell.
_RING = "Message Size Exceeds MaxBytes"


@dataclass
class HandOut:
    """The hand-out policy of one task type in one worker (pure, no I/O).

    Strict priority, bounded: the most urgent level with tasks waiting goes first, but
    once ``every`` tasks of more urgent levels have passed a waiting level, it gets the
    next one (several such levels: one each, most urgent first). So a waiting level sees
    at most ``every`` tasks of more urgent levels handed out before its own, plus one for
    each more urgent level starving at the same time (at most ``every + 3``).

    Attributes:
        every: The starvation limit (``STARVATION_LIMIT``).
        waiting: The levels known to have tasks.
        passed: For each waiting level, tasks handed out above it since its last one.
    """

    every: int = STARVATION_LIMIT
    waiting: set[int] = field(default_factory=set)
    passed: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("the starvation limit is at least 1")

    def rang(self, level: int) -> None:
        """``level`` has tasks waiting."""
        self.waiting.add(level)
        self.passed.setdefault(level, 0)

    def emptied(self, level: int) -> None:
        """``level`` has no task left."""
        self.waiting.discard(level)
        self.passed.pop(level, None)

    def next(self) -> tuple[int, int] | None:
        """The level to take from and the most to take from it, or None if none waits."""
        if not self.waiting:
            return None
        starved = [level for level in self.waiting if self.passed[level] >= self.every]
        if starved:
            return max(starved), 1  # one each, the most urgent of them first
        top = max(self.waiting)
        below = [self.passed[level] for level in self.waiting if level < top]
        return top, max(1, self.every - max(below)) if below else self.every

    def took(self, level: int, n: int) -> None:
        """``n`` tasks were handed out from ``level``."""
        if n <= 0:
            return
        for other in self.waiting:
            if other < level:
                self.passed[other] += n
        if level in self.passed:
            self.passed[level] = 0


class Doorbell:
    """Rings when a consumer has a message, without taking it.

    Args:
        nc: Connected client.
        stream: The tasks stream.
        consumer: The level's durable consumer.
        on_ring: Called when the consumer has a message waiting.
    """

    def __init__(self, nc: Client, stream: str, consumer: str, on_ring: Callable[[], None],
                 *, expires: float = BELL_EXPIRES) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.on_ring = on_ring
        self.expires = expires
        self._inbox = ""
        self._sub: Subscription | None = None
        self._armed_at: float | None = None  # when the pull request went out, if one is out
        self._quiet_until = 0.0

    async def start(self) -> Doorbell:
        """Subscribe to the bell's inbox."""
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    def due(self) -> bool:
        """Whether :meth:`arm` would ask: none is out (or it is lost), and not refused
        just now."""
        now = time.monotonic()
        if self._armed_at is not None and now - self._armed_at < self.expires + 2.0:
            return False  # out, and not lost
        return now >= self._quiet_until and self._sub is not None

    async def arm(self) -> None:
        """Ask to be told of a message, unless asked already (and not too long ago)."""
        if not self.due():
            return
        now = time.monotonic()
        request = {"batch": 1, "max_bytes": 1, "expires": int(self.expires * 1e9)}
        try:
            await self.nc.publish(self.subject, json.dumps(request).encode(),
                                  reply=self._inbox)
        except nats.errors.Error as exc:
            log.debug("doorbell request failed: %s", exc)
            return
        self._armed_at = now

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(STATUS_HEADER)
        if status == "100":
            return
        self._armed_at = None
        if status == "409" and headers.get(STATUS_DESCRIPTION_HEADER) == _RING:
            self.on_ring()
        elif status != "408":
            # Refused (the consumer gone, no leader...): not in a tight loop.
            self._quiet_until = time.monotonic() + 1.0


class OneShotPull:
    """``no_wait`` pulls of one consumer: what it has now, up to a number, at once."""

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._got: list[Msg] = []
        self._want = 0
        self._done: asyncio.Future[None] | None = None

    async def start(self) -> OneShotPull:
        """Subscribe to the puller's inbox."""
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        return self

    async def stop(self) -> list[Msg]:
        """Stop; returns messages that came after their pull gave up (to hand back)."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(self._sub.drain(), 5.0)  # type: ignore[no-untyped-call]
            self._sub = None
        late, self._got = self._got, []
        return late

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _on_message(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(STATUS_HEADER):
            if msg.headers[STATUS_HEADER] != "100":
                self._finish()  # 404 no messages, or a refusal: this pull is over
            return
        self._got.append(msg)
        if len(self._got) >= self._want:
            self._finish()

    async def pull(self, n: int, *, timeout: float = PULL_TIMEOUT) -> tuple[list[Msg], bool]:
        """Up to ``n`` messages the consumer has now, and whether it may have more."""
        if self._got:  # came late, after an earlier pull gave up on them
            out, self._got = self._got[:n], self._got[n:]
            return out, True
        self._want = n
        self._done = asyncio.get_running_loop().create_future()
        request = {"batch": n, "no_wait": True}  # with "expires" too, it would wait
        try:
            await self.nc.publish(self.subject, json.dumps(request).encode(),
                                  reply=self._inbox)
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("pulling %s failed: %s", self.subject, exc)
        finally:
            self._done = None
        out, self._got = self._got[:n], self._got[n:]
        return out, len(out) >= n


class Lanes:
    """Every priority level of one task type, taken from as the hand-out policy says.

    Args:
        nc: Connected client.
        subjects: The deployment's names.
        task_type: The task type.
        batch: Most messages asked for at once from the default level.
        every: The starvation limit (see :class:`HandOut`).
    """

    def __init__(self, nc: Client, subjects: Subjects, task_type: str, *, batch: int,
                 every: int = STARVATION_LIMIT) -> None:
        stream = subjects.tasks_stream
        self.policy = HandOut(every=every)
        self.default = PullConsumer(nc, stream, subjects.worker_consumer(task_type),
                                    batch=batch)
        self._pulls = {level: OneShotPull(nc, stream, subjects.worker_consumer(task_type,
                                                                               level))
                       for level in LEVELS}
        self._bells = {level: Doorbell(nc, stream, subjects.worker_consumer(task_type, level),
                                       self._ringer(level))
                       for level in LEVELS}

    def _ringer(self, level: int) -> Callable[[], None]:
        def ring() -> None:
            self.policy.rang(level)
            self.default.wake()  # an idle wait on the default level ends: choose again

        return ring

    async def start(self) -> Lanes:
        """Subscribe every level's inboxes and ring-in the doorbells."""
        await self.default.start()
        for pull in self._pulls.values():
            await pull.start()
        for bell in self._bells.values():
            await bell.start()
        await self._arm()
        return self

    def halt(self) -> None:
        """Take nothing more: a waiting :meth:`next_batch` returns now, later ones at once
        and empty (see :meth:`PullConsumer.halt`)."""
        self.default.halt()

    async def stop(self) -> None:
        """Stop; messages received and not taken are handed back at once."""
        for bell in self._bells.values():
            await bell.stop()
        for pull in self._pulls.values():
            for msg in await pull.stop():
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()
        await self.default.stop()

    async def _arm(self) -> None:
        # The default level's bell only matters while another level has tasks: until
        # then the default level is fetched continuously, as without priorities.
        waiting = self.policy.waiting
        others = any(level != DEFAULT_PRIORITY for level in waiting)
        for level, bell in self._bells.items():
            if (level not in waiting and (level != DEFAULT_PRIORITY or others)
                    and bell.due()):
                await bell.arm()

    async def next_batch(self, max_msgs: int, *, timeout: float = 1.0) -> list[Msg]:
        """Up to ``max_msgs`` tasks, the most urgent first (at least one, unless
        ``timeout`` passes first), as :meth:`PullConsumer.next_batch`."""
        if self.default.halted:
            return []
        if self.default.ready and self.policy.waiting:
            # Default tasks already in hand (from a wait that another level cut short)
            # wait like any others: the policy must know of them.
            self.policy.rang(DEFAULT_PRIORITY)
        await self._arm()
        out: list[Msg] = []
        while len(out) < max_msgs:
            choice = self.policy.next()
            if choice is None:
                break
            level, most = choice
            want = min(max_msgs - len(out), most)
            got: list[Msg] = []
            if level == DEFAULT_PRIORITY:
                got = self.default.take_ready(want)  # fetched before, in hand
            more = True
            if len(got) < want:
                pulled, more = await self._pulls[level].pull(want - len(got))
                got += pulled
            if not more:
                self.policy.emptied(level)
            self.policy.took(level, len(got))
            out += got
        await self._arm()
        if out:
            return out
        # No other level has tasks: the default level, as a worker without priorities.
        return await self.default.next_batch(max_msgs, timeout=timeout)
