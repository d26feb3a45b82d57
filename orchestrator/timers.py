"""Where a durable timer waits until it is due: the orchestrator's timer seam.

Every durable timer (a sleep step, a retry's backoff, a step's timeout, a heartbeat
deadline, a workflow's timeout, a stop's grace) is a message on ``<prefix>.timer.<id>``
carrying its absolute due time. The timer loop takes it; when it is not yet due by the
orchestrator's clock, a :class:`TimerParking` decides how it waits. In production
JetStream keeps it (:class:`JetStreamParking`, a delayed nak: survives restarts, costs no
memory); a test environment holds it in hand and lets it go when its own clock says so
(``natsflow.testing``, time skipping).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from nats.aio.msg import Msg

__all__ = ["Defer", "JetStreamParking", "TimerParking"]

#: Hands a message back to JetStream for that many seconds (``Processor.settle_later``);
#: 0 means "deliver it again now".
Defer = Callable[[Msg, float], Awaitable[None]]


class TimerParking(Protocol):
    """How a timer message that is not yet due waits until it is."""

    async def park(self, msg: Msg, *, due: datetime, wait: float, defer: Defer) -> None:
        """See to it that ``msg`` is delivered to the timer loop again once it is due.

        Args:
            msg: A timer message taken from the timer consumer, not yet settled.
            due: When the timer is due, by the orchestrator's clock.
            wait: Seconds from now until ``due``, by that clock (more than 0).
            defer: The one way to hand ``msg`` back to JetStream (now or later); an
                implementation holding it meanwhile may only report it in progress.
        """
        ...


class JetStreamParking:
    """The default: JetStream keeps the timer for ``wait`` seconds (a delayed nak).

    The delay is the server's: a restart of the orchestrator does not lose it, and a jump
    of the orchestrator's wall clock does not make parked timers fire at once.
    """

    async def park(self, msg: Msg, *, due: datetime, wait: float, defer: Defer) -> None:
        await defer(msg, wait)
