"""Garbage collection for the serving processes (orchestrator, gateway, workers).

CPython's default collects its youngest generation every 700 container allocations
and, every 100 of those, traverses every object the process holds. A busy orchestrator
allocates thousands of objects per workflow and holds a cache of records, so with the
defaults it spent a fifth of its CPU or more in the collector (measured with
``bench/throughput.py``). Serving processes therefore freeze what start-up made (it
lives for the whole process and need never be traversed again) and collect less often.
Reference counting still frees almost everything at once; the collector only finds
cycles, and those merely wait a little longer.

``NATSFLOW_GC_THRESHOLD`` overrides it: three integers (``gc.set_threshold``'s
arguments, e.g. ``50000,20,10``), or ``default`` to keep Python's own settings.
"""

from __future__ import annotations

import gc
import os

from contracts.errors import InvalidRequest

__all__ = ["GC_THRESHOLD", "threshold_from_env", "tune_gc"]

#: Youngest generation collected every 50,000 allocations (not 700); the middle one
#: every 20 of those; everything every 10 of those.
GC_THRESHOLD = (50_000, 20, 10)
_ENV = "NATSFLOW_GC_THRESHOLD"


def threshold_from_env(environ: dict[str, str] | None = None) -> tuple[int, ...] | None:
    """The thresholds asked for (None: keep Python's defaults).

    Raises:
        InvalidRequest: the variable is neither ``default`` nor three positive integers.
    """
    raw = (os.environ if environ is None else environ).get(_ENV, "").strip()
    if not raw:
        return GC_THRESHOLD
    if raw == "default":
        return None
    try:
        values = tuple(int(part) for part in raw.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InvalidRequest(f"{_ENV} must be 'default' or three positive integers like "
                             f"'50000,20,10', not {raw!r}", field=_ENV)
    return values


def tune_gc(environ: dict[str, str] | None = None) -> tuple[int, ...]:
    """Freeze what exists now and set the collector's thresholds; the ones in force.

    Call once the process has imported what it serves with, before it serves.

    Raises:
        InvalidRequest: ``NATSFLOW_GC_THRESHOLD`` is malformed.
    """
    threshold = threshold_from_env(environ)
    if threshold is None:
        return gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)
    return gc.get_threshold()
