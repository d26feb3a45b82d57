"""``GET /dead-letters``: the messages natsflow gave up on, newest first, with reasons.

Read from the dead-letter stream (``<PREFIX>_DLQ``) by sequence, newest first, a page at
a time: ``before`` is the ``next_before`` of the page before. Letters are not in any
namespace (they are raw messages no service could use), so the route needs ``admin``.
"""

from __future__ import annotations

from typing import Annotated, Final

import nats.js.errors
from fastapi import FastAPI, Query, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import Unavailable
from contracts.messages import DeadLetter

from ._link import NatsLink
from ._problems import problem_responses

__all__ = ["DeadLetterList", "StoredLetter", "add_dead_letter_routes"]

_JSON: Final = "application/json"
#: Sequences looked at for one page at most (deleted or unreadable ones are skipped).
_MAX_SCAN: Final = 2000


class StoredLetter(BaseModel):
    """A dead letter and where it is in the dead-letter stream."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(description="Its sequence in the dead-letter stream.")
    letter: DeadLetter


class DeadLetterList(BaseModel):
    """A page of dead letters, newest first."""

    model_config = ConfigDict(extra="forbid")

    items: list[StoredLetter]
    total: int = Field(description="Letters in the stream.")
    next_before: int | None = Field(default=None, description=(
        "Pass it as `before` for the next (older) page; absent on the last page."))


def add_dead_letter_routes(app: FastAPI, link: NatsLink) -> None:
    """Register ``GET /dead-letters`` on ``app``."""

    @app.get("/dead-letters", response_model=DeadLetterList,
             summary="Dead letters, newest first", tags=["dead letters"],
             responses=problem_responses(400, 503))
    async def list_dead_letters(
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[int | None, Query(ge=1, description=(
            "Only letters older than this stream sequence (`next_before`)."))] = None,
    ) -> Response:
        """Each letter with its reason (`reason.code`, `reason.message`), the subject and
        payload of the message it keeps, and its stream sequence."""
        client = link.client()  # 503 while NATS is not connected
        js = client.nc.jetstream()
        stream = client.subjects.dlq_stream
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return _answer(DeadLetterList(items=[], total=0))
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"cannot read the dead letters: {exc}") from None
        state = info.state
        seq = min(state.last_seq, (before or state.last_seq + 1) - 1)
        items: list[StoredLetter] = []
        scanned = 0
        while seq >= max(state.first_seq, 1) and len(items) < limit and scanned < _MAX_SCAN:
            scanned += 1
            try:
                msg = await js.get_msg(stream, seq)
                items.append(StoredLetter(seq=seq, letter=DeadLetter.model_validate_json(
                    msg.data or b"")))
            except (nats.js.errors.NotFoundError, ValidationError):
                pass  # deleted, or not a letter: nothing to show
            seq -= 1
        more = seq >= max(state.first_seq, 1)
        return _answer(DeadLetterList(items=items, total=state.messages,
                                      next_before=seq + 1 if more else None))


def _answer(page: DeadLetterList) -> Response:
    return Response(page.model_dump_json(exclude_none=True), media_type=_JSON)
