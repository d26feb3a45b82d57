"""Sending a record's outbox, and knowing when every message of it is stored.

A transition's outbox is sent in one round (tasks first: a worker can start while the
events are still being stored) and its acks are awaited together. A record's lock is
held until its outbox is *sent*, not acknowledged: the next transition carries the
parts not yet stored into its own outbox (:class:`Part`, :class:`Sent`), so a crash
loses none of them. Map joins run once the item outputs they read are stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts.headers import MSG_ID
from contracts.subjects import Subjects
from transport.publish import AsyncPublisher, send
from transport.streams import DUPLICATE_WINDOW
from transport.tracing import TraceContext

from .outputs import OutputStore
from .records import (
    BatchRecord,
    Effect,
    EventEffect,
    JoinMapEffect,
    StartChildEffect,
    TaskEffect,
    WorkflowRecord,
)
from .routing import Routed, Router

__all__ = ["PUBLISH_TIMEOUT", "Outbox", "Part", "Sent", "abandon", "every"]

#: Seconds after which an unacknowledged message of an outbox counts as failed.
PUBLISH_TIMEOUT = 10.0

#: JetStream's error code for "no message found" (the sequence is not in the stream).
_NO_MESSAGE_FOUND = 10037

#: What a start-child effect becomes before it is sent (see :mod:`.children`).
StartChild = Callable[[StartChildEffect, TraceContext | None], Awaitable[Effect]]


async def every(acks: list[asyncio.Future[Any]]) -> None:
    """Every ack, awaited in turn: they come back in about the order they were sent, so
    this wakes up once or twice, where gather runs a callback per ack."""
    try:
        for ack in acks:
            await ack
    except BaseException:
        abandon(acks)  # the others' errors, if any, are not raised too
        raise


def abandon(acks: list[asyncio.Future[Any]]) -> None:
    """Let go of sends whose outcome no longer matters (their errors are not raised)."""
    for ack in acks:
        ack.add_done_callback(lambda f: f.cancelled() or f.exception())


@dataclass(slots=True)
class Part:
    """One transition's share of an outbox: its effects, their message bodies by the
    effect's ``id``, and its own acks (then its map joins)."""

    effects: list[Effect]
    bodies: dict[int, bytes]
    acked: asyncio.Future[Any]
    #: INBOX sequences of the inputs of its transition (None: not all known); they are
    #: acked only once ``acked`` is done, and the record holding it names them.
    inputs: tuple[int, ...] | None = None

    @property
    def stored(self) -> bool:
        """Every message of it stored and every join of it done."""
        acked = self.acked
        return acked.done() and not acked.cancelled() and acked.exception() is None


@dataclass(slots=True)
class Sent:
    """An outbox sent but not yet acknowledged: its parts and their acks."""

    acked: asyncio.Future[Any]  # every part's acks
    own: list[Effect]  # the effects of this transition alone
    #: The transitions whose effects the outbox holds, oldest first: the next transition
    #: carries on only those not yet stored, so a record that changes faster than its
    #: acks come back (a map's results) does not carry ever more of them.
    parts: list[Part]
    #: The revision of the record that holds the outbox, and the connection's epoch
    #: (its reconnect count) it was sent on: once every ack is in on that same
    #: connection, the revision is known to be published (see ``Processor``).
    revision: int
    epoch: int


class Outbox:
    """Sends effects through one publisher and tells when they are stored.

    Args:
        nc: Connected NATS client (plain messages, and reading the events stream).
        publisher: Where every JetStream message goes, map joins included.
        router: Effect -> message.
        subjects: The deployment's names.
        outputs: The output store map joins read (None if no map step runs here).
        start_child: Makes a start-child effect into the effect sent instead.
    """

    def __init__(self, nc: Client, publisher: AsyncPublisher, router: Router, *,
                 subjects: Subjects, outputs: OutputStore | None,
                 start_child: StartChild) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.publisher = publisher
        self.router = router
        self.subjects = subjects
        self.outputs = outputs
        self.start_child = start_child

    async def publish(self, key: str, effects: Sequence[Effect], *,
                      trace: TraceContext | None = None) -> None:
        """Publish an outbox in one round: send everything, then await every ack.

        Tasks go out first: a worker can start while the events are still being stored.
        Task messages carry ``trace`` (the workflow's trace context) as headers, and a
        child workflow inherits it. Map joins run once the rest is stored.
        """
        ordered = sorted(effects, key=lambda e: not isinstance(e, TaskEffect))
        acks = await self.send_all(key, ordered, trace)
        await every(acks)  # each fails by itself after PUBLISH_TIMEOUT
        for join in effects:
            if isinstance(join, JoinMapEffect):
                await self.join_map(join)

    async def send_all(self, key: str, effects: Sequence[Effect],
                       trace: TraceContext | None,
                       routed: dict[int, Routed] | None = None
                       ) -> list[asyncio.Future[Any]]:
        """Send effects in order (map joins excepted); their acks' futures. ``routed``:
        messages already made for some of them, by ``id``."""
        acks: list[asyncio.Future[Any]] = []
        try:
            for effect in effects:
                if isinstance(effect, JoinMapEffect):
                    continue  # after the item outputs it reads are stored
                if isinstance(effect, StartChildEffect):
                    effect = await self.start_child(effect, trace)
                ack = await self.send(key, effect, trace,
                                      routed.get(id(effect)) if routed else None)
                if ack is not None:
                    acks.append(ack)
        except BaseException:
            abandon(acks)  # nobody awaits them now: their errors are not left unread
            raise
        return acks

    async def send(self, key: str, effect: Effect, trace: TraceContext | None,
                   routed: Routed | None = None) -> asyncio.Future[Any] | None:
        """Hand one effect to the connection (no waiting); its ack's future, if any."""
        subject, payload, msg_id = routed or self.router.route(key, effect)
        if msg_id is None:
            await send(self.nc, subject, payload)
            return None
        headers = {MSG_ID: msg_id}
        if trace is not None and isinstance(effect, TaskEffect):
            headers.update(trace.headers())
        return await self.publisher.publish(subject, payload, headers,
                                            timeout=PUBLISH_TIMEOUT)

    def acked(self, acks: list[asyncio.Future[Any]], joins: list[JoinMapEffect]
              ) -> asyncio.Future[Any]:
        """One future for a sent outbox: every ack, then the map joins it asked for."""
        if not joins:
            return asyncio.ensure_future(every(acks))

        async def then_join() -> None:
            await every(acks)
            for join in joins:
                await self.join_map(join)
        return asyncio.ensure_future(then_join())

    async def join_map(self, join: JoinMapEffect) -> None:
        """Collect a map's item outputs and hand them to its workflow as MapJoined."""
        assert self.outputs is not None, "map steps need an output store"
        try:
            output, size = await self.outputs.joined(join.workflow_id, join.step_id,
                                                     join.attempt, join.total)
            joined = self.router.joined(join, output, size)
        except ValueError as exc:  # too large even for the blob store
            joined = self.router.join_failed(join, str(exc))
        subject, payload, msg_id = self.router.join(join, joined)
        assert msg_id is not None
        ack = await self.publisher.publish(subject, payload, {MSG_ID: msg_id},
                                           timeout=PUBLISH_TIMEOUT)
        await ack

    async def flush_stale(self, key: str, record: WorkflowRecord | BatchRecord,
                          now: datetime) -> None:
        """Republish an outbox whose publication this process did not witness."""
        assert record.outbox_at is not None
        trace = record.trace if isinstance(record, WorkflowRecord) else None
        age = (now - record.outbox_at).total_seconds()
        if age < DUPLICATE_WINDOW - 20:
            # duplicates are dropped by msg id
            await self.publish(key, record.outbox, trace=trace)
            return
        # Too old for the dedupe window. Events must not be duplicated: publish only the
        # ones provably missing. Everything else is idempotent where it lands (a task is
        # at-least-once by contract, a timer or command for a state that moved on is a
        # no-op), so it is simply sent again.
        events = [e for e in record.outbox if isinstance(e, EventEffect)]
        stored = await asyncio.gather(*map(self.event_stored, events))  # at once, not in turn
        missing = [e for e, there in zip(events, stored, strict=True) if not there]
        others = [e for e in record.outbox if not isinstance(e, EventEffect)]
        await self.publish(key, [*others, *missing], trace=trace)

    async def inputs_settled(self, inputs: Sequence[int] | None) -> bool:
        """Whether none of these INBOX messages is left in the stream (the work queue
        deletes a message once it is acked): then the outbox they made was stored.

        False when ``inputs`` is None or empty (not known), or a look-up fails: when
        unsure, the caller republishes.
        """
        if not inputs:
            return False
        stream = self.subjects.inbox_stream

        async def gone(seq: int) -> bool:
            # A plain get (the stream's leader answers), not a direct get: a replica
            # that serves direct gets may not have seen the ack's delete yet.
            try:
                await self.js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == _NO_MESSAGE_FOUND:
                    return True
                raise  # no such stream, say: not a proof of anything
            return False
        try:
            if len(inputs) == 1:
                return await gone(inputs[0])
            return all(await asyncio.gather(*(gone(seq) for seq in inputs)))
        except Exception:  # unsure: republish, as before this check
            return False

    async def event_stored(self, effect: EventEffect) -> bool:
        """Whether the events stream holds this event (or a later one of its subject)."""
        ev = effect.event
        try:
            msg = await self.js.get_last_msg(self.subjects.events_stream,
                                             self.subjects.event(ev.workflow_id, ev.type.value))
        except nats.js.errors.NotFoundError:
            return False
        try:
            return int(json.loads(msg.data or b"{}").get("seq", 0)) >= ev.seq
        except ValueError:
            return False

