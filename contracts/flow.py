"""Flow control in the language: concurrency limits and rate limits (docs/flow-control.md).

A *limit* is a pool of permits named by its ``name`` and, when it has a ``key``, split
into one pool per value of the key (``${input.customer}``). A workflow's
``concurrency`` holds a run in state ``queued`` until it has a permit of every limit it
names; a step's ``concurrency`` and ``rate_limit`` hold an attempt in state
``throttled``. The permits live in NATS (the ``<prefix>_limits`` bucket), so they hold
across orchestrator replicas and restarts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from contracts.errors import InvalidGraph
from contracts.language.checks import parse_duration
from contracts.language.expr import check_template
from contracts.namespaces import DEFAULT_NAMESPACE, Scope

__all__ = [
    "MAX_LIMIT",
    "Claim",
    "Concurrencies",
    "ConcurrencySpec",
    "LimitList",
    "LimitState",
    "ListLimitsRequest",
    "LimitPolicy",
    "RateLimitSpec",
    "Throttle",
    "check_flow",
]

#: Largest permit count (or rate) of one limit.
MAX_LIMIT: Final = 100_000

#: What a workflow's limit does with a run that finds it full.
LimitPolicy = Literal["queue", "cancel_newest", "cancel_oldest"]

_Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")]
_Key = Annotated[str, Field(min_length=1, max_length=512)]


class ConcurrencySpec(BaseModel):
    """At most ``limit`` runs (or step attempts) at once per value of ``key``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1, le=MAX_LIMIT, description="Permits: how many at once.")
    key: _Key | None = Field(
        default=None, description="A `${expr}` template; one pool per value (e.g. "
        "`${input.customer}`). None: one pool for all.")
    policy: LimitPolicy = Field(
        default="queue", description="A workflow finding its limit full: `queue` waits in "
        "FIFO order (state `queued`); `cancel_newest` refuses the new run (it ends "
        "`stopped` with error `concurrency-limit`); `cancel_oldest` stops the oldest "
        "running one and takes its place. Steps only `queue`.")
    name: _Name | None = Field(
        default=None, description="The limit's name: configs naming the same limit share "
        "its permits. Default: a workflow's definition (or name); a worker step's task "
        "type (shared by every workflow that runs it); another step `<workflow>.<step>`.")


class RateLimitSpec(BaseModel):
    """At most ``limit`` step attempts begin in any window of ``per`` (per key value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1, le=MAX_LIMIT, description="Attempts per window.")
    per: float = Field(gt=0, le=366 * 24 * 3600,
                       description="The window: seconds, or a duration like `1s`, `1m`.")
    key: _Key | None = Field(default=None, description="A `${expr}` template; one bucket "
                             "per value. None: one for all.")
    name: _Name | None = Field(default=None, description="As a concurrency limit's name "
                               "(default: the task type, or `<workflow>.<step>`).")

    @field_validator("per", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("`per` is a number of seconds or a duration like 1m")
        if isinstance(value, str):
            return parse_duration(value)
        return value


class Claim(BaseModel):
    """One permit a run or attempt asks for: a limit, its key's value, and the terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: str = Field(description="`wf:<name>`, `step:<name>` or `rate:<name>`.")
    key: str = Field(default="", description="The key's value ('' without a key).")
    limit: int
    policy: LimitPolicy = "queue"
    per: float | None = Field(default=None, description="Rate limits: the window, seconds.")
    namespace: str = Field(default=DEFAULT_NAMESPACE,
                           exclude_if=lambda v: v == DEFAULT_NAMESPACE,
                           description="The namespace whose limit it is.")

    @property
    def is_rate(self) -> bool:
        return self.per is not None


class Throttle(BaseModel):
    """The permits of one run or attempt: asked for in order, held until it ends.

    On a queued workflow (``WorkflowStatus.queue``) and a throttled step
    (``StepStatus.throttle``); kept while they run (their permits are held) and dropped
    when the permits are given back.
    """

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(description="The run (a workflow) or attempt (a step) it is for.")
    claims: list[Claim]
    granted: int = Field(default=0, description="Claims granted so far (in order).")
    since: datetime = Field(description="When the first was asked for.")
    position: int | None = Field(default=None, description="Place in the queue of the "
                                 "limit it waits for (1 = next), when it had to wait.")
    run_at: datetime | None = Field(default=None, description="A rate limit: when the "
                                    "attempt may begin.")
    waited: bool = Field(default=False, description="It had to wait (an event said so).")
    again: int = Field(default=0, description="A rate limit's reservations missed (the "
                       "attempt could not begin in time) and asked for again.")

    @property
    def complete(self) -> bool:
        return self.granted >= len(self.claims)

    @property
    def waiting_on(self) -> Claim | None:
        return None if self.complete else self.claims[self.granted]


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, dict | ConcurrencySpec) else value


#: A workflow's ``concurrency``: one limit or a list of them.
Concurrencies = Annotated[list[ConcurrencySpec], BeforeValidator(_listed)]

#: What a workflow's limit key may read; a step's may read the steps before it too.
_WORKFLOW_KEY_VARIABLES: Final = frozenset({"input", "workflow"})
_STEP_KEY_VARIABLES: Final = frozenset({"input", "workflow", "steps"})


def check_flow(config: Any) -> None:
    """The flow-control fields of a workflow config (a ``WorkflowConfig``).

    Raises:
        InvalidGraph: naming the field: a step limit with a policy other than ``queue``,
            a map's item step with a limit of its own, a key that does not parse.
        ExpressionError: a key's expression does not parse.
    """
    for i, spec in enumerate(config.concurrency):
        if spec.key is not None:
            check_template(spec.key, variables=_WORKFLOW_KEY_VARIABLES,
                           field=f"concurrency.{i}.key")
    for i, step in enumerate(config.steps):
        # A map's item step. Read from the fields, not getattr: on a model without the
        # field getattr raises and catches AttributeError, ~13 us per step per config.
        body = vars(step).get("step")
        if body is not None and (body.concurrency or body.rate_limit):
            raise InvalidGraph("a map's item step takes no concurrency or rate_limit (the "
                               "map's max_concurrency bounds its items; a limit on the map "
                               "step holds one permit for the whole map)", step=step.id,
                               field=f"steps.{i}.step.concurrency")
        spec = step.concurrency
        if spec is not None and spec.policy != "queue":
            raise InvalidGraph(f"a step's concurrency policy is `queue` (the cancelling "
                               f"policies are for workflows), not {spec.policy!r}",
                               step=step.id, field=f"steps.{i}.concurrency.policy")
        for name, limit in (("concurrency", spec), ("rate_limit", step.rate_limit)):
            if limit is not None and limit.key is not None:
                check_template(limit.key, variables=_STEP_KEY_VARIABLES,
                               field=f"steps.{i}.{name}.key")


class ListLimitsRequest(BaseModel):
    """``limit.list``: the limits in use and their permits (those the caller may see)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: str | None = Field(default=None, max_length=400, exclude_if=lambda v: v is None,
                              description="Only this limit (e.g. `wf:checkout`).")
    namespaces: Scope = None


class LimitState(BaseModel):
    """One limit and key value: its permits now."""

    model_config = ConfigDict(extra="forbid")

    limit: str = Field(description="`wf:<name>`, `step:<name>` or `rate:<name>`.")
    key: str = Field(default="", description="The key's value ('' without a key).")
    namespace: str = DEFAULT_NAMESPACE
    kind: Literal["concurrency", "rate"]
    max: int = Field(description="The limit: permits, or begins per window.")
    in_use: int = Field(default=0, description="Permits held now.")
    waiting: int = Field(default=0, description="Runs or attempts waiting for one.")
    holders: list[str] = Field(default_factory=list,
                               description="Who holds them (`<workflow>#<run>`, "
                               "`<workflow>/<step>#<attempt>`), oldest first.")
    queue: list[str] = Field(default_factory=list, description="Who waits, next first.")
    per: float | None = Field(default=None, description="A rate limit's window, seconds.")
    next_free: datetime | None = Field(default=None,
                                       description="A rate limit's next free begin time.")


class LimitList(BaseModel):
    """``limit.list``'s reply."""

    model_config = ConfigDict(extra="forbid")

    limits: list[LimitState]
