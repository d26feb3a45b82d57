"""Dead letters: how every natsflow service writes one (the orchestrator, any worker).

A letter must always be storable: one that is not is tried again on every delivery of
its message, and the message never leaves. Its ``data`` is the payload as a JSON
string, and escaping can make that six times larger than the payload (a control byte
becomes ``\\u0001``, a quote ``\\"``), so when the whole letter would not fit in the
server's ``max_payload`` it keeps the longest beginning of the payload that does, with
``truncated`` set; ``size`` and ``sha256`` always describe the whole original payload.

And a message whose letter cannot be stored all the same (no dead-letter stream, NATS
away) is not kept forever: past :data:`LETTER_RETRIES` more deliveries it is dropped,
with one error log line (see :func:`give_up_on_letter`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Protocol

from pydantic import TypeAdapter

from .errors import ErrorInfo
from .headers import MSG_ID
from .messages import DeadLetter

__all__ = ["LETTER_HEADROOM", "LETTER_RETRIES", "Letterable", "dead_letter",
           "give_up_on_letter"]

#: Bytes a letter leaves free below ``max_payload``: for its headers (the server counts
#: them in), and for a field or two growing in a later version.
LETTER_HEADROOM = 4096
#: Deliveries, beyond the point where a message is dead-lettered, over which a letter
#: that could not be stored is tried again; after those the message is dropped.
LETTER_RETRIES = 5
#: A reason kept in full up to this many bytes; a longer one is cut short too.
_REASON_BUDGET = 16 * 1024

_TEXT: TypeAdapter[str] = TypeAdapter(str)


class Letterable(Protocol):
    """What a letter needs of a delivered message (``nats.aio.msg.Msg`` fits)."""

    subject: str
    data: bytes


def _metadata(msg: Letterable) -> Any:
    try:
        return getattr(msg, "metadata", None)  # a property that raises off JetStream
    except Exception:
        return None


def dead_letter(msg: Letterable, reason: ErrorInfo, *, time: datetime,
                max_payload: int, data: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The dead letter of ``msg``: its JSON, at most ``max_payload`` minus
    :data:`LETTER_HEADROOM` bytes, and its headers.

    The headers hold a ``Nats-Msg-Id`` made of the message's place in its stream: a
    message redelivered after its letter was stored (its term lost) is not kept twice.

    Args:
        msg: The message given up on.
        reason: Why (its code names the DLQ subject the caller publishes to).
        time: When.
        max_payload: The server's limit (``nc.max_payload``).
        data: What to keep of the payload, if not all of it (a secret left out); the
            letter's ``size`` and ``sha256`` then describe this, not the original.
    """
    meta = _metadata(msg)
    stream_seq = deliveries = None
    headers: dict[str, str] = {}
    if meta is not None:
        stream_seq, deliveries = meta.sequence.stream, meta.num_delivered
        headers[MSG_ID] = f"{meta.stream}:{stream_seq}:dead-letter"
    raw = (msg.data or b"") if data is None else data.encode()
    text = raw.decode("utf-8", errors="replace")
    letter = DeadLetter(reason=reason, subject=msg.subject, stream_seq=stream_seq,
                        deliveries=deliveries, data=text, size=len(raw),
                        sha256=hashlib.sha256(raw).hexdigest(), time=time)
    budget = max(max_payload - LETTER_HEADROOM, 1024)
    whole = letter.model_dump_json().encode()
    if len(whole) <= budget:
        return whole, headers
    if len(reason.model_dump_json()) > _REASON_BUDGET:
        # A reason can be large too (thousands of field errors): keep its gist.
        letter = letter.model_copy(update={"reason": reason.model_copy(update={
            "message": reason.message[:2000], "details": None,
            "errors": reason.errors[:20] if reason.errors else None})})
    empty = letter.model_copy(update={"data": "", "truncated": True})
    room = budget - len(empty.model_dump_json().encode())
    # The longest beginning of the text whose JSON fits: escaping only grows with length.
    lo, hi = 0, min(len(text), max(room, 0))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_TEXT.dump_json(text[:mid])) - 2 <= room:
            lo = mid
        else:
            hi = mid - 1
    cut = letter.model_copy(update={"data": text[:lo], "truncated": True})
    return cut.model_dump_json().encode(), headers


def give_up_on_letter(deliveries: int, *, limit: int) -> bool:
    """Whether a message whose letter could not be stored is dropped now.

    Args:
        deliveries: How often the message has been delivered.
        limit: The deliveries after which its consumer dead-letters a message.
    """
    return deliveries >= limit + LETTER_RETRIES
