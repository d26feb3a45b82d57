"""The test environment's clock: real time plus a skip, and the timers it holds.

:class:`TimeSkippingClock` is both halves of the orchestrator's time seam: the source of
``now`` (``Orchestrator(clock=...)``) and the :class:`orchestrator.timers.TimerParking`
(``Orchestrator(timers=...)``). A timer that is not due yet is held here instead of in
JetStream; it is handed back (a nak without delay, so the timer loop takes it again at
once and finds it due) when real time reaches it or when the clock is moved past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg

from orchestrator.timers import Defer
from transport.streams import ENGINE_ACK_WAIT

__all__ = ["TimeSkippingClock"]

log = logging.getLogger("natsflow.testing")


@dataclass(slots=True)
class _Parked:
    due: datetime
    msg: Msg
    defer: Defer


class TimeSkippingClock:
    """UTC now plus an offset that only grows; holds the timers not yet due.

    Args:
        keepalive: Seconds between in-progress acks of the timers held, so JetStream
            does not deliver them again while they wait (keep it under a third of the
            timer consumer's ack wait).
    """

    def __init__(self, *, keepalive: float = ENGINE_ACK_WAIT / 3) -> None:
        self.keepalive = keepalive
        self._offset = timedelta()
        # By stream sequence: a timer delivered again (a missed keepalive) is held once.
        self._parked: dict[int, _Parked] = {}
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the clock ------------------------------------------------------------------
    def now(self) -> datetime:
        """The environment's time: real UTC time plus every skip so far."""
        return datetime.now(UTC) + self._offset

    __call__ = now

    @property
    def skipped(self) -> timedelta:
        """How far ahead of real time the clock is."""
        return self._offset

    @property
    def parked(self) -> int:
        """Timers held, not yet due."""
        return len(self._parked)

    def next_due(self) -> datetime | None:
        """When the earliest held timer is due; None if none is held."""
        return min((p.due for p in self._parked.values()), default=None)

    async def advance(self, delta: timedelta) -> int:
        """Move the clock ``delta`` ahead; hand back every timer now due.

        Returns:
            How many timers were handed back.

        Raises:
            ValueError: ``delta`` is negative (time does not go back).
        """
        if delta < timedelta():
            raise ValueError("the clock only moves forward")
        self._offset += delta
        return await self.release_due()

    async def advance_to(self, when: datetime) -> int:
        """Move the clock to ``when`` (if that is ahead); hand back what is due."""
        return await self.advance(max(timedelta(), when - self.now()))

    async def release_due(self) -> int:
        """Hand back every held timer whose due time has come, earliest first."""
        now = self.now()
        due = sorted(((k, p) for k, p in self._parked.items() if p.due <= now),
                     key=lambda kp: kp[1].due)
        for key, parked in due:
            del self._parked[key]
            await parked.defer(parked.msg, 0.0)
        self._poke()
        return len(due)

    # -- TimerParking -----------------------------------------------------------------
    async def park(self, msg: Msg, *, due: datetime, wait: float, defer: Defer) -> None:
        """Hold a timer that is not due (see :class:`orchestrator.timers.TimerParking`)."""
        self._parked[msg.metadata.sequence.stream] = _Parked(due, msg, defer)
        if self._task is None or self._task.done():
            self._changed = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="natsflow-testing-timers")
        self._poke()

    async def close(self) -> None:
        """Stop watching the held timers; hand each back to JetStream for its rest."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        parked, self._parked = self._parked, {}
        for p in parked.values():
            await p.defer(p.msg, max(0.0, (p.due - self.now()).total_seconds()))

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _run(self) -> None:
        """Hand timers back as real time reaches them; keep the held ones alive."""
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.keepalive
        while True:
            self._changed.clear()
            soonest = self.next_due()
            wait = next_beat - loop.time()
            if soonest is not None:
                wait = min(wait, (soonest - self.now()).total_seconds())
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
            await self.release_due()
            if loop.time() >= next_beat:
                next_beat = loop.time() + self.keepalive
                for p in list(self._parked.values()):
                    try:
                        await p.msg.in_progress()
                    except Exception as exc:  # redelivered after the ack wait: held again
                        log.debug("could not keep a held timer: %s", exc)
