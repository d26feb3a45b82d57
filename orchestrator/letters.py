"""What becomes of an inbox message: acked, handed back, or dead-lettered.

Every ack, nak and term of the engine's inbox messages is decided here
(:meth:`Letters.settle`), and every message that can never be processed is kept in
the dead-letter stream before it is terminated (:meth:`Letters.dead_letter`), sent
through the same publisher as the outbox (one reply subscription, one ack path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.dead_letters import dead_letter, give_up_on_letter
from contracts.errors import ErrorInfo
from contracts.subjects import Subjects
from transport.consume import delivery_count
from transport.publish import AsyncPublisher, send
from transport.streams import DUPLICATE_WINDOW
from transport.transient import ConditionLog, describe

from .metrics import OrchestratorMetrics
from .outbox import PUBLISH_TIMEOUT

__all__ = ["EARLY_RESULT_PATIENCE", "MAX_DELIVERIES", "Letters", "Malformed", "Verdict"]

log = logging.getLogger("natsflow.orchestrator")

#: Deliveries after which a message that keeps failing is dead-lettered.
MAX_DELIVERIES = 20
#: An early result (see :mod:`orchestrator.runtime`) is handed back until it is this
#: old, then dropped as stale: beyond the duplicate window a dispatch of its attempt
#: would be a new message that a worker runs afresh.
EARLY_RESULT_PATIENCE = DUPLICATE_WINDOW + 30.0
_EARLY_DELAY_MAX = 2.0


class Verdict(Enum):
    """What becomes of a message; decided in :meth:`Letters.settle` only."""

    ACK = "ack"
    RETRY = "retry"  # nak with a short delay
    TERM = "term"  # never redeliver (after dead-lettering)


class Malformed(Exception):
    """A message that can never be processed; it goes to the dead-letter stream."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class Letters:
    """Settles inbox messages and keeps the unusable ones as dead letters.

    Args:
        nc: Connected NATS client.
        subjects: The deployment's names.
        publisher: What dead letters are stored through (the outbox's; by default a
            publisher of its own on ``nc``).
        metrics: Where dead letters and early results are counted.
        conditions: The log of transient faults (one line per condition).
        clock: The time a dead letter is stamped with.
    """

    def __init__(self, nc: Client, subjects: Subjects, *, metrics: OrchestratorMetrics,
                 conditions: ConditionLog, publisher: AsyncPublisher | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.nc = nc
        self.publisher = publisher or AsyncPublisher(nc)
        self.subjects = subjects
        self.metrics = metrics
        self._conditions = conditions
        self.clock = clock

    async def settle(self, msg: Msg, verdict: Verdict) -> None:
        """The one place where inbox messages are acked, retried or terminated."""
        try:
            if verdict is Verdict.ACK:
                if msg.reply:  # msg.ack()'s message, without nc.publish's overhead
                    await send(self.nc, msg.reply, b"")
                else:
                    await msg.ack()  # not a JetStream delivery: nats-py's own error
            elif verdict is Verdict.RETRY:
                await msg.nak(delay=0.5)
            else:
                await msg.term()
        except nats.errors.Error as exc:
            # Not settled: JetStream redelivers after the ack wait; inputs are idempotent.
            self._conditions(f"could not {verdict.value} messages ({type(exc).__name__})",
                             "could not %s a message: %s", verdict.value, describe(exc))

    async def settle_later(self, msg: Msg, delay: float) -> None:
        """Hand a not-yet-due timer back to JetStream for ``delay`` seconds."""
        try:
            await msg.nak(delay=delay)
        except nats.errors.Error as exc:
            self._conditions(f"could not defer timers ({type(exc).__name__})",
                             "could not defer a timer: %s", describe(exc))

    async def hand_back_early(self, msg: Msg) -> None:
        """A result that came before its dispatch was saved: again later, or drop it.

        Handed back with a growing delay while younger than EARLY_RESULT_PATIENCE;
        older, no dispatch of its attempt is coming that it could belong to.
        """
        try:
            # The server's timestamp against real time, not the decision clock: that one
            # may run ahead (a test environment skipping time) and age every message.
            age = (datetime.now(UTC) - msg.metadata.timestamp).total_seconds()
        except Exception:  # no metadata: nothing tells its age
            age = EARLY_RESULT_PATIENCE
        if age >= EARLY_RESULT_PATIENCE:
            log.info("dropping a result for a dispatch that never came (%s)", msg.subject)
            await self.settle(msg, Verdict.ACK)
            return
        self.metrics.early_results.inc()
        await self.settle_later(msg, min(_EARLY_DELAY_MAX,
                                         0.01 * 2 ** min(delivery_count(msg), 10)))

    async def retry_or_dead_letter(self, msg: Msg, why: str, *,
                                   log_context: dict[str, str] | None = None,
                                   droppable: bool = True) -> None:
        """Hand a message that failed back, or dead-letter it after MAX_DELIVERIES
        (only if ``droppable``: else it is handed back until it is)."""
        deliveries = delivery_count(msg)
        if deliveries >= MAX_DELIVERIES and droppable:
            await self.dead_letter(msg, ErrorInfo(
                code="too-many-deliveries",
                message=f"gave up after {deliveries} deliveries: {why}"),
                log_context=log_context)
        else:
            await self.settle(msg, Verdict.RETRY)

    async def dead_letter(self, msg: Msg, reason: ErrorInfo, *,
                          log_context: dict[str, str] | None = None,
                          data: str | None = None) -> None:
        """Keep an unusable message in the dead-letter stream, then terminate it.

        The letter always fits in a message (see :mod:`contracts.dead_letters`). If it
        cannot be stored all the same, the message is handed back and the letter tried
        again on its next delivery; after ``LETTER_RETRIES`` deliveries beyond
        MAX_DELIVERIES it is terminated anyway, with one error log line.

        Args:
            msg: The message.
            reason: Why it can never be processed (its code names the DLQ subject).
            log_context: ``extra`` of the log line (``workflow_id`` when known).
            data: What to keep of the payload, if not all of it (a secret left out).
        """
        payload, headers = dead_letter(msg, reason, time=self.clock(),
                                       max_payload=self.nc.max_payload, data=data)
        try:
            await self.publisher.stored(self.subjects.dlq(reason.code), payload,
                                        headers or None, timeout=PUBLISH_TIMEOUT)
        except Exception as exc:
            deliveries = delivery_count(msg)
            if give_up_on_letter(deliveries, limit=MAX_DELIVERIES):
                log.error("dropping a message from %s after %d deliveries: it could not be "
                          "dead-lettered (%s) either: %s", msg.subject, deliveries,
                          describe(exc), reason.message, extra=log_context)
                await self.settle(msg, Verdict.TERM)
                return
            self._conditions(f"could not store dead letters ({type(exc).__name__})",
                             "could not dead-letter a message from %s (%s); will retry",
                             msg.subject, describe(exc), extra=log_context)
            await self.settle(msg, Verdict.RETRY)
            return
        self.metrics.dead_letters.labels(reason=reason.code).inc()
        log.warning("dead letter from %s: %s", msg.subject, reason.message, extra=log_context)
        await self.settle(msg, Verdict.TERM)
