"""A limit's permits, pure: the state one KV entry keeps, and what each request does.

One :class:`Pool` per limit and key value (a concurrency limit), or one
:class:`Bucket` (a rate limit). :func:`apply` is the limiter's whole logic — the shell
(:mod:`orchestrator.limiter`) reads the entry, applies a request, writes it back with
compare-and-set, then sends the notices. Every request is idempotent by its holder:

- asking again for a permit held, or waited for, answers as before (a replayed outbox,
  a redelivered request);
- a permit given back is remembered for a while (``released``), with whom its return
  let in: a late copy of its request is ignored (no permit leaks to a holder that
  ended), and a repeated return sends the same grants again (a limiter that crashed
  between its write and its notices loses none).

Waiting is first come, first served; ``cancel_oldest`` puts the newcomer first and
stops the oldest holder, whose permit then goes to it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.flow import Claim, LimitState
from contracts.namespaces import DEFAULT_NAMESPACE

from .permits import LimitEffect, PermitInput

__all__ = ["LAG_ROOM", "RELEASED_KEPT", "RESERVED_KEPT", "Bucket", "Entry", "Notice", "Pool",
           "apply", "interval", "lag_room", "pool_id", "state_of"]

#: Given-back holders a pool remembers (the oldest are forgotten first).
RELEASED_KEPT = 256
#: Seconds of a rate window left for begins that lag their reserved time.
LAG_ROOM = 0.25
#: Reservations a rate bucket remembers, so a repeated request gets the same time.
RESERVED_KEPT = 256


class Entry(BaseModel):
    """A holder of (or waiter for) a permit."""

    model_config = ConfigDict(extra="forbid")

    wf: str
    step: str | None = None
    attempt: int
    index: int
    again: int = 0
    at: datetime
    evicts: str | None = Field(default=None, description="cancel_oldest: the holder "
                               "stopped to make room for this one.")


class Pool(BaseModel):
    """A concurrency limit's permits for one key value."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pool"] = "pool"
    pool: str
    key: str = ""
    namespace: str = DEFAULT_NAMESPACE
    limit: int
    holders: dict[str, Entry] = Field(default_factory=dict, description="In grant order.")
    waiting: dict[str, Entry] = Field(default_factory=dict, description="In queue order.")
    #: holder -> the holders its return let in
    released: dict[str, list[str]] = Field(default_factory=dict)
    evicted: list[str] = Field(default_factory=list)


class Bucket(BaseModel):
    """A rate limit's bucket for one key value: the next free time (GCRA)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["bucket"] = "bucket"
    pool: str
    key: str = ""
    namespace: str = DEFAULT_NAMESPACE
    limit: int
    per: float
    tat: datetime | None = Field(default=None, description="The next free time.")
    reserved: dict[str, datetime] = Field(default_factory=dict)


class Notice(BaseModel):
    """A message the limiter sends after its write: an answer, or a stop (cancel_oldest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    answer: PermitInput | None = None
    stop: bool = False  # stop this workflow (cancel_oldest)
    holder: str = ""


def lag_room(per: float) -> float:
    """Seconds a begin may lag its reserved time (``LAG_ROOM``, at most a fifth of the
    window); the engine asks again for an attempt that could not begin within it."""
    return min(LAG_ROOM, per / 5)


def interval(per: float, limit: int) -> float:
    """Seconds between two reserved begins: ``per / limit`` with room for a begin's lag.

    Begins reserved this far apart and each within ``lag_room`` of its time put no more
    than ``limit`` begins in any window of ``per`` seconds.
    """
    return (per + lag_room(per)) / limit


def pool_id(claim: Claim) -> str:
    """The KV key (and subject token) of a claim's limit and key value."""
    kind = "r" if claim.is_rate else "c"
    digest = hashlib.sha256(f"{claim.pool}\x00{claim.key}".encode()).hexdigest()[:40]
    return f"{kind}{digest}"


def _answer(entry: Entry, holder: str, outcome: Literal["granted", "queued", "refused",
                                                         "reserved"], *,
            position: int | None = None, run_at: datetime | None = None) -> Notice:
    return Notice(workflow_id=entry.wf, holder=holder, answer=PermitInput(
        outcome=outcome, step_id=entry.step, attempt=entry.attempt, index=entry.index,
        again=entry.again, position=position, run_at=run_at))


def new_state(req: LimitEffect) -> Pool | Bucket:
    """The entry of a limit nobody used yet."""
    c = req.claim
    if c.per is not None:
        return Bucket(pool=c.pool, key=c.key, namespace=c.namespace, limit=c.limit, per=c.per)
    return Pool(pool=c.pool, key=c.key, namespace=c.namespace, limit=c.limit)


def apply(state: Pool | Bucket | None, req: LimitEffect, now: datetime
          ) -> tuple[Pool | Bucket | None, list[Notice]]:
    """Apply one request; the new state (None: unchanged) and the notices to send."""
    state = state if state is not None else new_state(req)
    if isinstance(state, Bucket):
        return _reserve(state, req, now)
    if req.op == "acquire":
        return _acquire(state, req, now)
    return _release(state, req, now)


def _entry(req: LimitEffect, now: datetime) -> Entry:
    return Entry(wf=req.workflow_id, step=req.step_id, attempt=req.attempt, index=req.index,
                 again=req.again, at=now)


def _position(pool: Pool, holder: str) -> int:
    return list(pool.waiting).index(holder) + 1


def _acquire(pool: Pool, req: LimitEffect, now: datetime
             ) -> tuple[Pool | None, list[Notice]]:
    h = req.holder
    if h in pool.holders:
        return None, [_answer(pool.holders[h], h, "granted")]
    if h in pool.waiting:
        waiter = pool.waiting[h]
        again = [_answer(waiter, h, "queued", position=_position(pool, h))]
        if waiter.evicts is not None:
            again.append(_stop(pool, waiter.evicts))
        return None, again
    if h in pool.released:
        return None, []  # a late copy of a request whose permit came back already
    pool = pool.model_copy(deep=True)
    # The limit is the newest request's: a changed config takes effect as permits free.
    pool.limit = req.claim.limit
    entry = _entry(req, now)
    if len(pool.holders) < pool.limit and not pool.waiting:
        pool.holders[h] = entry
        return pool, [_answer(entry, h, "granted")]
    policy = req.claim.policy
    if policy == "cancel_newest":
        _forget(pool, h, [])
        return pool, [_answer(entry, h, "refused")]
    notices: list[Notice] = []
    if policy == "cancel_oldest":
        oldest = next((o for o in pool.holders if o not in pool.evicted), None)
        if oldest is not None:
            entry.evicts = oldest
            pool.evicted.append(oldest)
            notices.append(_stop(pool, oldest))
        pool.waiting = {h: entry, **pool.waiting}
    else:
        pool.waiting[h] = entry
    notices.insert(0, _answer(entry, h, "queued", position=_position(pool, h)))
    return pool, notices


def _stop(pool: Pool, holder: str) -> Notice:
    entry = pool.holders.get(holder)
    wf = entry.wf if entry is not None else holder.split("#")[0].split("/")[0]
    return Notice(workflow_id=wf, stop=True, holder=holder)


def _release(pool: Pool, req: LimitEffect, now: datetime
             ) -> tuple[Pool | None, list[Notice]]:
    h = req.holder
    if h in pool.released:  # again: send the same grants again (they are idempotent)
        return None, [_answer(pool.holders[g], g, "granted")
                      for g in pool.released[h] if g in pool.holders]
    pool = pool.model_copy(deep=True)
    pool.holders.pop(h, None)
    pool.waiting.pop(h, None)
    if h in pool.evicted:
        pool.evicted.remove(h)
    let_in: list[str] = []
    notices: list[Notice] = []
    while pool.waiting and len(pool.holders) < pool.limit:
        nxt, entry = next(iter(pool.waiting.items()))
        del pool.waiting[nxt]
        entry.at = now
        pool.holders[nxt] = entry
        let_in.append(nxt)
        notices.append(_answer(entry, nxt, "granted"))
    _forget(pool, h, let_in)
    return pool, notices


def _forget(pool: Pool, holder: str, let_in: list[str]) -> None:
    pool.released[holder] = let_in
    while len(pool.released) > RELEASED_KEPT:
        del pool.released[next(iter(pool.released))]


def _reserve(bucket: Bucket, req: LimitEffect, now: datetime
             ) -> tuple[Bucket | None, list[Notice]]:
    h = req.holder
    entry = _entry(req, now)
    if req.op == "release":
        return None, []  # a rate limit's time is spent, not held
    if h in bucket.reserved:
        return None, [_answer(entry, h, "reserved", run_at=bucket.reserved[h])]
    bucket = bucket.model_copy(deep=True)
    bucket.limit, bucket.per = req.claim.limit, req.claim.per or bucket.per
    # Generic cell rate, no burst: one begin every interval() seconds, so no window of
    # `per` seconds holds more than `limit` begins, even where tasks begin (later than
    # their reserved time by a timer's and a message's delay, by differing amounts).
    start = now if bucket.tat is None or bucket.tat < now else bucket.tat
    bucket.tat = start + timedelta(seconds=interval(bucket.per, bucket.limit))
    bucket.reserved[h] = start
    while len(bucket.reserved) > RESERVED_KEPT:
        del bucket.reserved[next(iter(bucket.reserved))]
    return bucket, [_answer(entry, h, "reserved", run_at=start)]


def state_of(entry: Pool | Bucket) -> LimitState:
    """What the operations show of one entry."""
    if isinstance(entry, Bucket):
        return LimitState(limit=entry.pool, key=entry.key, namespace=entry.namespace,
                          kind="rate", max=entry.limit, per=entry.per, next_free=entry.tat)
    return LimitState(limit=entry.pool, key=entry.key, namespace=entry.namespace,
                      kind="concurrency", max=entry.limit, in_use=len(entry.holders),
                      waiting=len(entry.waiting), holders=list(entry.holders),
                      queue=list(entry.waiting))
