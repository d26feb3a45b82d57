"""Where a workflow and its steps stand: the lifecycle states, ``WorkflowStatus`` (the
record, and what GET /workflows/{id} returns) and ``WorkflowSummary`` (its index line)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic.json_schema import SkipJsonSchema

from contracts.errors import ErrorInfo
from contracts.flow import Throttle
from contracts.models._common import SHOWN
from contracts.models._steps import StepKind
from contracts.models._workflow import ParentRef
from contracts.namespaces import DEFAULT_NAMESPACE


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
    priority: int = Field(default=3, description="The priority its tasks run at, 1 to 5.")
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
