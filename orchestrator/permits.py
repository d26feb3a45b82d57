"""The messages between the engine and the limiter (docs/flow-control.md).

The engine asks for and gives back permits with a :class:`LimitEffect` in its outbox
(published on the LIMITS stream with a deterministic ``Nats-Msg-Id``, so a replayed
outbox asks once); the limiter answers the workflow with a :class:`PermitInput` on its
command subject. A *holder* names what holds a permit — a run ``<workflow>#<run>`` or a
step attempt ``<workflow>/<step>#<attempt>`` — so asking twice, or giving back twice,
changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.flow import Claim

__all__ = ["LimitEffect", "PermitInput", "holder_of"]

_Frozen = ConfigDict(extra="forbid", frozen=True)


def holder_of(workflow_id: str, step_id: str | None, attempt: int) -> str:
    """The holder id of a run (no step) or of a step's attempt."""
    if step_id is None:
        return f"{workflow_id}#{attempt}"
    return f"{workflow_id}/{step_id}#{attempt}"


class LimitEffect(BaseModel):
    """Ask for one permit (``acquire``; a rate limit: a time to begin) or give it back."""

    model_config = _Frozen
    kind: Literal["limit"] = "limit"
    op: Literal["acquire", "release"]
    claim: Claim
    index: int = Field(description="Which of the holder's claims (they go in order).")
    workflow_id: str
    step_id: str | None = None
    attempt: int = Field(description="The run or the step's attempt.")
    again: int = Field(default=0, description="A rate limit asked again (the attempt "
                       "could not begin in time for the last reservation): how often.")

    @property
    def holder(self) -> str:
        base = holder_of(self.workflow_id, self.step_id, self.attempt)
        return f"{base}~{self.again}" if self.again else base


class PermitInput(BaseModel):
    """The limiter's answer about one claim (a command to the workflow)."""

    model_config = _Frozen
    kind: Literal["permit"] = "permit"
    outcome: Literal["granted", "queued", "refused", "reserved"]
    step_id: str | None = None
    attempt: int
    index: int
    again: int = 0
    position: int | None = Field(default=None, description="queued: 1 = next.")
    run_at: datetime | None = Field(default=None, description="reserved: when it may begin.")
