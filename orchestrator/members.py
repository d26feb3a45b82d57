"""The live orchestrators of a deployment, and the partitions this one owns.

Each orchestrator keeps one key in the ``<prefix>_members`` bucket, put again every
``MEMBER_RENEW`` seconds; the bucket's TTL (``MEMBER_TTL``) ages out the key of one that
died, and one that stops deletes its own. Every renewal also reads the keys and works
out, by rendezvous hashing (:mod:`orchestrator.partitions`), which partitions this one
pulls: a member that comes or goes moves only its own share. Members learn of each other
within a renewal, of a dead one within the TTL and a renewal; meanwhile a partition may
be pulled by two members (harmless: see :mod:`orchestrator.partitions`) or by none of the
living (its messages wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from .partitions import owned_by

__all__ = ["MEMBER_RENEW", "MEMBER_TTL", "Members", "new_member_id"]

log = logging.getLogger("natsflow.orchestrator")

#: Seconds a member's key lives after its last renewal (the bucket's TTL).
MEMBER_TTL = 6.0
#: Seconds between renewals (and looks at the other members).
MEMBER_RENEW = 1.5


def new_member_id() -> str:
    """A name for this process: its host and pid (for an operator), and a random part
    (a restarted process with the same pid is another member)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Members:
    """This orchestrator's membership: its key, kept alive, and the partitions it owns.

    Args:
        kv: The members bucket (its TTL is ``MEMBER_TTL``).
        member: This orchestrator's id (see :func:`new_member_id`).
        on_change: Called with the partitions to own whenever they change (and first
            with those owned on :meth:`join`); it must not block for long.
        renew: Seconds between renewals.
        declare: Makes the bucket again, when it is gone (a server restarted without
            its data): else no renewal would ever succeed again, and the shares of the
            partitions would stay those of the members seen last, maybe one dead.
    """

    def __init__(self, kv: KeyValue, member: str, *,
                 on_change: Callable[[frozenset[int]], Awaitable[None]],
                 renew: float = MEMBER_RENEW,
                 declare: Callable[[], Awaitable[KeyValue]] | None = None) -> None:
        self.kv = kv
        self.declare = declare
        self.member = member
        self.renew = renew
        self.on_change = on_change
        self.owned: frozenset[int] | None = None
        self.members: frozenset[str] = frozenset()
        self._value = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()

    async def join(self) -> frozenset[int]:
        """Put this member's key, and own its share of the partitions."""
        await self.beat()
        assert self.owned is not None
        return self.owned

    async def beat(self) -> None:
        """Renew this member's key, look at the others, and own what is now its share."""
        try:
            await self.kv.put(self.member, self._value)
        except (nats.js.errors.NotFoundError, nats.js.errors.NoStreamResponseError):
            if self.declare is None:
                raise
            log.warning("the members bucket is gone; declaring it again")
            self.kv = await self.declare()
            await self.kv.put(self.member, self._value)
        try:
            members = frozenset(await self.kv.keys())
        except nats.js.errors.NoKeysError:
            members = frozenset()
        owned = owned_by(self.member, members)
        self.members = members | {self.member}
        if owned != self.owned:
            log.info("owning partitions %s (of %d members)",
                     ",".join(map(str, sorted(owned))) or "none", len(self.members))
            self.owned = owned
            await self.on_change(owned)

    async def run(self, stopping: asyncio.Event) -> None:
        """Renew every ``renew`` seconds until ``stopping`` is set."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.renew)
            if stopping.is_set():
                return
            try:
                await self.beat()
            except (nats.errors.Error, OSError) as exc:  # NATS away: keep what is owned
                log.debug("renewing the membership failed: %s", exc)

    async def leave(self) -> None:
        """Delete this member's key: the others take its partitions at their next look."""
        with contextlib.suppress(nats.errors.Error, OSError):
            await asyncio.wait_for(self.kv.delete(self.member), 2.0)
