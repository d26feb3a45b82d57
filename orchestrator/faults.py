"""Crash points for fault-injection tests: off unless ``NATSFLOW_CRASH_AT`` is set.

``natsflow orchestrator`` reads, once at start-up::

    NATSFLOW_CRASH_AT="after-save:0.02,after-publish:0.02"   # point:probability, ...
    NATSFLOW_CRASH_SEED=7                                    # optional; default: random

Each time the shell passes a named point it draws from a seeded RNG and, with the
point's probability, SIGKILLs its own process: no clean-up, no flush, exactly what a
power cut or an OOM kill leaves behind. The points, in the order a transition passes
them:

``before-save``
    the engine has decided; nothing is written.
``after-save``
    the record is written with its outbox; nothing is published.
``after-publish``
    the outbox is published; the inbox messages are not acked.

The shell is given its crash points (:class:`CrashPoints`) when it is made:
``Orchestrator(..., crash_points=plan_from_env(os.environ))``, as the CLI does; the
default, :data:`NO_CRASHES`, passes every point without a thought.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from contracts.errors import ValidationFailed

__all__ = ["CRASH_AT_ENV", "CRASH_SEED_ENV", "NO_CRASHES", "POINTS", "CrashPlan", "CrashPoints",
           "parse_crash_at", "plan_from_env"]

CRASH_AT_ENV = "NATSFLOW_CRASH_AT"
CRASH_SEED_ENV = "NATSFLOW_CRASH_SEED"
#: The named points of one transition (see the module docstring).
POINTS = frozenset({"before-save", "after-save", "after-publish"})


class CrashPoints(Protocol):
    """What the shell calls at each named point of a transition (see :data:`POINTS`)."""

    def reach(self, point: str) -> None:
        """The shell is at ``point`` (may not return: a crash plan kills the process)."""
        ...


class _NoCrashes:
    """Crash points that never crash: the default."""

    def reach(self, point: str) -> None:
        """Pass ``point``."""


#: The crash points of a process that is not under a fault-injection test.
NO_CRASHES: CrashPoints = _NoCrashes()


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(slots=True)
class CrashPlan:
    """Where the process kills itself, and how likely it is at each point.

    Args:
        odds: Point name -> probability in [0, 1].
        seed: Seed of the RNG that decides (None: from the OS).
        kill: What a crash does (SIGKILL of this process; tests of the plan replace it).
    """

    odds: Mapping[str, float]
    seed: int | None = None
    kill: Callable[[], None] = _kill_self
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reach(self, point: str) -> None:
        """The shell is at ``point``: maybe die here."""
        p = self.odds.get(point)
        if p and self._rng.random() < p:
            self.kill()


def parse_crash_at(spec: str) -> dict[str, float]:
    """``"after-save:0.02,before-save:1"`` -> ``{"after-save": 0.02, "before-save": 1.0}``.

    Raises:
        ValidationFailed: an unknown point, a missing or malformed probability, or one
            outside [0, 1] (code ``validation-failed``, field ``NATSFLOW_CRASH_AT``).
    """
    odds: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = part.partition(":")
        name = name.strip()
        if name not in POINTS:
            raise _invalid(f"unknown crash point {name!r} (known: {', '.join(sorted(POINTS))})")
        if not sep:
            raise _invalid(f"crash point {name!r} has no probability (write {name}:0.01)")
        try:
            p = float(value)
        except ValueError:
            raise _invalid(f"crash point {name!r}: {value!r} is not a number") from None
        if not 0.0 <= p <= 1.0:
            raise _invalid(f"crash point {name!r}: probability {p} is outside [0, 1]")
        odds[name] = p
    return odds


def _invalid(message: str, *, field: str = CRASH_AT_ENV) -> ValidationFailed:
    return ValidationFailed(message, field=field)


def plan_from_env(env: Mapping[str, str]) -> CrashPlan | None:
    """The plan ``env`` asks for (None when ``NATSFLOW_CRASH_AT`` is unset or empty).

    Raises:
        ValidationFailed: a malformed spec or seed.
    """
    odds = parse_crash_at(env.get(CRASH_AT_ENV, ""))
    if not odds:
        return None
    raw_seed = env.get(CRASH_SEED_ENV, "").strip()
    try:
        seed = int(raw_seed) if raw_seed else None
    except ValueError:
        raise _invalid(f"{CRASH_SEED_ENV}={raw_seed!r} is not an integer",
                       field=CRASH_SEED_ENV) from None
    return CrashPlan(odds, seed)

