"""Which orchestrator pulls which partitions: rendezvous hashing over the live members.

Pure: every member computes the same answer from the same member list, with nothing to
agree on but that list (the ``<prefix>_members`` bucket, see :mod:`orchestrator.members`).
Rendezvous (highest random weight) hashing, capped: each partition, in order, goes to
the member with the highest score for it that has not yet its share (``partitions //
members``, or one more for the first ``partitions % members`` to reach it). The cap keeps
the shares even (with two members and eight partitions, four each; uncapped, one member
in 128 pairs would own none); the scores keep most partitions where they were when a
member comes or goes.

Ownership is only for efficiency: correctness never depends on it (records are written
with compare-and-set, the outbox's message ids are deduplicated), so two members that
briefly both pull a partition during a hand-over do no harm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from contracts.subjects import PARTITIONS

__all__ = ["assignment", "owned_by", "owner_of"]


def _score(member: str, partition: int) -> tuple[int, str]:
    digest = hashlib.blake2b(f"{partition}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), member  # the name breaks a (rare) tie


def assignment(members: Iterable[str], *, partitions: int = PARTITIONS) -> dict[int, str]:
    """Each partition's owner among ``members`` (empty when there is none)."""
    everyone = sorted(set(members))
    if not everyone:
        return {}
    base, extra = divmod(partitions, len(everyone))  # ``extra`` members own one more
    load = dict.fromkeys(everyone, 0)
    owners: dict[int, str] = {}
    for k in range(partitions):
        for member in sorted(everyone, key=lambda m: _score(m, k), reverse=True):
            if load[member] < base or (load[member] == base and extra > 0):
                if load[member] == base:
                    extra -= 1
                owners[k] = member
                load[member] += 1
                break
    return owners


def owner_of(partition: int, members: Iterable[str]) -> str | None:
    """The member that pulls ``partition``; None when there is no member."""
    return assignment(members).get(partition)


def owned_by(member: str, members: Iterable[str], *,
             partitions: int = PARTITIONS) -> frozenset[int]:
    """The partitions ``member`` pulls, given the live ``members`` (itself counted in,
    whether or not it is listed: it is alive, since it asks)."""
    owners = assignment({*members, member}, partitions=partitions)
    return frozenset(k for k, m in owners.items() if m == member)
