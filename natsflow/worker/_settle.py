"""Every ack, nak and term of a task message is decided and sent here, nowhere else.

The decisions are pure functions of what happened; :func:`settle` is the only place
that talks back to JetStream about a delivery.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Protocol

from transport.transient import ConditionLog, describe, is_transient

__all__ = [
    "NAK_DELAY",
    "DeliveredMessage",
    "Settlement",
    "after_dead_letter",
    "after_missed_start",
    "after_result",
    "after_shutdown",
    "settle",
]

log = logging.getLogger("natsflow.worker")
#: Settlements lost while NATS is away: one line per condition with a count.
_conditions = ConditionLog(log)

#: Seconds before a nak'ed task is delivered again.
NAK_DELAY = 1.0


class DeliveredMessage(Protocol):
    """What the worker needs of a JetStream delivery (``nats.aio.msg.Msg`` fits)."""

    subject: str
    data: bytes
    headers: dict[str, str] | None

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...
    async def in_progress(self) -> None: ...


class Settlement(Enum):
    """What to tell JetStream about a delivery."""

    ACK = "ack"    # done: the result (or dead letter) is stored
    NAK = "nak"    # deliver again soon: we could not store what we owe
    TERM = "term"  # never deliver again: the message is unusable (and dead-lettered)


def after_result(published: bool) -> Settlement:
    """A result was produced; ack only once it is stored, so no result is ever lost."""
    return Settlement.ACK if published else Settlement.NAK


def after_dead_letter(published: bool, *, give_up: bool = False) -> Settlement:
    """A malformed message: drop it once its dead letter is stored, else try again;
    unless ``give_up`` (it has been tried often enough): then it is dropped anyway."""
    return Settlement.TERM if published or give_up else Settlement.NAK


def after_missed_start() -> Settlement:
    """Taken after its ``start_by``: the orchestrator has failed the attempt; drop it."""
    return Settlement.ACK


def after_shutdown() -> Settlement:
    """The worker stopped mid-task: hand the task to another worker right away."""
    return Settlement.NAK


async def settle(msg: DeliveredMessage, settlement: Settlement) -> None:
    """Send ``settlement`` for ``msg``; failures are logged, never raised.

    A settlement that does not reach the server is harmless: the message is redelivered
    after the consumer's ack wait.
    """
    try:
        match settlement:
            case Settlement.ACK:
                await msg.ack()
            case Settlement.NAK:
                await msg.nak(delay=NAK_DELAY)
            case Settlement.TERM:
                await msg.term()
    except Exception as exc:
        if is_transient(exc):
            _conditions(f"could not {settlement.value} messages ({type(exc).__name__})",
                        "could not %s message on %s: %s", settlement.value, msg.subject,
                        describe(exc))
        else:
            log.warning("could not %s message on %s", settlement.value, msg.subject,
                        exc_info=True)
