"""Transient faults: telling them apart, and logging each as one line with a count.

While NATS reconnects or a bucket is unavailable, every message in flight fails the
same way; a line (and a traceback) per message buries what happened in thousands of
copies of it. :class:`ConditionLog` logs the first occurrence of a condition, counts
the next ones, and sums them up in one line per window while the condition lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors

from contracts.errors import Unavailable

__all__ = ["ConditionLog", "describe", "is_transient"]

#: Failures that say "not now" rather than "never": the connection, the server or a
#: stream is away for a while. Anything else is unexpected and is logged in full.
_TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,  # nats-py's TimeoutError is one too
    ConnectionError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    Unavailable,
)
#: Distinct conditions one log keeps count of; beyond it the oldest is forgotten.
_MAX_CONDITIONS = 256


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault that passes by itself (trying again later may work)."""
    if isinstance(exc, _TRANSIENT):
        return True
    # A JetStream 503: no leader yet, insufficient resources, no stream responders.
    return isinstance(exc, nats.js.errors.APIError) and exc.code == 503


def describe(exc: BaseException) -> str:
    """``Type: message`` (just the type when the message is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class _Condition:
    since: float  # when its last line was logged
    count: int = 0  # occurrences since, not logged
    timer: asyncio.TimerHandle | None = None


class ConditionLog:
    """One log line per condition, then a count of its repeats per ``window`` seconds.

    The first occurrence of a condition is logged as given. Repeats within ``window``
    seconds are only counted; at the end of the window one line says how many there
    were (``<condition>: 57 more in the last 10s``), and so on while it lasts. A
    condition that stops for a whole window is logged in full again when it comes back.

    Args:
        logger: Where lines go.
        window: Seconds between two lines about one condition.
        level: Level of the lines.
    """

    def __init__(self, logger: logging.Logger, *, window: float = 10.0,
                 level: int = logging.WARNING) -> None:
        self.logger = logger
        self.window = window
        self.level = level
        self._conditions: dict[str, _Condition] = {}

    def __call__(self, condition: str, msg: str, *args: Any,
                 extra: dict[str, Any] | None = None) -> None:
        """Log ``msg % args`` unless ``condition`` was logged less than a window ago.

        ``condition`` names the kind of fault (not the message it hit): all occurrences
        with the same name are one condition.
        """
        now = time.monotonic()
        seen = self._conditions.get(condition)
        if seen is not None and seen.count and now - seen.since >= self.window:
            self._summarize(condition)  # no loop ran the timer: sum up now
        if seen is None or (not seen.count and now - seen.since >= self.window):
            if seen is None and len(self._conditions) >= _MAX_CONDITIONS:
                oldest = next(iter(self._conditions))
                self._forget(oldest)
            self._conditions[condition] = _Condition(since=now)
            self.logger.log(self.level, msg, *args, extra=extra)
            return
        seen.count += 1
        if seen.timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: summed up later
                seen.timer = asyncio.get_running_loop().call_later(
                    max(0.0, seen.since + self.window - now), self._summarize, condition)

    def _summarize(self, condition: str) -> None:
        seen = self._conditions.get(condition)
        if seen is None:
            return
        if seen.timer is not None:
            seen.timer.cancel()
            seen.timer = None
        if seen.count:
            now = time.monotonic()
            self.logger.log(self.level, "%s: %d more in the last %.0fs", condition,
                            seen.count, now - seen.since)
            seen.since, seen.count = now, 0

    def _forget(self, condition: str) -> None:
        seen = self._conditions.pop(condition)
        if seen.timer is not None:
            seen.timer.cancel()

    def flush(self) -> None:
        """Log the counts still pending now (e.g. when stopping)."""
        for condition in list(self._conditions):
            self._summarize(condition)
