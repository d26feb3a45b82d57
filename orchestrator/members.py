"""The live orchestrators of a deployment, and the partitions this one owns.

Each orchestrator keeps one key in the ``<prefix>_members`` bucket, put again every
``MEMBER_RENEW`` seconds; the bucket's TTL (``MEMBER_TTL``) ages out the key of one that
died, and one that stops deletes its own. Every renewal also reads the keys and works
out, by rendezvous hashing (:mod:`orchestrator.partitions`), which partitions this one
pulls: a member that comes or goes moves only its own share. Members learn of each other
within a renewal, of a dead one within the TTL and a renewal; meanwhile a partition may
be pulled by two members (harmless: see :mod:`orchestrator.partitions`) or by none of the
living (its messages wait).

A member also answers a core NATS request on its own subject (``Subjects.member_ping``),
and every renewal asks each of the others: "no responders" means its connection is gone
(a killed process's socket is closed by the kernel, and the server drops its
subscriptions at once), so it is left out of the shares at once, not after its key ages
out. A restarted orchestrator thus takes over the partitions of the one it replaces at
once. Anything else (a timeout: a hung or slow member) counts as alive until its key
ages out.
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
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from .partitions import owned_by

__all__ = ["MEMBER_RENEW", "MEMBER_TTL", "Members", "new_member_id"]

log = logging.getLogger("natsflow.orchestrator")

#: Seconds a member's key lives after its last renewal (the bucket's TTL).
MEMBER_TTL = 6.0
#: Seconds between renewals (and looks at the other members).
MEMBER_RENEW = 1.5
#: Seconds a member's answer to a liveness request is waited for.
PING_TIMEOUT = 0.5


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
        nc: The connection liveness requests are answered and asked on (None: none
            are; a dead member is then seen only when its key ages out).
        ping_subject: A member's liveness subject, from its id.
    """

    def __init__(self, kv: KeyValue, member: str, *,
                 on_change: Callable[[frozenset[int]], Awaitable[None]],
                 renew: float = MEMBER_RENEW,
                 declare: Callable[[], Awaitable[KeyValue]] | None = None,
                 nc: Client | None = None,
                 ping_subject: Callable[[str], str] | None = None) -> None:
        self.kv = kv
        self.nc = nc
        self.ping_subject = ping_subject
        self._answering: Subscription | None = None
        self.declare = declare
        self.member = member
        self.renew = renew
        self.on_change = on_change
        self.owned: frozenset[int] | None = None
        self.members: frozenset[str] = frozenset()
        self._value = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()

    async def join(self) -> frozenset[int]:
        """Answer liveness requests, put this member's key, and own its share of the
        partitions (answering first: whoever sees the key may ask at once)."""
        if self.nc is not None and self.ping_subject is not None and self._answering is None:
            self._answering = await self.nc.subscribe(self.ping_subject(self.member),
                                                      cb=self._answer)
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
        members -= await self._gone(members - {self.member})
        owned = owned_by(self.member, members)
        self.members = members | {self.member}
        if owned != self.owned:
            log.info("owning partitions %s (of %d members)",
                     ",".join(map(str, sorted(owned))) or "none", len(self.members))
            self.owned = owned
            await self.on_change(owned)

    async def _answer(self, msg: Msg) -> None:
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(b"")

    async def _gone(self, others: frozenset[str]) -> frozenset[str]:
        """The members among ``others`` whose connection is gone ("no responders")."""
        nc, subject = self.nc, self.ping_subject
        if nc is None or subject is None or not others:
            return frozenset()

        async def gone(member: str) -> bool:
            try:
                await nc.request(subject(member), b"", timeout=PING_TIMEOUT)
            except nats.errors.NoRespondersError:
                return True
            except (nats.errors.Error, OSError):
                pass  # slow, hung, or NATS away: alive until its key ages out
            return False

        names = sorted(others)
        verdicts = await asyncio.gather(*(gone(m) for m in names))
        dead = frozenset(m for m, v in zip(names, verdicts, strict=True) if v)
        if dead:
            log.info("members gone before their keys aged out: %s", ", ".join(sorted(dead)))
        return dead

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
        if self._answering is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._answering.unsubscribe()
            self._answering = None
        with contextlib.suppress(nats.errors.Error, OSError):
            await asyncio.wait_for(self.kv.delete(self.member), 2.0)
