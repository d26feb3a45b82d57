"""Step configs: one model per step kind, their retry policy, and the discriminated
``StepConfig`` union a workflow's ``steps`` are read as."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from contracts.errors import STEP_TAGS, InvalidGraph
from contracts.flow import ConcurrencySpec, RateLimitSpec
from contracts.models._common import Id, ScheduleToStart, Seconds, TaskType


class RetryPolicy(BaseModel):
    """How often and how patiently a step is retried (Temporal's names).

    Fixed backoff is ``backoff_coefficient: 1``; exponential is any coefficient above 1.
    ``jitter`` takes up to that share off each wait (0.2 = waits of 80-100%),
    deterministically per workflow, step and attempt so that a replay agrees.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=1, ge=1, le=100, description="Attempts in all, 1 = no retry.")
    initial_interval: float = Field(default=1.0, ge=0, le=86400,
                                    description="Seconds before the first retry.")
    backoff_coefficient: float = Field(default=2.0, ge=1, le=100)
    max_interval: float = Field(default=300.0, ge=0, le=86400,
                                description="Longest wait between attempts, seconds.")
    jitter: float = Field(default=0.0, ge=0, le=1,
                          description="Share of each wait that is randomised away (0-1).")
    non_retryable_codes: list[str] = Field(
        default_factory=list, description="Error codes that end the step at once."
    )

    def delay_before(self, attempt: int, *, seed: str = "") -> float:
        """Seconds to wait before ``attempt`` (2 = the first retry)."""
        raw = self.initial_interval * self.backoff_coefficient ** max(0, attempt - 2)
        delay = float(min(raw, self.max_interval))
        if self.jitter and delay:
            digest = hashlib.sha256(f"{seed}:{attempt}".encode()).digest()
            share = int.from_bytes(digest[:4], "big") / 2**32
            delay *= 1 - self.jitter * share
        return delay


class StepKind(StrEnum):
    """What a step does."""

    TASK = "task"
    REQUEST = "request"
    HTTP = "http"
    PUBLISH = "publish"
    SLEEP = "sleep"
    WAIT = "wait"
    TRANSFORM = "transform"
    SWITCH = "switch"
    WORKFLOW = "workflow"
    MAP = "map"


#: Kinds whose attempts run on a worker (built-in ones for request/http/publish).
WORKER_KINDS: Final[frozenset[StepKind]] = frozenset(
    {StepKind.TASK, StepKind.REQUEST, StepKind.HTTP, StepKind.PUBLISH}
)
#: Reserved task types of the built-in executors that the orchestrator runs.
BUILTIN_TASK: Final[dict[StepKind, str]] = {
    StepKind.REQUEST: "natsflow.request",
    StepKind.HTTP: "natsflow.http",
    StepKind.PUBLISH: "natsflow.publish",
}

_Expr = Annotated[str, Field(min_length=1, max_length=4096)]


class _StepBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    depends_on: list[Id] = Field(default_factory=list)
    when: _Expr | None = Field(
        default=None, description="CEL condition; false skips the step (see `join`).")
    join: Literal["all", "any"] = Field(
        default="all", description="`all`: runs when every dependency succeeded, skipped if "
        "one was skipped. `any`: runs when all dependencies are done and one succeeded.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: Seconds | None = Field(default=None, description="Seconds per attempt.")
    total_timeout: Seconds | None = Field(
        default=None, description="Seconds for the whole step, across retries.")
    compensate: Id | None = Field(
        default=None, description="A step that undoes this one if the workflow fails or "
        "is stopped after this step succeeded.")
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the step's output must match.")
    # Left out of the JSON when unset: configs without them keep their fingerprints.
    concurrency: ConcurrencySpec | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="At most `limit` attempts at once (docs/flow-control.md).")
    rate_limit: RateLimitSpec | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="At most `limit` attempts begin per `per` (docs/flow-control.md).")

    @property
    def task_type(self) -> str | None:
        """The task type a worker serves for this step (None: the engine runs it)."""
        return None

    def templates(self) -> dict[str, Any]:
        """The fields that hold ``${...}`` templates, by name."""
        return {}


class TaskStep(_StepBase):
    """Run a task on a worker serving ``task``."""

    kind: Literal["task"] = "task"
    schedule_to_start: ScheduleToStart = None
    task: TaskType = Field(description="The task type a worker serves, e.g. `email.send`.")
    input: dict[str, Any] = Field(
        default_factory=dict, description="The task's input; `${expr}` templates allowed.")
    heartbeat_timeout: Seconds | None = Field(
        default=None, description="A worker silent for this long is presumed dead.")

    @property
    def task_type(self) -> str:
        return self.task

    def templates(self) -> dict[str, Any]:
        return {"input": self.input}


class RequestStep(_StepBase):
    """A NATS request/reply to any subject: an existing service becomes a step."""

    kind: Literal["request"] = "request"
    schedule_to_start: ScheduleToStart = None
    subject: str = Field(min_length=1, max_length=512)
    payload: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    request_timeout: Seconds = Field(default=5.0, description="Seconds to wait for the reply.")

    @property
    def task_type(self) -> str:
        return BUILTIN_TASK[StepKind.REQUEST]

    def templates(self) -> dict[str, Any]:
        return {"subject": self.subject, "payload": self.payload, "headers": self.headers}


class HttpStep(_StepBase):
    """An HTTP call; the response body becomes the output."""

    kind: Literal["http"] = "http"
    schedule_to_start: ScheduleToStart = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str = Field(min_length=1, max_length=4096)
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    expect: list[int] = Field(default_factory=list,
                              description="Accepted statuses; empty = any 2xx.")
    request_timeout: Seconds = Field(default=30.0)

    @property
    def task_type(self) -> str:
        return BUILTIN_TASK[StepKind.HTTP]

    def templates(self) -> dict[str, Any]:
        return {"url": self.url, "headers": self.headers, "query": self.query,
                "body": self.body}


class PublishStep(_StepBase):
    """Emit a message on a NATS subject (JetStream when ``stream`` is true)."""

    kind: Literal["publish"] = "publish"
    schedule_to_start: ScheduleToStart = None
    subject: str = Field(min_length=1, max_length=512)
    payload: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    stream: bool = False

    @property
    def task_type(self) -> str:
        return BUILTIN_TASK[StepKind.PUBLISH]

    def templates(self) -> dict[str, Any]:
        return {"subject": self.subject, "payload": self.payload, "headers": self.headers}


class SleepStep(_StepBase):
    """A durable timer: ``duration`` seconds (or "1h30m"), or ``until`` a time."""

    kind: Literal["sleep"] = "sleep"
    duration: float | str | None = Field(
        default=None, description="Seconds, a duration like `90s`/`1h30m`, or a template.")
    until: str | None = Field(default=None, description="RFC 3339 time, or a template.")

    @field_validator("duration", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # pydantic would read `true` as 1 second.
        if isinstance(value, bool):
            raise ValueError("a duration is a number of seconds or a text like 90s, "
                             "not a boolean")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> SleepStep:
        if (self.duration is None) == (self.until is None):
            raise InvalidGraph("a sleep step needs exactly one of `duration` and `until`",
                               step=self.id, field="duration")
        return self

    def templates(self) -> dict[str, Any]:
        return {"duration": self.duration, "until": self.until}


class WaitStep(_StepBase):
    """Wait for the signal ``signal``; its payload becomes the output."""

    kind: Literal["wait"] = "wait"
    signal: Id


class TransformStep(_StepBase):
    """Compute an output from a template, with no worker."""

    kind: Literal["transform"] = "transform"
    output: Any = None

    def templates(self) -> dict[str, Any]:
        return {"output": self.output}


class SwitchStep(_StepBase):
    """Choose one branch: the steps of the other cases are skipped."""

    kind: Literal["switch"] = "switch"
    value: _Expr = Field(description="CEL expression; its value (as text) picks the case.")
    cases: dict[str, list[Id]] = Field(description="Case value -> the steps of that branch.")
    default: list[Id] = Field(default_factory=list,
                               description="Steps run when no case matches.")


class WorkflowStep(_StepBase):
    """Run a child workflow from a stored definition and wait for it."""

    kind: Literal["workflow"] = "workflow"
    definition: str = Field(min_length=1, max_length=200)
    version: int | None = Field(default=None, ge=1, description="Default: the latest.")
    input: dict[str, Any] = Field(default_factory=dict)

    def templates(self) -> dict[str, Any]:
        return {"input": self.input}


STEP_TAGS.update(k.value for k in StepKind)


def _step_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "task"))
    return str(getattr(value, "kind", "task"))


#: What a map runs per item: a worker kind, a transform, or a child workflow (a sub-graph),
#: without id or dependencies.
MapBody = Annotated[
    Annotated[TaskStep, Tag("task")] | Annotated[RequestStep, Tag("request")]
    | Annotated[HttpStep, Tag("http")] | Annotated[PublishStep, Tag("publish")]
    | Annotated[TransformStep, Tag("transform")] | Annotated[WorkflowStep, Tag("workflow")],
    Discriminator(_step_kind),
]
#: Largest number of items one map step fans out to.
MAX_MAP_ITEMS: Final = 100_000
#: Variables an expression may use inside a map's item step.
ITEM_VARIABLES: Final = frozenset({"input", "steps", "workflow", "item", "index"})


class MapStep(_StepBase):
    """Fan one step out over a list computed at run time; the output lists the items'
    outputs in input order. Item outputs are stored apart from the workflow's record."""

    kind: Literal["map"] = "map"
    items: _Expr = Field(description="CEL expression giving the list to map over.")
    step: MapBody = Field(description="What runs per item (`item` and `index` in "
                          "its templates); its retry and timeout apply per item.")
    max_concurrency: int = Field(default=100, ge=1, le=1000,
                                 description="Items running at once.")

    @field_validator("step", mode="before")
    @classmethod
    def _item_id(cls, value: Any) -> Any:
        if isinstance(value, dict) and "id" not in value:
            return {"id": "item", **value}
        return value

    @model_validator(mode="after")
    def _plain_body(self) -> MapStep:
        b = self.step
        if b.depends_on or b.when or b.compensate or b.total_timeout:
            raise InvalidGraph("a map's item step takes no depends_on, when, compensate or "
                               "total_timeout", step=self.id, field="step")
        return self

    @model_validator(mode="after")
    def _no_schedule_to_start(self) -> MapStep:
        # Items are not tracked from dispatch to start; a map step's own timeout bounds them.
        if getattr(self.step, "schedule_to_start", None) is not None:
            raise InvalidGraph("a map's item step takes no schedule_to_start",
                               step=self.id, field="step.schedule_to_start")
        return self


StepConfig = Annotated[
    Annotated[TaskStep, Tag("task")] | Annotated[RequestStep, Tag("request")]
    | Annotated[HttpStep, Tag("http")] | Annotated[PublishStep, Tag("publish")]
    | Annotated[SleepStep, Tag("sleep")] | Annotated[WaitStep, Tag("wait")]
    | Annotated[TransformStep, Tag("transform")] | Annotated[SwitchStep, Tag("switch")]
    | Annotated[WorkflowStep, Tag("workflow")] | Annotated[MapStep, Tag("map")],
    Discriminator(_step_kind),
]


#: Variables an expression may use, outside a map.
EXPRESSION_VARIABLES: Final = frozenset({"input", "steps", "workflow"})
