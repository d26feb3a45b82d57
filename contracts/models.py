"""Workflow definitions, statuses and status events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ErrorInfo, InvalidGraph
from .refs import RefError, find_refs
from .subjects import TASK_TYPE_RE, TOKEN_RE

__all__ = [
    "EVENT_TERMINAL",
    "MAX_CONFIG_BYTES",
    "MAX_OUTPUTS_BYTES",
    "MAX_STEPS",
    "MAX_STEP_OUTPUT_BYTES",
    "Event",
    "EventType",
    "RetryPolicy",
    "StepConfig",
    "TRUSTED",
    "StepState",
    "STEP_IN_FLIGHT",
    "STEP_TERMINAL",
    "StepStatus",
    "WorkflowConfig",
    "WorkflowState",
    "WorkflowStatus",
    "WORKFLOW_ACTIVE",
    "WORKFLOW_TERMINAL",
    "ancestors_of",
    "check_graph",
]

#: Validation-context key: set (to True) only when reading data natsflow stored itself.
TRUSTED: Final = "natsflow-trusted"

#: Largest accepted WorkflowConfig, as JSON.
MAX_CONFIG_BYTES: Final = 256 * 1024
#: Most steps in one workflow.
MAX_STEPS: Final = 200
#: Largest output one step may return, as JSON; larger fails the step (output-too-large).
MAX_STEP_OUTPUT_BYTES: Final = 128 * 1024
#: Budget for all step outputs of one workflow together (its state lives in one KV value).
MAX_OUTPUTS_BYTES: Final = 512 * 1024

_Id = Annotated[str, Field(min_length=1, max_length=128, pattern=TOKEN_RE.pattern)]
_TaskType = Annotated[str, Field(min_length=1, max_length=128, pattern=TASK_TYPE_RE.pattern)]
_Seconds = Annotated[float, Field(gt=0, le=366 * 24 * 3600)]


class WorkflowState(StrEnum):
    """Lifecycle of a workflow."""

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


WORKFLOW_TERMINAL: Final[frozenset[WorkflowState]] = frozenset(
    {WorkflowState.COMPLETED, WorkflowState.FAILED, WorkflowState.STOPPED}
)
WORKFLOW_ACTIVE: Final[frozenset[WorkflowState]] = frozenset(
    {WorkflowState.RUNNING, WorkflowState.STOPPING}
)


class StepState(StrEnum):
    """Lifecycle of a step."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


STEP_TERMINAL: Final[frozenset[StepState]] = frozenset(
    {StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED}
)
STEP_IN_FLIGHT: Final[frozenset[StepState]] = frozenset(
    {StepState.DISPATCHED, StepState.RUNNING}
)



class RetryPolicy(BaseModel):
    """How often and how patiently a step is retried (Temporal's names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=1, ge=1, le=100, description="Attempts in all, 1 = no retry.")
    initial_interval: float = Field(default=1.0, ge=0, le=86400,
                                    description="Seconds before the first retry.")
    backoff_coefficient: float = Field(default=2.0, ge=1, le=100)
    max_interval: float = Field(default=300.0, ge=0, le=86400,
                                description="Longest wait between attempts, seconds.")
    non_retryable_codes: list[str] = Field(
        default_factory=list, description="Error codes that end the step at once."
    )

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 = the first retry)."""
        raw = self.initial_interval * self.backoff_coefficient ** max(0, attempt - 2)
        return float(min(raw, self.max_interval))


class StepConfig(BaseModel):
    """One step of a workflow: a task for workers of type ``task``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: _Id
    task: _TaskType = Field(description="The task type a worker serves, e.g. `email.send`.")
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="The task's input; strings may hold `${input.x}` or "
        "`${steps.<id>.output.y}` references.",
    )
    depends_on: list[_Id] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: _Seconds | None = Field(default=None, description="Seconds per attempt.")


class WorkflowConfig(BaseModel):
    """What a client submits: a named DAG of steps and its input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    id: _Id | None = Field(default=None, description="Client-chosen id; makes submits idempotent.")
    input: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepConfig] = Field(max_length=MAX_STEPS)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    output: Any = Field(
        default=None,
        description="The workflow's output, with references; default: the outputs of "
        "the steps nothing depends on, by step id.",
    )
    start: bool = Field(default=True, description="Start at once; false leaves it `created`.")

    @field_validator("steps")
    @classmethod
    def _not_empty(cls, steps: list[StepConfig]) -> list[StepConfig]:
        if not steps:
            raise InvalidGraph("a workflow needs at least one step", field="steps")
        return steps

    @model_validator(mode="after")
    def _check_graph(self, info: ValidationInfo) -> WorkflowConfig:
        # Records read back from natsflow's own store were checked on arrival.
        if not (isinstance(info.context, dict) and info.context.get(TRUSTED)):
            check_graph(self)
        return self

    def step(self, step_id: str) -> StepConfig:
        """The step with this id (KeyError if none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def check_graph(config: WorkflowConfig) -> None:
    """Validate the step graph: ids, dependencies, cycles and references.

    Raises:
        InvalidGraph: naming the offending step and field.
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
    ancestors = ancestors_of(config)
    for i, s in enumerate(config.steps):
        try:
            refs = list(find_refs(s.input))
        except RefError as exc:
            raise InvalidGraph(str(exc), step=s.id, field=f"steps.{i}.input") from None
        for ref in refs:
            if ref.step is not None and ref.step not in ancestors[s.id]:
                raise InvalidGraph(
                    f"step {s.id!r} refers to ${{{ref.text}}}, but {ref.step!r} is not "
                    "one of its dependencies",
                    step=s.id, field=f"steps.{i}.input")
    try:
        out_refs = list(find_refs(config.output))
    except RefError as exc:
        raise InvalidGraph(str(exc), field="output") from None
    for ref in out_refs:
        if ref.step is not None and ref.step not in ids:
            raise InvalidGraph(f"output refers to unknown step {ref.step!r}", field="output")


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


class StepStatus(BaseModel):
    """Where one step stands."""

    model_config = ConfigDict(extra="forbid")

    id: str
    task: str
    state: StepState = StepState.PENDING
    attempts: int = Field(default=0, description="Attempts dispatched so far.")
    output: Any = None
    error: ErrorInfo | None = None
    progress: Any = Field(default=None, description="The last progress a worker reported.")
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = Field(default=None,
                                             description="When a retrying step goes again.")


class WorkflowStatus(BaseModel):
    """Where one workflow stands: what GET /workflows/{id} returns."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    state: WorkflowState
    input: dict[str, Any]
    output: Any = None
    error: ErrorInfo | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    batch_id: str | None = None
    steps: list[StepStatus]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_seq: int = Field(default=0, description="`seq` of the last event published.")

    def step(self, step_id: str) -> StepStatus:
        """The status of the step with this id (KeyError if none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


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
