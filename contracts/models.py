"""Workflow definitions, statuses and status events."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from .checks import check_values, refuse_expression
from .errors import STEP_TAGS, ErrorInfo, ExpressionError, InvalidGraph
from .expr import check_expression, check_template
from .flow import Concurrencies, ConcurrencySpec, RateLimitSpec, Throttle, check_flow
from .namespaces import DEFAULT_NAMESPACE, Namespace, is_default
from .schema import check_schema, validate_instance
from .subjects import TASK_TYPE_RE, TOKEN_RE
from .untrusted import check_json_value

__all__ = [
    "EVENT_TERMINAL",
    "MAX_CONFIG_BYTES",
    "MAX_OUTPUTS_BYTES",
    "MAX_STEPS",
    "MAX_STEP_OUTPUT_BYTES",
    "MAX_WEBHOOKS",
    "Event",
    "EventType",
    "RetryPolicy",
    "StepConfig",
    "TRUSTED",
    "TEMPLATE",
    "SHOWN",
    "StepState",
    "STEP_IN_FLIGHT",
    "STEP_ACTIVE",
    "ITEM_VARIABLES",
    "MAX_MAP_ITEMS",
    "MapStep",
    "MapProgress",
    "BUILTIN_TASK",
    "WORKER_KINDS",
    "StepKind",
    "TaskStep",
    "RequestStep",
    "HttpStep",
    "PublishStep",
    "SleepStep",
    "WaitStep",
    "TransformStep",
    "SwitchStep",
    "WorkflowStep",
    "ParentRef",
    "PendingSignal",
    "EXPRESSION_VARIABLES",
    "STEP_TERMINAL",
    "StepStatus",
    "Webhook",
    "WorkflowConfig",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowSummary",
    "WORKFLOW_ACTIVE",
    "WORKFLOW_TERMINAL",
    "WorkerWaitReason",
    "ancestors_of",
    "check_graph",
    "without_secrets",
]

#: Validation-context key: set (to True) only when reading data natsflow stored itself.
TRUSTED: Final = "natsflow-trusted"
#: Validation-context key: the config is a definition or template, its input comes later.
TEMPLATE: Final = "natsflow-template"
#: Serialization-context key: the JSON goes to a client; secrets are left out of it.
SHOWN: Final = "natsflow-shown"

#: Largest accepted WorkflowConfig, as JSON.
MAX_CONFIG_BYTES: Final = 256 * 1024
#: Most steps in one workflow.
MAX_STEPS: Final = 200
#: Largest output one step may return, as JSON; larger fails the step (output-too-large).
MAX_STEP_OUTPUT_BYTES: Final = 128 * 1024
#: Budget for all step outputs of one workflow together (its state lives in one KV value).
MAX_OUTPUTS_BYTES: Final = 512 * 1024
#: Most webhooks one workflow may name.
MAX_WEBHOOKS: Final = 5
#: Longest webhook URL.
MAX_WEBHOOK_URL: Final = 2048


def without_secrets(data: Any, info: SerializationInfo) -> Any:
    """``data`` (a model's serialized dict) without its ``secret`` when it is shown."""
    if isinstance(data, dict) and isinstance(info.context, dict) and info.context.get(SHOWN):
        data.pop("secret", None)
    return data

_Id = Annotated[str, Field(min_length=1, max_length=128, pattern=TOKEN_RE.pattern)]
_TaskType = Annotated[str, Field(min_length=1, max_length=128, pattern=TASK_TYPE_RE.pattern)]
_Seconds = Annotated[float, Field(gt=0, le=366 * 24 * 3600)]
#: A worker kind's ``schedule_to_start`` (Temporal's name).
_ScheduleToStart = Annotated[_Seconds | None, Field(
    description="Seconds an attempt may wait for a worker to start it; then it fails "
    "with `schedule-to-start-timeout` (retryable, per `retry`).")]


class WorkflowState(StrEnum):
    """Lifecycle of a workflow."""

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPENSATING = "compensating"
    PAUSED = "paused"
    #: Waiting for a permit of its `concurrency` limits (docs/flow-control.md).
    QUEUED = "queued"


WORKFLOW_TERMINAL: Final[frozenset[WorkflowState]] = frozenset(
    {WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.STOPPED}
)
WORKFLOW_ACTIVE: Final[frozenset[WorkflowState]] = frozenset(
    {WorkflowState.RUNNING, WorkflowState.STOPPING, WorkflowState.COMPENSATING,
     WorkflowState.PAUSED}
)


class StepState(StrEnum):
    """Lifecycle of a step."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    WAITING = "waiting"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    #: Waiting for a permit of its `concurrency` or `rate_limit` (docs/flow-control.md).
    THROTTLED = "throttled"


STEP_TERMINAL: Final[frozenset[StepState]] = frozenset(
    {StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED, StepState.SKIPPED}
)
#: Attempts that a worker holds (a cancel notice reaches them).
STEP_IN_FLIGHT: Final[frozenset[StepState]] = frozenset(
    {StepState.DISPATCHED, StepState.RUNNING}
)
#: Started and not finished: at a worker, or waiting on a timer, signal or child.
STEP_ACTIVE: Final[frozenset[StepState]] = STEP_IN_FLIGHT | {StepState.WAITING}



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

    id: _Id
    depends_on: list[_Id] = Field(default_factory=list)
    when: _Expr | None = Field(
        default=None, description="CEL condition; false skips the step (see `join`).")
    join: Literal["all", "any"] = Field(
        default="all", description="`all`: runs when every dependency succeeded, skipped if "
        "one was skipped. `any`: runs when all dependencies are done and one succeeded.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: _Seconds | None = Field(default=None, description="Seconds per attempt.")
    total_timeout: _Seconds | None = Field(
        default=None, description="Seconds for the whole step, across retries.")
    compensate: _Id | None = Field(
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
    schedule_to_start: _ScheduleToStart = None
    task: _TaskType = Field(description="The task type a worker serves, e.g. `email.send`.")
    input: dict[str, Any] = Field(
        default_factory=dict, description="The task's input; `${expr}` templates allowed.")
    heartbeat_timeout: _Seconds | None = Field(
        default=None, description="A worker silent for this long is presumed dead.")

    @property
    def task_type(self) -> str:
        return self.task

    def templates(self) -> dict[str, Any]:
        return {"input": self.input}


class RequestStep(_StepBase):
    """A NATS request/reply to any subject: an existing service becomes a step."""

    kind: Literal["request"] = "request"
    schedule_to_start: _ScheduleToStart = None
    subject: str = Field(min_length=1, max_length=512)
    payload: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    request_timeout: _Seconds = Field(default=5.0, description="Seconds to wait for the reply.")

    @property
    def task_type(self) -> str:
        return BUILTIN_TASK[StepKind.REQUEST]

    def templates(self) -> dict[str, Any]:
        return {"subject": self.subject, "payload": self.payload, "headers": self.headers}


class HttpStep(_StepBase):
    """An HTTP call; the response body becomes the output."""

    kind: Literal["http"] = "http"
    schedule_to_start: _ScheduleToStart = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str = Field(min_length=1, max_length=4096)
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    expect: list[int] = Field(default_factory=list,
                              description="Accepted statuses; empty = any 2xx.")
    request_timeout: _Seconds = Field(default=30.0)

    @property
    def task_type(self) -> str:
        return BUILTIN_TASK[StepKind.HTTP]

    def templates(self) -> dict[str, Any]:
        return {"url": self.url, "headers": self.headers, "query": self.query,
                "body": self.body}


class PublishStep(_StepBase):
    """Emit a message on a NATS subject (JetStream when ``stream`` is true)."""

    kind: Literal["publish"] = "publish"
    schedule_to_start: _ScheduleToStart = None
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
    signal: _Id


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
    cases: dict[str, list[_Id]] = Field(description="Case value -> the steps of that branch.")
    default: list[_Id] = Field(default_factory=list,
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


class ParentRef(BaseModel):
    """The step of a parent workflow that runs this one as its child."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: _Id
    step_id: str = Field(min_length=1, max_length=200,
                         description="The step, or `<map>[<index>]` for a map item.")
    attempt: int = Field(ge=1)


class Webhook(BaseModel):
    """Where to POST a workflow's status events (see docs/webhooks.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: AnyHttpUrl = Field(description="An http or https URL; each event is POSTed to it.")
    events: Literal["terminal", "all"] = Field(
        default="terminal", description="`terminal`: only the event that ends the workflow "
        "(`workflow.completed`, `workflow.failed`, `workflow.stopped`). `all`: every event.")
    # Left out of the JSON when unset, so configs without them keep their fingerprints.
    secret: str | None = Field(
        default=None, min_length=16, max_length=256, repr=False,
        exclude_if=lambda v: v is None,
        description="This webhook's signing key (never shown back). Default: derived from "
        "the orchestrator's webhook secret and the URL (`natsflow webhook-secret URL`).")
    unsigned: bool = Field(
        default=False, exclude_if=lambda v: not v,
        description="Send without a `Natsflow-Signature` (only when asked for).")

    @field_validator("url")
    @classmethod
    def _bounded(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if len(str(url)) > MAX_WEBHOOK_URL:
            raise ValueError(f"a webhook URL has at most {MAX_WEBHOOK_URL} characters")
        return url

    @model_validator(mode="after")
    def _signed_one_way(self) -> Webhook:
        if self.unsigned and self.secret is not None:
            raise ValueError("a webhook has a `secret` or is `unsigned`, not both")
        return self

    @model_serializer(mode="wrap")
    def _shown(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return without_secrets(handler(self), info)


class WorkflowConfig(BaseModel):
    """What a client submits: a named DAG of steps and its input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    id: _Id | None = Field(default=None, description="Client-chosen id; makes submits idempotent.")
    # Left out of the JSON when default: configs from before namespaces keep their
    # fingerprints (an identical resubmit is still recognised).
    namespace: Namespace = Field(
        default=DEFAULT_NAMESPACE, exclude_if=is_default,
        description="The namespace the workflow belongs to (tenancy); a child workflow "
        "and a batch's members are in their parent's.")
    input: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepConfig] = Field(max_length=MAX_STEPS)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    output: Any = Field(
        default=None,
        description="The workflow's output, a `${expr}` template; default: the outputs of "
        "the steps nothing depends on, by step id.",
    )
    start: bool = Field(default=True, description="Start at once; false leaves it `created`.")
    on_failure: Literal["fail-fast", "continue"] = Field(
        default="fail-fast", description="`fail-fast`: a failed step cancels the rest. "
        "`continue`: independent branches finish; the workflow fails at the end.")
    timeout: _Seconds | None = Field(default=None,
                                     description="Seconds for the whole workflow once started.")
    parent: ParentRef | None = Field(default=None,
                                     description="Set by natsflow on a child workflow.")
    input_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema (2020-12) the input must match; a create "
        "whose input does not is refused with `schema-mismatch`.")
    definition: str | None = Field(default=None,
                                   description="Set by natsflow: the stored definition run.")
    definition_version: int | None = Field(default=None,
                                           description="Set by natsflow: its version.")
    # Left out of the JSON when empty: the fingerprints of configs without webhooks (and
    # so identical resubmits of workflows stored before webhooks existed) stay the same.
    webhooks: list[Webhook] = Field(
        default_factory=list, max_length=MAX_WEBHOOKS, exclude_if=lambda hooks: not hooks,
        description="URLs to POST the workflow's status events to (docs/webhooks.md).")
    concurrency: Concurrencies = Field(
        default_factory=list, max_length=8, exclude_if=lambda v: not v,
        description="Limits on runs at once (docs/flow-control.md); one object or a list.")

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any, info: ValidationInfo) -> Any:
        # Before the fields are read: a NaN would become null and a deep value would
        # fail where it is serialized. Whatever the entry point (a submit too).
        ctx = info.context if isinstance(info.context, dict) else {}
        if isinstance(data, dict) and not ctx.get(TRUSTED):
            check_json_value(data)
        return data

    @field_validator("steps")
    @classmethod
    def _not_empty(cls, steps: list[StepConfig]) -> list[StepConfig]:
        if not steps:
            raise InvalidGraph("a workflow needs at least one step", field="steps")
        return steps

    @model_validator(mode="after")
    def _check_graph(self, info: ValidationInfo) -> WorkflowConfig:
        # Records read back from natsflow's own store were checked on arrival.
        ctx = info.context if isinstance(info.context, dict) else {}
        if not ctx.get(TRUSTED):
            try:
                check_graph(self)
            except ExpressionError as exc:  # found on arrival: the client's field is wrong
                refuse_expression(exc, steps=[s.id for s in self.steps])
            check_values(self)
            check_flow(self)
            if self.input_schema is not None and not ctx.get(TEMPLATE):
                validate_instance(self.input, self.input_schema, field="input")
        return self

    def step(self, step_id: str) -> StepConfig:
        """The step with this id (KeyError if none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def check_graph(config: WorkflowConfig) -> None:
    """Validate the step graph: ids, dependencies, cycles, branches and expressions.

    Raises:
        InvalidGraph: naming the offending step and field.
        ExpressionError: an expression does not parse (naming the field).
    """
    ids: dict[str, int] = {}
    for i, s in enumerate(config.steps):
        if s.id in ids:
            raise InvalidGraph(f"duplicate step id {s.id!r}", step=s.id, field=f"steps.{i}.id")
        ids[s.id] = i
    for i, s in enumerate(config.steps):
        for dep in s.depends_on:
            if dep not in ids:
                raise InvalidGraph(f"step {s.id!r} depends on unknown step {dep!r}",
                                   step=s.id, field=f"steps.{i}.depends_on")
            if dep == s.id:
                raise InvalidGraph(f"step {s.id!r} depends on itself",
                                   step=s.id, field=f"steps.{i}.depends_on")
    # Kahn's algorithm; whatever is left over sits on a cycle.
    indegree = {s.id: len(set(s.depends_on)) for s in config.steps}
    children: dict[str, list[str]] = {s.id: [] for s in config.steps}
    for s in config.steps:
        for dep in set(s.depends_on):
            children[dep].append(s.id)
    ready = [sid for sid, n in indegree.items() if n == 0]
    seen = 0
    while ready:
        sid = ready.pop()
        seen += 1
        for child in children[sid]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if seen != len(config.steps):
        cyclic = sorted(sid for sid, n in indegree.items() if n > 0)
        raise InvalidGraph(f"steps {', '.join(cyclic)} form a cycle", step=cyclic[0],
                           field=f"steps.{ids[cyclic[0]]}.depends_on")
    compensated_by = _check_compensations(config, ids, children)
    _check_switches(config, ids)
    ancestors = ancestors_of(config)
    for i, s in enumerate(config.steps):
        # A compensation may read what the step it undoes could read, and that step.
        target = compensated_by.get(s.id)
        visible = (ancestors[target] | {target}) if target else ancestors[s.id]
        exprs: list[tuple[str, frozenset[str]]] = []
        if s.when is not None:
            exprs.append(("when", check_expression(
                s.when, variables=EXPRESSION_VARIABLES, field=f"steps.{i}.when")))
        if isinstance(s, SwitchStep):
            exprs.append(("value", check_expression(
                s.value, variables=EXPRESSION_VARIABLES, field=f"steps.{i}.value")))
        if isinstance(s, MapStep):
            exprs.append(("items", check_expression(
                s.items, variables=EXPRESSION_VARIABLES, field=f"steps.{i}.items")))
            for name, template in s.step.templates().items():
                exprs.append((f"step.{name}", check_template(
                    template, variables=ITEM_VARIABLES, field=f"steps.{i}.step.{name}")))
        for name, template in s.templates().items():
            exprs.append((name, check_template(template, variables=EXPRESSION_VARIABLES,
                                               field=f"steps.{i}.{name}")))
        for name, refs in exprs:
            for ref in sorted(refs):
                if ref not in ids:
                    raise InvalidGraph(f"step {s.id!r} reads steps.{ref} in `{name}`, but "
                                       f"there is no step {ref!r}", step=s.id,
                                       field=f"steps.{i}.{name}")
                if ref not in visible:
                    raise InvalidGraph(
                        f"step {s.id!r} reads steps.{ref} in `{name}`, but {ref!r} is not "
                        "one of its dependencies", step=s.id, field=f"steps.{i}.{name}")
    if config.input_schema is not None:
        check_schema(config.input_schema, field="input_schema")
    for i, s in enumerate(config.steps):
        if s.output_schema is not None:
            check_schema(s.output_schema, field=f"steps.{i}.output_schema")
    for ref in sorted(check_template(config.output, variables=EXPRESSION_VARIABLES,
                                     field="output")):
        if ref not in ids:
            raise InvalidGraph(f"output refers to unknown step {ref!r}", field="output")


def _check_compensations(config: WorkflowConfig, ids: dict[str, int],
                         children: dict[str, list[str]]) -> dict[str, str]:
    """Compensation steps: known, named once, outside the normal flow. Returns comp -> step."""
    by: dict[str, str] = {}
    for i, s in enumerate(config.steps):
        comp = s.compensate
        if comp is None:
            continue
        where = f"steps.{i}.compensate"
        if comp not in ids:
            raise InvalidGraph(f"step {s.id!r} is compensated by unknown step {comp!r}",
                               step=s.id, field=where)
        if comp == s.id:
            raise InvalidGraph(f"step {s.id!r} cannot compensate itself", step=s.id, field=where)
        if comp in by:
            raise InvalidGraph(f"step {comp!r} already compensates {by[comp]!r}",
                               step=s.id, field=where)
        c = config.steps[ids[comp]]
        if c.depends_on or children[comp] or c.compensate:
            raise InvalidGraph(
                f"compensation step {comp!r} must stand outside the flow: no depends_on, "
                "no dependants, no compensation of its own", step=comp,
                field=f"steps.{ids[comp]}.depends_on")
        by[comp] = s.id
    return by


def _check_switches(config: WorkflowConfig, ids: dict[str, int]) -> None:
    for i, s in enumerate(config.steps):
        if not isinstance(s, SwitchStep):
            continue
        branches = [*s.cases.values(), s.default]
        for branch in branches:
            for target in branch:
                if target not in ids:
                    raise InvalidGraph(f"switch {s.id!r} names unknown step {target!r}",
                                       step=s.id, field=f"steps.{i}.cases")
                if s.id not in config.steps[ids[target]].depends_on:
                    raise InvalidGraph(
                        f"step {target!r} is a branch of switch {s.id!r} and must depend "
                        "on it", step=target, field=f"steps.{ids[target]}.depends_on")


def ancestors_of(config: WorkflowConfig) -> dict[str, frozenset[str]]:
    """Every step's transitive dependencies (the graph must be acyclic)."""
    deps = {s.id: s.depends_on for s in config.steps}
    memo: dict[str, frozenset[str]] = {}

    def visit(sid: str) -> frozenset[str]:
        if sid not in memo:
            acc: set[str] = set()
            for d in deps[sid]:
                acc.add(d)
                acc |= visit(d)
            memo[sid] = frozenset(acc)
        return memo[sid]

    for sid in deps:
        visit(sid)
    return memo


class WorkerWaitReason(StrEnum):
    """Why a dispatched attempt is still waiting for a worker (what the orchestrator saw
    of the task type's consumers on the tasks stream when the grace period ended)."""

    NO_CONSUMER = "no-consumer"  # no consumer takes this task type: no worker ever served it
    NO_WORKER = "no-worker"  # a consumer exists, but no worker is pulling from it
    BUSY = "busy"  # workers are pulling or working: the task is queued behind others
    UNKNOWN = "unknown"  # the consumers could not be looked at


class StepStatus(BaseModel):
    """Where one step stands."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: StepKind = StepKind.TASK
    task: str | None = Field(default=None, description="The task type, for worker steps.")
    depends_on: list[str] = Field(default_factory=list,
                                  description="The steps it runs after (from the config).")
    state: StepState = StepState.PENDING
    attempts: int = Field(default=0, description="Attempts dispatched so far (all runs).")
    attempt_base: int = Field(default=0, description="Attempts of earlier runs (a retried "
                              "workflow numbers its attempts on, so each stays unique).")
    output: Any = None
    error: ErrorInfo | None = None
    progress: Any = Field(default=None, description="The last progress a worker reported.")
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = Field(default=None,
                                             description="When a retrying step goes again.")
    heartbeat_at: datetime | None = Field(default=None,
                                          description="Last sign of life from its worker.")
    wake_at: datetime | None = Field(default=None, description="When a sleep step ends.")
    child_id: str | None = Field(default=None, description="A workflow step's child.")
    compensates: str | None = Field(default=None,
                                    description="The step this compensation undoes.")
    input_override: dict[str, Any] | None = Field(
        default=None, description="Input given by a retry, used instead of the config's.")
    reused_from: str | None = Field(default=None, description="A rerun took this step's "
                                    "output from that workflow instead of running it.")
    map: MapProgress | None = Field(default=None, description="A map step's items.")
    waiting_for_worker: WorkerWaitReason | None = Field(
        default=None, description="Set when no worker started the dispatched attempt "
        "within the orchestrator's grace period, saying what it saw; cleared when one does.")
    # The result token of the current attempt (orchestrator.tokens): stored, never shown
    # (nor in the schema of what is shown).
    # (WorkflowStatus leaves it out of what is shown: one hook per status, not per step.)
    token: SkipJsonSchema[str | None] = Field(default=None, repr=False,
                                              exclude_if=lambda v: v is None)
    throttle: Throttle | None = Field(
        default=None, exclude_if=lambda v: v is None, description="Its attempt's permits "
        "(docs/flow-control.md): asked for while `throttled`, held while it runs.")


class MapProgress(BaseModel):
    """Where a map step's items stand (their outputs are stored apart, by index)."""

    model_config = ConfigDict(extra="forbid")

    total: int
    next: int = Field(default=0, description="Items below this index were dispatched.")
    running: dict[str, int] = Field(default_factory=dict,
                                    description="Item index -> attempt, at a worker.")
    retrying: dict[str, int] = Field(default_factory=dict,
                                     description="Item index -> next attempt, on a timer.")
    succeeded: int = 0
    failed: list[int] = Field(default_factory=list, description="Indexes of failed items.")
    errors: list[ErrorInfo] = Field(default_factory=list,
                                    description="The first errors of failed items.")
    joining: bool = Field(default=False, description="All done; outputs being collected.")


class PendingSignal(BaseModel):
    """A signal received before a wait step took it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    payload: Any = None
    received_at: datetime


class WorkflowStatus(BaseModel):
    """Where one workflow stands: what GET /workflows/{id} returns."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="Its namespace.")
    state: WorkflowState
    input: dict[str, Any]
    output: Any = None
    error: ErrorInfo | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    batch_id: str | None = None
    parent: ParentRef | None = None
    definition: str | None = Field(default=None, description="The stored definition run.")
    definition_version: int | None = Field(default=None, description="Its version, kept "
                                           "for the whole run.")
    steps: list[StepStatus]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_seq: int = Field(default=0, description="`seq` of the last event published.")
    signals: list[PendingSignal] = Field(
        default_factory=list, description="Signals received that no wait step took yet.")
    compensation: list[str] = Field(
        default_factory=list, description="Compensation steps still to run, in order.")
    outcome: WorkflowState | None = Field(
        default=None, description="While compensating: the state it will end in.")
    deferred_timers: list[dict[str, Any]] = Field(
        default_factory=list, description="Timers that came due while paused.")
    runs: int = Field(default=1, description="1, plus one per retry.")
    rerun_of: str | None = Field(default=None, description="The workflow this one reruns.")
    worker_check_at: datetime | None = Field(
        default=None, description="When the armed look at queued attempts fires (at most "
        "one per workflow; see the orchestrator's worker grace).")
    queue: Throttle | None = Field(
        default=None, exclude_if=lambda v: v is None, description="Its permits "
        "(docs/flow-control.md): asked for while `queued`, held while it runs.")

    @model_serializer(mode="wrap")
    def _shown(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        # Shown to a client: the steps' result tokens stay in the store.
        if isinstance(data, dict) and isinstance(info.context, dict) and info.context.get(SHOWN):
            for step in data.get("steps") or ():
                if isinstance(step, dict):
                    step.pop("token", None)
        return data

    def step(self, step_id: str) -> StepStatus:
        """The status of the step with this id (KeyError if none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


class WorkflowSummary(BaseModel):
    """One line of the workflow list (kept apart from the record, for the index)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    state: WorkflowState
    labels: dict[str, str] = Field(default_factory=dict)
    batch_id: str | None = None
    parent_id: str | None = None
    definition: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error_code: str | None = None

    @classmethod
    def of(cls, status: WorkflowStatus) -> WorkflowSummary:
        """The summary of a status."""
        return cls(id=status.id, name=status.name, namespace=status.namespace,
                   state=status.state, labels=status.labels,
                   batch_id=status.batch_id,
                   parent_id=status.parent.workflow_id if status.parent else None,
                   definition=status.definition, created_at=status.created_at,
                   started_at=status.started_at, finished_at=status.finished_at,
                   error_code=status.error.code if status.error else None)


class EventType(StrEnum):
    """What happened. The value is also the tail of the event's subject."""

    WORKFLOW_CREATED = "workflow.created"
    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_FAILED = "workflow.failed"
    WORKFLOW_STOPPING = "workflow.stopping"
    WORKFLOW_STOPPED = "workflow.stopped"
    STEP_DISPATCHED = "step.dispatched"
    STEP_STARTED = "step.started"
    STEP_PROGRESS = "step.progress"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_RETRYING = "step.retrying"
    STEP_CANCELLED = "step.cancelled"
    STEP_SKIPPED = "step.skipped"
    STEP_WAITING = "step.waiting"
    SIGNAL_RECEIVED = "signal.received"
    WORKFLOW_COMPENSATING = "workflow.compensating"
    WORKFLOW_PAUSED = "workflow.paused"
    WORKFLOW_RESUMED = "workflow.resumed"
    WORKFLOW_RETRIED = "workflow.retried"
    #: A dispatched attempt was not started by any worker within the orchestrator's grace
    #: period; ``data`` names the ``task`` type and the ``reason`` (no-consumer, no-worker,
    #: busy, unknown). The step's ``waiting_for_worker`` says so until a worker starts it.
    STEP_WAITING_FOR_WORKER = "step.waiting_for_worker"
    #: A run waits for a permit of a concurrency limit; ``data``: ``limit``, ``key``,
    #: ``position`` (1 = next).
    WORKFLOW_QUEUED = "workflow.queued"
    #: A queued run got its permits (``data.waited``: seconds); it starts now.
    WORKFLOW_DEQUEUED = "workflow.dequeued"
    #: An attempt waits for a permit (``data``: ``limit``, ``key``, ``position``) or for
    #: its rate limit (``data.run_at``: when it may begin).
    STEP_THROTTLED = "step.throttled"
    #: A throttled attempt got its permits (``data.waited``: seconds); it begins now.
    STEP_UNTHROTTLED = "step.unthrottled"


EVENT_TERMINAL: Final[frozenset[EventType]] = frozenset(
    {EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED, EventType.WORKFLOW_STOPPED}
)


class Event(BaseModel):
    """A status event. ``seq`` is per workflow, starts at 1 and has no gaps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    seq: int = Field(ge=1)
    type: EventType
    time: datetime
    step_id: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)
