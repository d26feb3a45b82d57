"""Workflow priorities: the levels, the default, and how a priority travels.

A workflow's ``priority`` is a whole number from ``MIN_PRIORITY`` (1, the lowest) to
``MAX_PRIORITY`` (5, the most urgent); without one it runs at ``DEFAULT_PRIORITY`` (3).
Its steps' tasks, its map items and its child workflows run at the same level. A task of
the default level travels where every task always has (``<prefix>.task.<task type>``, the
consumer ``worker-<task type>``), so a worker that knows nothing of priorities still gets
every task of a workflow that sets none; the other levels have a subject and a consumer
of their own (:meth:`contracts.subjects.Subjects.task`), which a priority-aware worker
serves highest first (see docs/priorities.md for the hand-out policy).
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

__all__ = ["DEFAULT_PRIORITY", "LEVELS", "MAX_PRIORITY", "MIN_PRIORITY", "Priority",
           "effective"]

#: The lowest level.
MIN_PRIORITY: Final = 1
#: The most urgent level.
MAX_PRIORITY: Final = 5
#: The level of a workflow that sets none (and of every task before priorities existed).
DEFAULT_PRIORITY: Final = 3
#: Every level, most urgent first: the order a worker asks them in.
LEVELS: Final = tuple(range(MAX_PRIORITY, MIN_PRIORITY - 1, -1))

#: A priority as a field: an integer from 1 to 5, higher first.
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)]


def effective(priority: int | None) -> int:
    """The level a workflow (or task) with ``priority`` runs at: the default for None."""
    return DEFAULT_PRIORITY if priority is None else priority
